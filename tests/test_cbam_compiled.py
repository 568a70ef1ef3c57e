"""The compiled "torch" CBAM (model/cbam.py folded_block_tail): the block's last BatchNorm folded into the gates' pools.

One CBAM bottleneck is compiled with inductor in float64: its outputs, every gradient and every running statistic
equal the authors' formulation run eagerly, and the code inductor generates for it stays within the design's
budget of full-size buffers and kernel launches, counted against a plain bottleneck compiled the same way.
Inductor's CPU code stands in for its GPU code here: the fusion decisions (what is materialised, what is saved for
the backward) are made before code generation, for either device.
"""
import copy
import functools
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from model.cbam import CBAM
from model.resnet import BasicBlock, Bottleneck

# Beyond the plain bottleneck (BN3 + add + ReLU, which inductor fuses into one pass): full-size buffers written,
# and kernel launches, per graph. The forward writes nothing of full size beyond the plain block's output and
# ReLU mask (x, x*cs and the gate scales are recomputed from z, never stored); the backward writes one, the
# gradient through the ReLU, which the three reductions of the gates and BN3 then read. Launches: the BN3
# statistics with the channel pools, the MLP's ReLU, the spatial pools, the spatial gate's statistics; backward
# the gates' reductions over C and over H*W, the MLP and the spatial BN.
EXTRA_FULL_SIZE_BUFFERS = {"forward": 0, "backward": 1}
EXTRA_LAUNCHES = {"forward": 4, "backward": 4}


def _randomised(block):
    """BatchNorm weights of both signs (the channel max of bn(z) is then a min of z for some channels) and non-zero
    biases; the spatial gate's BN weight away from 0, so that its branch carries gradient."""
    torch.manual_seed(3)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    return block


def _generated_code_counts(code, full_numel):
    """(full-size buffers allocated, kernel launches) in one inductor-generated CPU module."""
    shapes = re.findall(r"= empty_strided_cpu\(\(([^)]*)\)", code)
    full = [s for s in shapes if _numel(s) >= full_numel]
    launches = re.findall(r"^\s+cpp_fused_\w+\(", code, re.M)
    return len(full), len(launches)


def _numel(shape_text):
    numel = 1
    for dim in filter(None, (d.strip() for d in shape_text.split(","))):
        numel *= int(dim)
    return numel


def _compile_and_step(block, x, grad):
    """Compiles `block`, runs forward + backward once: (output, gradients of x and parameters, generated code of
    the forward and the backward graph)."""
    torch._dynamo.reset()
    compiled = torch.compile(block, dynamic=False)

    def step():
        xi = x.clone().requires_grad_()
        out = compiled(xi)
        return out, torch.autograd.grad(out, [xi, *block.parameters()], grad)
    (out, grads), codes = run_and_get_code(step)
    assert len(codes) == 2, f"expected one forward and one backward graph, got {len(codes)}"
    return out, grads, codes


@pytest.mark.slow
def test_compiled_bottleneck_equals_the_authors_cbam_in_float64_within_the_kernel_budget():
    n, planes, side = 3, 32, 6
    block = functools.partial(Bottleneck, planes * 4, planes)
    reference = _randomised(block(attention=functools.partial(CBAM, impl="reference")))
    reference = reference.double().to(memory_format=torch.channels_last)
    folded = copy.deepcopy(reference)
    for module in folded.modules():
        if isinstance(module, CBAM):
            module.impl = "torch"
    torch.manual_seed(4)
    x = torch.randn(n, planes * 4, side, side, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)

    out, grads, codes = _compile_and_step(folded, x, grad)
    xi = x.clone().requires_grad_()
    expected = reference(xi)
    expected_grads = torch.autograd.grad(expected, [xi, *reference.parameters()], grad)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    names = ["input"] + [name for name, _ in reference.named_parameters()]
    for name, got, want in zip(names, grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    for (name, got), want in zip(folded.named_buffers(), reference.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=lambda m, name=name: f"{name}: {m}")
    assert out.is_contiguous(memory_format=torch.channels_last)

    plain = block().double().to(memory_format=torch.channels_last)
    _, _, plain_codes = _compile_and_step(plain, x, grad)
    for graph, code, plain_code in zip(("forward", "backward"), codes, plain_codes):
        buffers, launches = _generated_code_counts(code, x.numel())
        plain_buffers, plain_launches = _generated_code_counts(plain_code, x.numel())
        assert buffers - plain_buffers <= EXTRA_FULL_SIZE_BUFFERS[graph], (
            f"{graph}: {buffers} full-size buffers, plain bottleneck {plain_buffers}")
        assert launches - plain_launches <= EXTRA_LAUNCHES[graph], (
            f"{graph}: {launches} kernel launches, plain bottleneck {plain_launches}")

    # Evaluation: the running statistics instead of the batch's, no update.
    folded.eval()
    reference.eval()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(folded, dynamic=False)(x), reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_compiled_basic_block_in_bf16_autocast_close_to_eager():
    """ResNet-18/34's block under bf16 autocast: the gate math runs in float32, the output in bf16 like eager's."""
    torch.manual_seed(5)
    block = _randomised(BasicBlock(64, 64, attention=functools.partial(CBAM, impl="torch")))
    block = block.to(memory_format=torch.channels_last)
    eager = copy.deepcopy(block)
    # A block inside the network gets the previous block's bf16 output (its identity too).
    x = torch.randn(2, 64, 8, 8, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(block, dynamic=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = compiled(x), eager(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05 * float(want.float().abs().max()))
