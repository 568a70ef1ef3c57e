"""CBAM: Convolutional Block Attention Module.

Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018 (arXiv:1807.06521), and the
authors' code (github.com/Jongchan/attention-module, MODELS/cbam.py), which we follow where the two differ:

- ChannelGate: one shared MLP (Linear C->C/r with bias, ReLU, Linear C/r->C with bias) is applied to the global
  average-pool and the global max-pool of the input; the two outputs are summed, passed through a sigmoid and
  scale the input per channel.
- SpatialGate: channel-wise max and mean are concatenated ([max, mean], in that order, as the code does), then a
  7x7 conv (2->1, no bias, padding 3), BatchNorm (eps 1e-5, momentum 0.01, as the code's BasicConv) and a
  sigmoid scale the input per position.
- Channel gate first, then the spatial gate on the channel-gated tensor.

Caveat stated honestly: the authors' code pools with avg_pool2d/max_pool2d over a kernel of the map's height,
which equals global pooling only for square maps; we pool over the whole map (mean and max over H and W), which
is what the paper describes and what the code computes on the square maps of ImageNet training.

One set of parameters (the state dict never changes), computed as `impl` (CBAM_IMPLS) says:
- "torch": the gates below, plain PyTorch differentiated by autograd. Under torch.compile the residual block's
  tail takes folded_block_tail instead: the block's last BatchNorm folded into the gates' pools, so that inductor
  fuses the whole tail.
- "reference": the authors' formulation (model/reference.py), the numbers every other path is tested against.
- "triton": an optional fused Triton op for the block tail, forward and backward (CUDA, or Triton's CPU
  interpreter), imported by _fused_op() only when it runs.
"auto" picks "triton" where Triton runs, else "torch", at each call; train.py's --cbam-impl auto picks "torch"
when it compiles (training/compile.py).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import update_running_stats
from .reference import reference_cbam
from .se import reduced_width
from .triton_env import triton_unavailable_reason

CBAM_IMPLS = ("auto", "triton", "torch", "reference")


class ChannelGate(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = reduced_width(channels, reduction)  # C/16, rounded as SE's (model/se.py)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )

    def forward(self, x):
        # One MLP call on the stacked [avg; max] descriptors: same numbers as two calls, half the launches.
        batch = x.shape[0]
        pooled = torch.cat((x.mean(dim=(2, 3)), _max_over_map(x)), dim=0)
        logits = self.mlp(pooled)
        scale = torch.sigmoid(logits[:batch] + logits[batch:])
        return x * scale[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        # eps and momentum as the authors' BasicConv (momentum 0.01 = a slow running average).
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        pooled = torch.cat((_max_over_channels(x), x.mean(dim=1, keepdim=True)), dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


# The max reductions of the "torch" implementation take the form that is fastest on the CPU, where it runs;
# values are identical, and so are gradients except between exactly tied maxima (amax shares the gradient among
# them, the indexed forms give it to one). Eager: the indexed forms (adaptive_max_pool2d has a channels_last
# kernel; both have an index-based backward like the authors' max_pool2d / torch.max); amax's backward builds an
# equality mask over the whole map in separate kernels. Under torch.compile, inductor fuses amax and that mask
# into the neighbouring kernels (CPU measurements in BENCHMARKS.md).
def _max_over_map(x):
    """Global max over H and W: (N, C)."""
    if torch.compiler.is_compiling():
        return x.amax(dim=(2, 3))
    return F.adaptive_max_pool2d(x, 1).flatten(1)


def _max_over_channels(x):
    """Max over C: (N, 1, H, W), in x's memory format."""
    if torch.compiler.is_compiling():
        return x.amax(dim=1, keepdim=True)
    return x.max(dim=1, keepdim=True).values


class CBAM(nn.Module):
    def __init__(self, channels, reduction=16, impl="auto"):
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate()
        self.impl = check_impl(impl)

    def forward(self, x):
        impl = resolve_impl(self.impl, x.device)
        if impl == "triton" and _plain_bn(self.spatial_gate.bn):
            return _fused_op()(self, x)
        if impl == "reference":
            return reference_cbam(self, x)
        return self.spatial_gate(self.channel_gate(x))

    def fused_tail(self, z, bn, identity):
        """relu(CBAM(bn(z)) + identity): the residual block's tail with its last BatchNorm `bn`, which
        model/resnet.py hands to CBAM whole so that it can fuse it: compiled, "torch" folds bn into the gates'
        pools; "triton" adds the identity and applies the ReLU inside its op."""
        impl = resolve_impl(self.impl, z.device)
        if impl == "torch" and torch.compiler.is_compiling() and _plain_bn(bn) and _plain_bn(self.spatial_gate.bn):
            return folded_block_tail(self, bn, z, identity)
        x = bn(z)
        if impl == "triton" and _plain_bn(self.spatial_gate.bn):
            return _fused_op()(self, x, identity)
        return torch.relu(self(x) + identity)

    def extra_repr(self):
        return f"impl={self.impl!r}"


def _plain_bn(bn):
    """False for SyncBatchNorm (--sync-bn), whose statistics span the ranks, which neither the fold nor the fused
    op computes: it keeps its own module."""
    return isinstance(bn, nn.BatchNorm2d)


# ---- The block tail under torch.compile: the block's last BatchNorm folded into the gates ----
#
# BatchNorm in training mode is a per-channel affine map x = a_c * z + b_c once its statistics are known. So:
# - one reduction over each (n, c) map of z gives mean, biased variance, max and min; BatchNorm's statistics per
#   channel follow from them (the variance by the parallel-variance rule of Chan, Golub and LeVeque 1979: mean of
#   the per-map variances plus the variance of the per-map means, as stable as a single Welford pass), and so do
#   the channel gate's pools of x: mean_x = a*mean_z + b, max_x = a*max_z + b when a >= 0, else a*min_z + b;
# - the spatial gate pools x*cs = z*(a*cs) + b*cs over C, computed on the fly from z (x is never written);
# - the output relu((z*(a*cs) + b*cs)*ss + identity) is one pointwise pass.
# Forward: 3 reads of z, 1 of the identity, 1 write of the output. The max pools are amax/amin: their gradient is
# an equality mask that fuses into the neighbouring kernels, where torch.max's index-based backward is a scatter.
# The 7x7 conv (2->1 channels) and the MLP act on (N, 2, H, W) and (2N, C) tensors; they stay library calls.
# Plain PyTorch, so inductor sees every op; the numbers are those of nn.BatchNorm2d followed by CBAM (tests compare
# in float64, eager and compiled), running statistics updated as nn.BatchNorm2d does.

def folded_block_tail(cbam, bn, z, identity):
    """relu(cbam(bn(z)) + identity) for the nn.BatchNorm2d `bn`. The gate math runs in float32 (float64 for
    float64 inputs) whatever the autocast dtype; the output has the dtype `bn(z) + identity` would have."""
    out_dtype = torch.promote_types(z.dtype, identity.dtype)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    with torch.autocast(z.device.type, enabled=False):
        zf = z.to(acc)
        a, b, pool_mean, pool_max = _bn_affine_and_channel_pools(bn, zf)
        mlp = cbam.channel_gate.mlp
        hidden = torch.relu(F.linear(torch.cat((pool_mean, pool_max)), mlp[0].weight.to(acc), mlp[0].bias.to(acc)))
        logits = F.linear(hidden, mlp[2].weight.to(acc), mlp[2].bias.to(acc))
        batch = z.shape[0]
        cs = torch.sigmoid(logits[:batch] + logits[batch:])
        scale, shift = (a * cs)[:, :, None, None], (b * cs)[:, :, None, None]  # x*cs = z*scale + shift
        gated = zf * scale + shift
        # (N, 2, H, W) in the contiguous layout, which the fused op's 7x7 conv also gets (cuDNN's choice of
        # algorithm for 2 input channels depends on it); the tensor is C/2 times smaller than z.
        pooled = torch.cat((gated.amax(dim=1, keepdim=True), gated.mean(dim=1, keepdim=True)), dim=1).contiguous()
        out = torch.relu(gated * _folded_spatial_scale(cbam.spatial_gate, pooled, acc) + identity.to(acc))
    return out.to(out_dtype)


def _bn_affine_and_channel_pools(bn, z):
    """(a, b) of bn's affine map per channel (C,), and the mean and max over H, W of bn(z) per (n, c) (N, C)."""
    var_nc, mean_nc = torch.var_mean(z, dim=(2, 3), unbiased=False)
    max_nc, min_nc = z.amax(dim=(2, 3)), z.amin(dim=(2, 3))
    mean = mean_nc.mean(0)
    var = var_nc.mean(0) + (mean_nc - mean).square().mean(0)  # Chan et al.: within plus between the maps
    a, b = _affine(bn, z, mean, var)
    pool_max = torch.where(a >= 0, max_nc * a, min_nc * a) + b
    return a, b, mean_nc * a + b, pool_max


def _affine(bn, t, batch_mean, batch_var):
    """(a, b) with bn(t) = a*t + b per channel: the batch statistics in training (running ones updated as
    nn.BatchNorm2d does), the running ones in evaluation."""
    count = t.numel() // t.shape[1]
    if bn.training or bn.running_mean is None:
        if bn.training and count < 2:
            raise ValueError(f"BatchNorm needs more than one value per channel in training, got input shape "
                             f"{tuple(t.shape)}")
        mean, var = batch_mean, batch_var
        if bn.training and bn.track_running_stats:
            update_running_stats(bn, mean.detach(), var.detach(), count)
    else:
        mean, var = bn.running_mean.to(t.dtype), bn.running_var.to(t.dtype)
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.to(t.dtype)
    b = -mean * a
    if bn.bias is not None:
        b = b + bn.bias.to(t.dtype)
    return a, b


def _folded_spatial_scale(gate, pooled, acc):
    """sigmoid(BN(conv7x7(pooled))): the spatial gate's scale (N, 1, H, W)."""
    conv = F.conv2d(pooled, gate.conv.weight.to(acc), padding=gate.conv.padding)
    var, mean = torch.var_mean(conv, dim=(0, 2, 3), unbiased=False)
    a, b = _affine(gate.bn, conv, mean, var)
    return torch.sigmoid(conv * a[:, None, None] + b[:, None, None])


# ---- The choice of implementation ----

def check_impl(impl):
    if impl not in CBAM_IMPLS:
        raise ValueError(f"CBAM implementation must be one of {', '.join(CBAM_IMPLS)}, got {impl!r}")
    return impl


def resolve_impl(impl, device):
    """The implementation that runs on `device`: "auto" resolved; "triton" where it cannot run is a RuntimeError."""
    if impl == "auto":
        return "torch" if triton_unavailable_reason(device) else "triton"
    if impl == "triton":
        why = triton_unavailable_reason(device)
        if why:
            raise RuntimeError(f"CBAM implementation 'triton' cannot run on {torch.device(device)}: {why}; "
                               "use 'torch' or 'auto'")
    return check_impl(impl)


def set_cbam_impl(model, impl):
    """Switches every CBAM module of `model` to implementation `impl` (one of CBAM_IMPLS), in place."""
    check_impl(impl)
    for module in model.modules():
        if isinstance(module, CBAM):
            module.impl = impl
    return model


def _fused_op():
    """fused_cbam(cbam, x, identity=None) of model/triton_cbam/, the optional package of the fused Triton op.
    The model's one reference to that package, imported here when the "triton" implementation runs and not
    before, so that importing the model never imports Triton; removing the package is removing this function
    and the "triton" choice."""
    from .triton_cbam import fused_cbam
    return fused_cbam
