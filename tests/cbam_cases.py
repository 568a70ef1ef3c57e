"""Shared by the CBAM implementation tests (tests/test_cbam_fused.py and the interpreted Triton checks):
randomised gates, the block tail computed by each implementation, and the comparison with the reference."""
import torch

from model.cbam import CBAM
from model.reference import reference_cbam
from model.triton_cbam import fused_cbam


def randomised_cbam(channels, seed=0, training=True):
    """A CBAM gate with every parameter and BatchNorm statistic random (the BN weight starts at 0 in a fresh model,
    which would hide the spatial gate's gradients)."""
    torch.manual_seed(seed)
    cbam = CBAM(channels, impl="torch")
    with torch.no_grad():
        for p in cbam.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        cbam.spatial_gate.bn.running_mean.fill_(0.3)
        cbam.spatial_gate.bn.running_var.fill_(1.7)
    return cbam.train(training)


def reference_tail(cbam, x, identity):
    out = reference_cbam(cbam, x)
    return out if identity is None else torch.relu(out + identity)


def torch_tail(cbam, x, identity):
    cbam.impl = "torch"
    out = cbam(x)
    return out if identity is None else torch.relu(out + identity)


def tail_and_grads(tail, cbam, x, identity, grad_out, dtype=None, autocast=None):
    """(output, [grad of x, identity, every parameter], bn running stats after) of tail(cbam, x, identity), run on
    copies converted to `dtype` (x and identity) so the caller's tensors stay untouched; on x's device; under
    autocast to the `autocast` dtype when given."""
    cbam = _copy(cbam).to(x.device)
    dtype = dtype or x.dtype
    if dtype == torch.float64:
        cbam = cbam.double()
    x = x.detach().to(dtype).requires_grad_()
    leaves = [x]
    if identity is not None:
        identity = identity.detach().to(dtype).requires_grad_()
        leaves.append(identity)
    params = list(cbam.parameters())
    with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = tail(cbam, x, identity)
    grads = torch.autograd.grad(out, leaves + params, grad_out.to(out.dtype))
    bn = cbam.spatial_gate.bn
    stats = torch.cat((bn.running_mean, bn.running_var, bn.num_batches_tracked.reshape(1).to(bn.running_mean)))
    return out.detach(), list(grads), stats


def _copy(cbam):
    clone = CBAM(cbam.channel_gate.mlp[0].in_features, impl=cbam.impl)
    clone.load_state_dict(cbam.state_dict())
    return clone.train(cbam.training).to(next(cbam.parameters()).dtype)  # on the CPU; the caller moves it


def fused_tail(cbam, x, identity):
    return fused_cbam(cbam, x, identity)


def compare_with_reference(tail, shape, *, channels_last=True, training=True, with_identity=True, seed=0,
                           dtype=torch.float32, rtol=1e-5, device="cpu"):
    """Runs `tail` and the reference in `dtype` and the reference in float64 (the truth) on the same random data;
    returns the list of (name, error, allowed) for every tensor whose error exceeds what is allowed:
    max|tail - truth| <= rtol * max|truth| + 2 * max|reference in dtype - truth|, i.e. `tail` is as accurate as
    the reference itself in that dtype, and never worse than rtol of the tensor's scale. For bfloat16 and float16,
    both run under autocast to that dtype with fp32 parameters, as in training."""
    torch.manual_seed(seed + 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # Inputs rounded to `dtype` first: the truth sees the same inputs, so errors are the arithmetic's alone.
    rounded = lambda: (torch.randn(shape, dtype=torch.float64).to(dtype).double()  # noqa: E731
                       .to(device, memory_format=fmt))
    x = rounded()
    identity = rounded() if with_identity else None
    grad_out = rounded()
    cbam = randomised_cbam(shape[1], seed, training)
    autocast = dtype if dtype in (torch.bfloat16, torch.float16) else None
    truth = tail_and_grads(reference_tail, cbam, x, identity, grad_out, torch.float64)
    ref = tail_and_grads(reference_tail, cbam, x, identity, grad_out, dtype, autocast=autocast)
    ours = tail_and_grads(tail, cbam, x, identity, grad_out, dtype, autocast=autocast)
    names = ["output", "grad x"] + (["grad identity"] if with_identity else [])
    names += [f"grad {n}" for n, _ in cbam.named_parameters()] + ["running stats"]
    flat = lambda r: [r[0], *r[1], r[2]]  # noqa: E731
    failures = []
    for name, a, b, t in zip(names, flat(ours), flat(ref), flat(truth)):
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} differs from the reference's {b.dtype}"
        assert a.shape == t.shape, f"{name}: shape {tuple(a.shape)} differs from {tuple(t.shape)}"
        err = (a.double() - t).abs().max().item()
        allowed = rtol * t.abs().max().item() + 2 * (b.double() - t).abs().max().item()
        if not err <= allowed:
            failures.append((name, err, allowed))
    return failures
