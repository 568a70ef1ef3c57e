"""The fused CBAM block tail, relu(CBAM(x) + identity), as one torch.library op with a hand-written backward.

The big tensors (x, the identity, the output and their gradients) are read and written only by six kernels, three
per direction; everything in between is tiny ((N, C) channel descriptors, (N, H, W) spatial maps) and stays in
ordinary PyTorch ops inside the op. Counted in passes over x (one read or write of a tensor of x's size):

forward   1. channel_pool(x)                 per (n, c): mean, max and argmax over H*W           1 read
             MLP, sigmoid                      -> channel scale cs (N, C)
          2. spatial_pool(x, cs)             per (n, h, w): max, argmax and mean over C of x*cs   1 read
                                               (x*cs is never written)
             7x7 conv, BatchNorm, sigmoid      -> spatial scale ss (N, H, W)
          3. apply(x, cs, ss, identity)      relu(x*cs*ss + identity)                             2 reads, 1 write
backward  1. grad_spatial(g, out, x, cs)     dy = g*(out > 0) (the identity's gradient, written);
                                               d ss = sum over C of dy*x*cs                       3 reads, 1 write
             sigmoid, BatchNorm, conv backward -> d[max, mean] over C
          2. grad_channel(dy, x, ...)        d cs = sum over H*W of dz*x, where
                                               dz = dy*ss + dmean/C + [c = argmax]*dmax            2 reads
             sigmoid, MLP backward             -> d[mean, max] over H*W, the MLP's gradients
          3. grad_input(dy, x, ...)          dx = dz*cs + dmean/(H*W) + [hw = argmax]*dmax          2 reads, 1 write

14 passes in all (the unfused gate moves about 36-38, eager PyTorch about 130 pass-equivalents). Nothing of x's
size is saved for the backward but x itself and the output (which the next block's convolution keeps anyway);
the max reductions are differentiated through saved argmax indices, as max_pool2d and torch.max are: between
exactly tied maxima the gradient goes to the first one.

Kernels: kernels.py, Triton (CUDA, or the CPU under TRITON_INTERPRET=1); tests/cbam_kernels_torch.py mirrors them
in PyTorch, and the tests run the op on that mirror too. The op is functional: BatchNorm's running statistics are
updated by fused_cbam() from the batch statistics the op returns, so torch.compile(fullgraph=True) keeps the op
whole.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batchnorm import update_running_stats
from . import kernels


def accumulation_dtype(x):
    """Reductions and the small gate math run in fp32 (fp64 for fp64 inputs)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def kernel_layout(x):
    """x itself when it is contiguous or channels_last (the kernels address both as (N, C, H*W) with one stride
    per axis), else a contiguous copy. Works on fake tensors too, so the fake implementation predicts the layout."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _like(t, x):
    """t with x's shape, dtype and strides (a copy only when they differ), so one set of strides addresses both."""
    if t.dtype == x.dtype and t.stride() == x.stride():
        return t
    return torch.empty_like(x).copy_(t)


# ---- the small gate math, shared by forward and backward (all in the accumulation dtype) ----

def _channel_scale(pooled_c, w1, b1, w2, b2):
    """Shared MLP on the [mean; max] descriptors (2, N, C): hidden activations (2, N, C/r) and cs (N, C)."""
    hidden = torch.relu(F.linear(pooled_c, w1, b1))  # linear: one GEMM with the bias added in its epilogue
    logits = F.linear(hidden, w2, b2)
    return hidden, torch.sigmoid(logits[0] + logits[1])


def _spatial_conv(pooled_s, conv_w):
    return F.conv2d(pooled_s, conv_w, padding=conv_w.shape[-1] // 2)


def _spatial_scale(conv, bn_w, bn_b, bn_stats, eps):
    """BatchNorm with the given (mean, biased var), then sigmoid: (normalised conv, rstd, ss), all (N, 1, H, W)."""
    rstd = torch.rsqrt(bn_stats[1] + eps)
    normed = (conv - bn_stats[0]) * rstd
    return normed, rstd, torch.sigmoid(normed * bn_w + bn_b)


def _params(tensors, dtype):
    return [t.to(dtype) for t in tensors]


# ---- the op ----

@torch.library.custom_op("cbam::fused_tail", mutates_args=())
def fused_tail(x: Tensor, identity: Optional[Tensor], w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
               conv_w: Tensor, bn_w: Tensor, bn_b: Tensor, running_mean: Tensor, running_var: Tensor,
               batch_stats: bool, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """relu(CBAM(x) + identity) (CBAM(x) without identity), and what the backward needs: the channel descriptors
    (2, N, C) [mean, max] and their argmax over H*W (N, C), the spatial descriptors (N, 2, H, W) [max, mean] and
    their argmax over C (N, H, W), and the BatchNorm statistics used (2,) [mean, biased var]: the batch's when
    batch_stats, else the running ones."""
    x = kernel_layout(x)
    acc = accumulation_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        w1, b1, w2, b2, conv_w, bn_w, bn_b = _params((w1, b1, w2, b2, conv_w, bn_w, bn_b), acc)
        pooled_c, argmax_c = kernels.channel_pool(x, acc)
        _, cs = _channel_scale(pooled_c, w1, b1, w2, b2)
        pooled_s, argmax_s = kernels.spatial_pool(x, cs)
        conv = _spatial_conv(pooled_s, conv_w)
        if batch_stats:
            var, mean = torch.var_mean(conv, unbiased=False)  # one reduction for both
            bn_stats = torch.stack((mean, var))
        else:
            bn_stats = torch.cat((running_mean, running_var)).to(acc)
        _, _, ss = _spatial_scale(conv, bn_w, bn_b, bn_stats, eps)
        out = kernels.apply(x, cs, ss.view(ss.shape[0], -1), None if identity is None else _like(identity, x))
    return out, pooled_c, argmax_c, pooled_s, argmax_s, bn_stats


@fused_tail.register_fake
def _(x, identity, w1, b1, w2, b2, conv_w, bn_w, bn_b, running_mean, running_var, batch_stats, eps):
    x = kernel_layout(x)
    n, c, h, w = x.shape
    acc = accumulation_dtype(x)
    return (torch.empty_like(x), x.new_empty((2, n, c), dtype=acc), x.new_empty((n, c), dtype=torch.int32),
            x.new_empty((n, 2, h, w), dtype=acc), x.new_empty((n, h, w), dtype=torch.int32),
            x.new_empty((2,), dtype=acc))


@torch.library.custom_op("cbam::fused_tail_backward", mutates_args=())
def fused_tail_backward(grad: Tensor, out: Optional[Tensor], x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                        b2: Tensor, conv_w: Tensor, bn_w: Tensor, bn_b: Tensor, pooled_c: Tensor, argmax_c: Tensor,
                        pooled_s: Tensor, argmax_s: Tensor, bn_stats: Tensor, batch_stats: bool, eps: float
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of fused_tail for x, identity (empty when the forward had none: `out` is None then), w1, b1, w2,
    b2, conv_w, bn_w and bn_b, from the forward's saved descriptors; the gate scales are recomputed."""
    x = kernel_layout(x)
    acc = accumulation_dtype(x)
    params = (w1, b1, w2, b2, conv_w, bn_w, bn_b)
    with torch.autocast(x.device.type, enabled=False):
        w1, b1, w2, b2, conv_w, bn_w, bn_b = _params(params, acc)
        hidden, cs = _channel_scale(pooled_c, w1, b1, w2, b2)
        conv = _spatial_conv(pooled_s, conv_w)
        normed, rstd, ss = _spatial_scale(conv, bn_w, bn_b, bn_stats, eps)
        ss_flat = ss.view(ss.shape[0], -1)

        # Pass 1: the ReLU mask, the identity's gradient, and the spatial scale's gradient.
        dy, d_ss = kernels.grad_spatial(_like(grad, x), None if out is None else _like(out, x), x, cs)
        # Spatial gate backward: sigmoid, BatchNorm (batch or running statistics), 7x7 conv.
        d_pre = d_ss.view_as(ss) * ss * (1 - ss)
        d_bn_w = (d_pre * normed).sum().reshape(1)
        d_bn_b = d_pre.sum().reshape(1)
        d_normed = d_pre * bn_w
        if batch_stats:
            d_conv = rstd * (d_normed - d_normed.mean() - normed * (d_normed * normed).mean())
        else:
            d_conv = d_normed * rstd
        pad = conv_w.shape[-1] // 2
        d_pooled_s = torch.nn.grad.conv2d_input(pooled_s.shape, conv_w, d_conv, padding=pad)
        d_conv_w = torch.nn.grad.conv2d_weight(pooled_s, conv_w.shape, d_conv, padding=pad)

        # Pass 2: the channel scale's gradient.
        d_cs = kernels.grad_channel(dy, x, ss_flat, d_pooled_s, argmax_s)
        # Channel gate backward: sigmoid, then the shared MLP, applied to both descriptors.
        d_logits = d_cs * cs * (1 - cs)
        d_w2 = d_logits.t() @ (hidden[0] + hidden[1])
        d_b2 = 2 * d_logits.sum(0)
        d_hidden = (d_logits @ w2) * (hidden > 0)
        d_w1 = torch.einsum("knr,knc->rc", d_hidden, pooled_c)
        d_b1 = d_hidden.sum((0, 1))
        d_pooled_c = d_hidden @ w1

        # Pass 3: the input's gradient.
        dx = kernels.grad_input(dy, x, cs, ss_flat, d_pooled_s, argmax_s, d_pooled_c, argmax_c)
    d_identity = dy if out is not None else x.new_empty(0)
    grads = (d_w1, d_b1, d_w2, d_b2, d_conv_w, d_bn_w, d_bn_b)
    # Contiguous whatever the parameters' layout (a channels_last model has a channels_last 7x7 conv weight), so
    # that the fake implementation can state the layout.
    return (dx, d_identity, *(g.to(p.dtype).contiguous() for g, p in zip(grads, params)))


@fused_tail_backward.register_fake
def _(grad, out, x, w1, b1, w2, b2, conv_w, bn_w, bn_b, pooled_c, argmax_c, pooled_s, argmax_s, bn_stats,
      batch_stats, eps):
    x = kernel_layout(x)
    d_identity = torch.empty_like(x) if out is not None else x.new_empty(0)
    params = (w1, b1, w2, b2, conv_w, bn_w, bn_b)
    return (torch.empty_like(x), d_identity, *(torch.empty_like(p, memory_format=torch.contiguous_format)
                                                for p in params))


def _setup_context(ctx, inputs, output):
    x, identity, w1, b1, w2, b2, conv_w, bn_w, bn_b, _, _, batch_stats, eps = inputs
    out, pooled_c, argmax_c, pooled_s, argmax_s, bn_stats = output
    ctx.batch_stats, ctx.eps = batch_stats, eps
    ctx.has_identity = identity is not None
    # The output is needed only for the ReLU mask, i.e. with an identity.
    ctx.save_for_backward(x, out if identity is not None else None, w1, b1, w2, b2, conv_w, bn_w, bn_b,
                          pooled_c, argmax_c, pooled_s, argmax_s, bn_stats)


def _backward(ctx, grad, *_unused_grads):
    x, out, *saved = ctx.saved_tensors
    dx, d_identity, *param_grads = torch.ops.cbam.fused_tail_backward(grad, out, x, *saved, ctx.batch_stats, ctx.eps)
    return (dx, d_identity if ctx.has_identity else None, *param_grads, None, None, None, None)


fused_tail.register_autograd(_backward, setup_context=_setup_context)


def fused_cbam(cbam, x, identity=None):
    """relu(cbam(x) + identity) (cbam(x) without identity) through the fused op, for a model.cbam.CBAM module;
    updates the spatial gate's BatchNorm running statistics in training mode exactly as nn.BatchNorm2d does."""
    if x.dim() != 4:
        raise ValueError(f"CBAM expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if identity is not None and identity.shape != x.shape:
        raise ValueError(f"the identity's shape {tuple(identity.shape)} differs from the input's {tuple(x.shape)}")
    if identity is not None and identity.dtype != x.dtype:  # as `out + identity` would promote
        dtype = torch.promote_types(x.dtype, identity.dtype)
        x, identity = x.to(dtype), identity.to(dtype)
    mlp, gate = cbam.channel_gate.mlp, cbam.spatial_gate
    bn = gate.bn
    batch_stats = bn.training or bn.running_mean is None
    if batch_stats and x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"CBAM's spatial BatchNorm needs more than one value per channel in training, "
                         f"got input shape {tuple(x.shape)}")
    running_mean = bn.running_mean if bn.running_mean is not None else x.new_zeros(1, dtype=torch.float32)
    running_var = bn.running_var if bn.running_var is not None else x.new_ones(1, dtype=torch.float32)
    out, *_, bn_stats = torch.ops.cbam.fused_tail(
        x, identity, mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias, gate.conv.weight, bn.weight, bn.bias,
        running_mean, running_var, batch_stats, bn.eps)
    if bn.training and bn.track_running_stats:
        update_running_stats(bn, bn_stats[0].detach(), bn_stats[1].detach(), x.shape[0] * x.shape[2] * x.shape[3])
    return out
