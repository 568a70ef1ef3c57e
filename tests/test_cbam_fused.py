"""The fused CBAM op (model/triton_cbam/op.py) on its kernels' PyTorch mirror (tests/cbam_kernels_torch.py), on
the CPU: numbers against the authors' formulation (model/reference.py), torch.library registration,
torch.compile, and implementation selection. The Triton kernels run the same checks under Triton's interpreter
(tests/test_cbam_triton.py)."""
import pytest
import torch

from model import CBAM_IMPLS, build_model, set_cbam_impl
from model.cbam import CBAM, resolve_impl
from model.triton_cbam import fused_cbam, op
from tests import cbam_kernels_torch
from tests.cbam_cases import compare_with_reference, fused_tail, randomised_cbam, torch_tail


@pytest.fixture(autouse=True)
def pytorch_kernels(monkeypatch):
    """The op on the PyTorch mirror of its kernels: the Triton ones need CUDA or Triton's interpreter."""
    monkeypatch.setattr(op, "kernels", cbam_kernels_torch)


# Channel counts that are not powers of two, H*W that is no multiple of a kernel block, batch 1, both layouts,
# training and eval mode, with and without the residual.
CASES = [
    dict(shape=(2, 48, 9, 11)),
    dict(shape=(3, 150, 5, 4), channels_last=False),
    dict(shape=(1, 40, 7, 7)),
    dict(shape=(2, 48, 9, 11), training=False),
    dict(shape=(1, 40, 1, 1), training=False),
    dict(shape=(2, 72, 6, 5), with_identity=False),
]


@pytest.mark.parametrize("tail", [fused_tail, torch_tail], ids=["fused", "torch"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fp32_values_gradients_and_running_stats_match_the_reference(tail, case):
    assert compare_with_reference(tail, **case) == []


@pytest.mark.parametrize("tail", [fused_tail, torch_tail], ids=["fused", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_autocast_within_the_spread_of_the_reference_itself(tail, seed):
    assert compare_with_reference(tail, (2, 48, 9, 11), dtype=torch.bfloat16, seed=seed) == []
    assert compare_with_reference(tail, (2, 150, 7, 3), dtype=torch.bfloat16, seed=seed, training=False) == []


def _drop_max_route(dy, x, cs, ss, d_pooled_s, argmax_s, d_pooled_c, argmax_c):
    """grad_input without the gradient routed to the spatial max: a plausible kernel bug."""
    return _real_grad_input(dy, x, cs, ss, d_pooled_s * torch.tensor([0.0, 1.0]).view(1, 2, 1, 1), argmax_s,
                            d_pooled_c, argmax_c)


def _mean_off_by_one(x, acc):
    pooled, argmax = _real_channel_pool(x, acc)
    n, c, h, w = x.shape
    return torch.stack((pooled[0] * (h * w) / (h * w - 1), pooled[1])), argmax


def _no_relu(x, cs, ss, identity):
    out = _real_apply(x, cs, ss, None)
    return out if identity is None else out + identity


_real_grad_input = cbam_kernels_torch.grad_input
_real_channel_pool = cbam_kernels_torch.channel_pool
_real_apply = cbam_kernels_torch.apply


@pytest.mark.parametrize("kernel,mutant", [("grad_input", _drop_max_route), ("channel_pool", _mean_off_by_one),
                                           ("apply", _no_relu)])
def test_a_deliberately_wrong_kernel_fails_the_comparison(monkeypatch, kernel, mutant):
    monkeypatch.setattr(cbam_kernels_torch, kernel, mutant)
    assert compare_with_reference(fused_tail, (2, 48, 9, 11)) != []


def _op_samples():
    torch.manual_seed(0)
    for training, with_identity, fmt in [(True, True, torch.channels_last), (False, True, torch.contiguous_format),
                                         (True, False, torch.channels_last)]:
        cbam = randomised_cbam(24)
        mlp, gate = cbam.channel_gate.mlp, cbam.spatial_gate
        x = torch.randn(2, 24, 5, 6).to(memory_format=fmt).requires_grad_()
        identity = torch.randn(2, 24, 5, 6).to(memory_format=fmt).requires_grad_() if with_identity else None
        yield (x, identity, mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias, gate.conv.weight,
               gate.bn.weight, gate.bn.bias, gate.bn.running_mean, gate.bn.running_var, training, gate.bn.eps)


@pytest.mark.slow
def test_opcheck_forward_and_backward_ops():
    for args in _op_samples():
        torch.library.opcheck(torch.ops.cbam.fused_tail.default, args)
        with torch.no_grad():
            out, pooled_c, argmax_c, pooled_s, argmax_s, stats = torch.ops.cbam.fused_tail(*args)
        x, identity, *params = (None if t is None else t.detach() for t in args[:9])
        backward_args = (torch.randn_like(out), out if identity is not None else None, x, *params,
                         pooled_c, argmax_c, pooled_s, argmax_s, stats, args[11], args[12])
        torch.library.opcheck(torch.ops.cbam.fused_tail_backward.default, backward_args)


class _Tail(torch.nn.Module):
    """A Bottleneck's tail through the fused op, as ResNet calls it."""

    def __init__(self):
        super().__init__()
        self.cbam = randomised_cbam(32)

    def forward(self, x, identity):
        return fused_cbam(self.cbam, x, identity) * 2.0  # an op after it, for the compiler to fuse around


@pytest.mark.slow
def test_torch_compile_fullgraph_keeps_the_fused_op_whole():
    # Parameters in channels_last too, as train.py converts the model (the 7x7 conv weight is 4-D).
    eager, compiled = (_Tail().to(memory_format=torch.channels_last) for _ in range(2))
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 32, 7, 9).to(memory_format=torch.channels_last)
    identity = torch.randn(2, 32, 7, 9).to(memory_format=torch.channels_last)

    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    torch.compile(_Tail(), backend=recording_backend, fullgraph=True)(x, identity)
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    fused = [t for t in targets if t in (torch.ops.cbam.fused_tail, torch.ops.cbam.fused_tail.default)]
    assert len(graphs) == 1 and len(fused) == 1, targets

    results = []
    for module, net in ((eager, eager), (compiled, torch.compile(compiled, fullgraph=True))):
        xs, ids = x.clone().requires_grad_(), identity.clone().requires_grad_()
        out = net(xs, ids)
        out.square().sum().backward()
        bn = module.cbam.spatial_gate.bn
        results.append([out, xs.grad, ids.grad, *(p.grad for p in module.parameters()), bn.running_mean,
                        bn.running_var, bn.num_batches_tracked])
    for got, want in zip(*reversed(results)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_state_dict_is_the_same_for_every_implementation():
    torch.manual_seed(0)
    models = {impl: build_model(50, "CBAM", num_classes=10, cbam_impl=impl) for impl in CBAM_IMPLS}
    keys = {impl: list(m.state_dict()) for impl, m in models.items()}
    assert all(k == keys["reference"] for k in keys.values())
    assert "layer1.0.attn.spatial_gate.bn.running_mean" in keys["auto"]
    models["torch"].load_state_dict(models["triton"].state_dict())


@pytest.mark.slow
def test_whole_resnet_with_the_fused_op_matches_the_reference():
    """ResNet-18-CBAM (BasicBlock tails) end to end: logits and every parameter's gradient."""
    torch.manual_seed(0)
    ref = build_model(18, "CBAM", num_classes=10, cbam_impl="reference").double()
    for m in ref.modules():
        if isinstance(m, CBAM):  # a non-trivial spatial gate (its BN weight starts at 0)
            torch.nn.init.normal_(m.spatial_gate.bn.weight)
    fused = build_model(18, "CBAM", num_classes=10, cbam_impl="torch").double()
    fused.load_state_dict(ref.state_dict())
    for m in fused.modules():
        if isinstance(m, CBAM):  # the fused op with its PyTorch kernels ("triton" needs CUDA or the interpreter)
            m.fused_tail = lambda z, bn, identity, m=m: fused_cbam(m, bn(z), identity)
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    for model in (ref, fused):
        model(x).logsumexp(1).sum().backward()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def test_implementation_selection():
    assert resolve_impl("auto", "cpu") == "torch"
    assert resolve_impl("torch", "cpu") == "torch" and resolve_impl("reference", "cpu") == "reference"
    with pytest.raises(RuntimeError, match="'triton' cannot run on cpu"):
        resolve_impl("triton", "cpu")
    with pytest.raises(RuntimeError, match="'triton' cannot run on cpu"):
        build_model(18, "CBAM", num_classes=2, cbam_impl="triton")(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="auto, triton, torch, reference"):
        build_model(18, "CBAM", cbam_impl="fast")
    model = set_cbam_impl(build_model(18, "CBAM", num_classes=2), "reference")
    assert {m.impl for m in model.modules() if isinstance(m, CBAM)} == {"reference"}


def test_bad_inputs_get_one_clear_error():
    cbam = randomised_cbam(32)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fused_cbam(cbam, torch.randn(32, 5, 5))
    with pytest.raises(ValueError, match="identity's shape"):
        fused_cbam(cbam, torch.randn(2, 32, 5, 5), torch.randn(2, 32, 5, 4))
    with pytest.raises(ValueError, match="more than one value"):
        fused_cbam(cbam, torch.randn(1, 32, 1, 1))
