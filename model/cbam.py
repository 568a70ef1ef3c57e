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

Three implementations of the same math, one set of parameters (the state dict never changes):
- "triton" (model/cbam_fused.py + model/cbam_triton.py): fused kernels for forward and backward with the
  residual block's add and ReLU folded in, one torch.library op; CUDA (or Triton's CPU interpreter).
- "torch": plain PyTorch ops differentiated by autograd; CPUs, accelerators without Triton, and torch.compile.
- "reference" (model/reference.py): the authors' straightforward formulation, the numerical baseline.
"auto" picks "triton" for CUDA tensors when Triton imports, else "torch", at each call.
"""
import torch
import torch.nn.functional as F
from torch import nn

CBAM_IMPLS = ("auto", "triton", "torch", "reference")


class ChannelGate(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
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
# into the neighbouring kernels (CPU measurements in BENCHMARKS.md). GPUs take the "triton" implementation.
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

    def forward(self, x, identity=None):
        """CBAM(x); given the block's shortcut `identity`, the whole block tail relu(CBAM(x) + identity)."""
        impl = resolve_impl(self.impl, x.device)
        if impl == "triton" and isinstance(self.spatial_gate.bn, nn.BatchNorm2d):  # not SyncBatchNorm (see below)
            from .cbam_fused import fused_cbam
            return fused_cbam(self, x, identity)
        if impl == "reference":
            from .reference import reference_cbam
            out = reference_cbam(self, x)
        else:
            out = self.spatial_gate(self.channel_gate(x))
        return out if identity is None else torch.relu(out + identity)

    def block_tail(self, z, bn, identity):
        """relu(CBAM(bn(z)) + identity) for the block's last BatchNorm `bn`: under torch.compile the "torch"
        implementation folds bn into its pools (model/cbam_folded.py), so that inductor fuses the whole tail."""
        # SyncBatchNorm (--sync-bn) is no nn.BatchNorm2d: its statistics span the ranks, which the folded pools
        # do not, so it keeps its own module.
        foldable = isinstance(bn, nn.BatchNorm2d) and isinstance(self.spatial_gate.bn, nn.BatchNorm2d)
        if foldable and torch.compiler.is_compiling() and resolve_impl(self.impl, z.device) == "torch":
            from .cbam_folded import folded_block_tail
            return folded_block_tail(self, bn, z, identity)
        return self(bn(z), identity)

    def extra_repr(self):
        return f"impl={self.impl!r}"


def check_impl(impl):
    if impl not in CBAM_IMPLS:
        raise ValueError(f"CBAM implementation must be one of {', '.join(CBAM_IMPLS)}, got {impl!r}")
    return impl


def resolve_impl(impl, device):
    """The implementation that runs on `device`: "auto" resolved; "triton" where it cannot run is a RuntimeError."""
    from .cbam_fused import triton_unavailable_reason
    device = torch.device(device)
    if impl == "auto":
        return "torch" if triton_unavailable_reason(device) else "triton"
    if impl == "triton":
        why = triton_unavailable_reason(device)
        if why:
            raise RuntimeError(f"CBAM implementation 'triton' cannot run on {device}: {why}; "
                               "use 'torch' or 'auto'")
    return check_impl(impl)


def set_cbam_impl(model, impl):
    """Switches every CBAM module of `model` to implementation `impl` (one of CBAM_IMPLS), in place."""
    check_impl(impl)
    for module in model.modules():
        if isinstance(module, CBAM):
            module.impl = impl
    return model
