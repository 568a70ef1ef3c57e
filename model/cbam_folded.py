"""CBAM written for the compiler: the block tail relu(CBAM(BN(z)) + identity) with the block's last BatchNorm folded in.

This is what the "torch" implementation runs under torch.compile (model/cbam.py routes it here). It is plain
PyTorch, so inductor sees every op and fuses the full-size work into a few kernels; nothing here is a custom op.

BatchNorm in training mode is a per-channel affine map x = a_c * z + b_c once its statistics are known. So:
- one reduction over each (n, c) map of z gives mean, biased variance, max and min; BatchNorm's statistics per
  channel follow from them (the variance by the parallel-variance rule of Chan, Golub and LeVeque 1979: mean of
  the per-map variances plus the variance of the per-map means, as stable as a single Welford pass), and so do
  the channel gate's pools of x: mean_x = a*mean_z + b, max_x = a*max_z + b when a >= 0, else a*min_z + b;
- the spatial gate pools x*cs = z*(a*cs) + b*cs over C, computed on the fly from z (x is never written);
- the output relu((z*(a*cs) + b*cs)*ss + identity) is one pointwise pass.
Forward: 3 reads of z, 1 of the identity, 1 write of the output. The max pools are amax/amin: their gradient is
an equality mask that fuses into the neighbouring kernels, where torch.max's index-based backward is a scatter.
The 7x7 conv (2->1 channels) and the MLP act on (N, 2, H, W) and (2N, C) tensors; they stay library calls.

Numbers: the same as nn.BatchNorm2d followed by model.cbam.CBAM (tests compare in float64, eager and compiled),
BatchNorm's running statistics updated as nn.BatchNorm2d does. The gate math runs in float32 (float64 for
float64 inputs) whatever the autocast dtype; the output has the dtype `bn(z) + identity` would have.
"""
import torch

from .batchnorm import update_running_stats


def folded_block_tail(cbam, bn, z, identity):
    """relu(cbam(bn(z)) + identity), for a model.cbam.CBAM `cbam` and the nn.BatchNorm2d `bn` before it."""
    out_dtype = z.dtype if identity is None else torch.promote_types(z.dtype, identity.dtype)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    with torch.autocast(z.device.type, enabled=False):
        zf = z.to(acc)
        a, b, pool_mean, pool_max = _bn_affine_and_channel_pools(bn, zf)
        mlp = cbam.channel_gate.mlp
        batch = z.shape[0]
        logits = torch.nn.functional.linear(
            torch.relu(torch.nn.functional.linear(torch.cat((pool_mean, pool_max)), mlp[0].weight.to(acc),
                                                  mlp[0].bias.to(acc))),
            mlp[2].weight.to(acc), mlp[2].bias.to(acc))
        cs = torch.sigmoid(logits[:batch] + logits[batch:])
        scale, shift = (a * cs)[:, :, None, None], (b * cs)[:, :, None, None]  # x*cs = z*scale + shift
        gated = zf * scale + shift
        # (N, 2, H, W) in the contiguous layout, which the fused op's 7x7 conv also gets (cuDNN's choice of
        # algorithm for 2 input channels depends on it); the tensor is C/2 times smaller than z.
        pooled = torch.cat((gated.amax(dim=1, keepdim=True), gated.mean(dim=1, keepdim=True)), dim=1).contiguous()
        ss = _spatial_scale(cbam.spatial_gate, pooled, acc)
        out = gated * ss
        if identity is not None:
            out = torch.relu(out + identity.to(acc))
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


def _spatial_scale(gate, pooled, acc):
    """sigmoid(BN(conv7x7(pooled))): the spatial gate's scale (N, 1, H, W)."""
    conv = torch.nn.functional.conv2d(pooled, gate.conv.weight.to(acc), padding=gate.conv.padding)
    var, mean = torch.var_mean(conv, dim=(0, 2, 3), unbiased=False)
    a, b = _affine(gate.bn, conv, mean, var)
    return torch.sigmoid(conv * a[:, None, None] + b[:, None, None])
