"""The Triton kernels of the fused CBAM op, run by Triton's interpreter on CPU tensors.

Not collected by the main test run: tests/test_cbam_triton.py runs this file in a pytest subprocess with
TRITON_INTERPRET=1, which must be set before Triton and model/triton_cbam/kernels.py are imported. The interpreter is
100-1000x slower than eager PyTorch, so shapes stay small; they still cover channel counts that are not powers of
two and exceed a block (150), H*W that is no multiple of a block and exceeds one (99), batch 1, both layouts.
"""
import os

import pytest
import torch
import triton
import triton.language as tl

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/test_cbam_triton.py with TRITON_INTERPRET=1", allow_module_level=True)

from model import build_model  # noqa: E402
from model.cbam import CBAM, resolve_impl  # noqa: E402
from model.triton_cbam import kernels as cbam_triton  # noqa: E402
from tests import cbam_kernels_torch  # noqa: E402
from tests.cbam_cases import compare_with_reference, fused_tail, tail_and_grads  # noqa: E402

SHAPES = [(2, 150, 9, 11), (1, 70, 13, 13), (2, 24, 1, 1), (3, 9, 4, 5)]


def _inputs(shape, dtype, channels_last, seed=0):
    torch.manual_seed(seed)
    n, c, h, w = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    big = lambda: torch.randn(shape).to(dtype).to(memory_format=fmt)  # noqa: E731
    return dict(x=big(), identity=big(), grad=big(), cs=torch.rand(n, c) + 0.1, ss=torch.rand(n, h * w) + 0.1,
                d_pooled_s=torch.randn(n, 2, h, w), argmax_s=torch.randint(0, c, (n, h, w), dtype=torch.int32),
                d_pooled_c=torch.randn(2, n, c), argmax_c=torch.randint(0, h * w, (n, c), dtype=torch.int32))


def _assert_max_and_argmax(values, top, where, dim):
    """The max equals the reference's, and the index points at an element holding it (ties may pick any)."""
    torch.testing.assert_close(top, values.amax(dim), rtol=0, atol=0)
    torch.testing.assert_close(values.gather(dim, where.long().unsqueeze(dim)).squeeze(dim), top, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_each_kernel_matches_its_pytorch_counterpart(shape, channels_last, dtype):
    a = _inputs(shape, dtype, channels_last)
    x = a["x"]
    # fp32 sums in another order; bf16 outputs: the interpreter truncates where PyTorch rounds (one bf16 step).
    tol = dict(rtol=1.3e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)

    pooled, where = cbam_triton.channel_pool(x, torch.float32)
    want, _ = cbam_kernels_torch.channel_pool(x, torch.float32)
    torch.testing.assert_close(pooled[0], want[0], **tol)
    _assert_max_and_argmax(x.float().flatten(2), pooled[1], where, 2)

    pooled, where = cbam_triton.spatial_pool(x, a["cs"])
    want, _ = cbam_kernels_torch.spatial_pool(x, a["cs"])
    torch.testing.assert_close(pooled[:, 1], want[:, 1], **tol)
    _assert_max_and_argmax(x.float() * a["cs"][:, :, None, None], pooled[:, 0], where, 1)

    for identity in (None, a["identity"]):
        out = cbam_triton.apply(x, a["cs"], a["ss"], identity)
        assert out.dtype == x.dtype and out.stride() == x.stride()
        torch.testing.assert_close(out, cbam_kernels_torch.apply(x, a["cs"], a["ss"], identity), **tol)

        mask_source = None if identity is None else out
        dy, d_ss = cbam_triton.grad_spatial(a["grad"], mask_source, x, a["cs"])
        want_dy, want_d_ss = cbam_kernels_torch.grad_spatial(a["grad"], mask_source, x, a["cs"])
        torch.testing.assert_close(dy, want_dy, rtol=0, atol=0)
        torch.testing.assert_close(d_ss, want_d_ss, **tol)

    args = (dy, x, a["ss"], a["d_pooled_s"], a["argmax_s"])
    torch.testing.assert_close(cbam_triton.grad_channel(*args), cbam_kernels_torch.grad_channel(*args), **tol)
    args = (dy, x, a["cs"], a["ss"], a["d_pooled_s"], a["argmax_s"], a["d_pooled_c"], a["argmax_c"])
    dx = cbam_triton.grad_input(*args)
    assert dx.dtype == x.dtype and dx.stride() == x.stride()
    torch.testing.assert_close(dx, cbam_kernels_torch.grad_input(*args), **tol)


CASES = [
    dict(shape=(2, 150, 9, 11)),
    dict(shape=(2, 150, 9, 11), channels_last=False),
    dict(shape=(1, 40, 7, 7)),
    dict(shape=(2, 48, 9, 11), training=False),
    dict(shape=(2, 72, 6, 5), with_identity=False),
    dict(shape=(2, 48, 9, 11), dtype=torch.bfloat16),
    dict(shape=(2, 150, 7, 3), dtype=torch.bfloat16, training=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_op_on_triton_kernels_matches_the_reference(case):
    """Values, gradients (input, identity, every parameter) and BatchNorm running statistics: fp32 within 1e-5
    of the tensor's scale plus the reference's own fp32 rounding; bf16 within the reference's own bf16 spread."""
    assert compare_with_reference(fused_tail, **case) == []


def test_auto_picks_triton_and_a_whole_resnet_matches_the_reference():
    """ResNet-18-CBAM end to end in float64 (training-mode BatchNorm over a batch of 2 on 1x1 maps amplifies fp32
    rounding beyond any useful tolerance; float64 shows the kernels' math exactly)."""
    assert resolve_impl("auto", "cpu") == "triton"  # the interpreter runs the kernels on the CPU
    torch.manual_seed(0)
    ref = build_model(18, "CBAM", num_classes=10, cbam_impl="reference").double()
    for m in ref.modules():
        if isinstance(m, CBAM):  # a non-trivial spatial gate (its BN weight starts at 0)
            torch.nn.init.normal_(m.spatial_gate.bn.weight)
    fused = build_model(18, "CBAM", num_classes=10, cbam_impl="auto").double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).to(memory_format=torch.channels_last)
    outs = []
    for model in (ref, fused):
        model.to(memory_format=torch.channels_last)
        out = model(x)
        out.logsumexp(1).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


@triton.jit
def _apply_without_relu(x_ptr, identity_ptr, cs_ptr, ss_ptr, out_ptr, C, P, s_n, s_c, s_p,
                        HAS_IDENTITY: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """A deliberately wrong apply kernel: the residual is added but the ReLU is forgotten."""
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (p < P)[:, None] & (c < C)[None, :]
    at = n * s_n + p[:, None] * s_p + c[None, :] * s_c
    cs = tl.load(cs_ptr + n * C + c, mask=c < C, other=0.0)
    ss = tl.load(ss_ptr + n * P + p, mask=p < P, other=0.0)
    y = tl.load(x_ptr + at, mask=ok, other=0.0).to(cs.dtype) * cs[None, :] * ss[:, None]
    if HAS_IDENTITY:
        y = y + tl.load(identity_ptr + at, mask=ok, other=0.0).to(cs.dtype)
    tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _spatial_pool_mean_over_block(x_ptr, cs_ptr, pooled_ptr, argmax_ptr, C, P, s_n, s_c, s_p,
                                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """A deliberately wrong spatial pool: the mean over C divides by the block size, right only when C fits one."""
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    total = tl.zeros([BLOCK_P], tl.float32)
    top = tl.full([BLOCK_P], float("-inf"), tl.float32)
    top_at = tl.zeros([BLOCK_P], tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ok = (p < P)[:, None] & (c < C)[None, :]
        scale = tl.load(cs_ptr + n * C + c, mask=c < C, other=0.0)
        v = tl.load(x_ptr + n * s_n + p[:, None] * s_p + c[None, :] * s_c, mask=ok, other=0.0).to(tl.float32)
        v = v * scale[None, :]
        total += tl.sum(v, axis=1)
        block_top, block_at = tl.max(tl.where(ok, v, float("-inf")), axis=1, return_indices=True)
        top_at = tl.where(block_top > top, block_at + c0, top_at)
        top = tl.maximum(top, block_top)
    tl.store(pooled_ptr + n * 2 * P + p, top, mask=p < P)
    tl.store(pooled_ptr + n * 2 * P + P + p, total / BLOCK_C, mask=p < P)
    tl.store(argmax_ptr + n * P + p, top_at, mask=p < P)


def _wrong_apply(x, cs, ss, identity):
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    _apply_without_relu[(n, triton.cdiv(h * w, 64), triton.cdiv(c, 64))](
        x, x if identity is None else identity, cs, ss, out, c, h * w, *cbam_triton._strides(x),
        HAS_IDENTITY=identity is not None, BLOCK_P=64, BLOCK_C=64)
    return out


def _wrong_spatial_pool(x, cs):
    n, c, h, w = x.shape
    pooled = x.new_empty((n, 2, h, w), dtype=torch.float32)
    argmax = x.new_empty((n, h, w), dtype=torch.int32)
    _spatial_pool_mean_over_block[(n, triton.cdiv(h * w, 32))](x, cs, pooled, argmax, c, h * w,
                                                              *cbam_triton._strides(x), BLOCK_P=32, BLOCK_C=64)
    return pooled, argmax


@pytest.mark.parametrize("kernel,wrong", [("apply", _wrong_apply), ("spatial_pool", _wrong_spatial_pool)])
def test_a_deliberately_wrong_triton_kernel_fails_the_comparison(monkeypatch, kernel, wrong):
    monkeypatch.setattr(cbam_triton, kernel, wrong)
    assert compare_with_reference(fused_tail, (2, 150, 9, 11)) != []


def test_bf16_gradients_are_written_in_bf16():
    torch.manual_seed(0)
    cbam = CBAM(48, impl="triton")
    x = torch.randn(2, 48, 5, 5).to(torch.bfloat16).requires_grad_()
    out, grads, _ = tail_and_grads(fused_tail, cbam, x, x.detach().clone(), torch.randn(2, 48, 5, 5))
    assert out.dtype == torch.bfloat16 and grads[0].dtype == grads[1].dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in grads[2:])
