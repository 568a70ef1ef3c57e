"""The six kernels of the fused CBAM op (model/triton_cbam/op.py) in plain PyTorch, for the tests.

Same arguments and same results as model/triton_cbam/kernels.py: the reference the Triton kernels are checked
against under Triton's interpreter (tests/interpreted/check_cbam_triton.py), and the kernels tests/test_cbam_fused.py
runs the op on without it. x is (N, C, H, W) in any dense layout; per-position maps are passed flattened to
(N, H*W); reductions accumulate in the dtype of the gate tensors (fp32, fp64 for fp64 inputs).
"""
import torch


def channel_pool(x, acc):
    """Per (n, c) over H*W: [mean, max] (2, N, C) in `acc`, and the argmax (N, C) int32."""
    flat = x.to(acc).flatten(2)
    top, where = flat.max(2)
    return torch.stack((flat.mean(2), top)), where.int()


def spatial_pool(x, cs):
    """Per (n, h, w) over C of x*cs: [max, mean] (N, 2, H, W), and the argmax over C (N, H, W) int32."""
    z = x.to(cs.dtype) * cs[:, :, None, None]
    top, where = z.max(1)
    return torch.stack((top, z.mean(1)), 1).contiguous(), where.int()


def apply(x, cs, ss, identity):
    """x*cs*ss, plus identity and ReLU when identity is given; x's dtype and layout."""
    y = x.to(cs.dtype) * cs[:, :, None, None] * ss.view(x.shape[0], 1, x.shape[2], x.shape[3])
    if identity is not None:
        y = torch.relu(y + identity.to(cs.dtype))
    return y.to(x.dtype)


def grad_spatial(grad, out, x, cs):
    """dy = grad masked by the ReLU (grad itself without one), and d ss = sum over C of dy*x*cs: (N, H*W)."""
    dy = grad if out is None else torch.where(out > 0, grad, torch.zeros((), dtype=grad.dtype))
    d_ss = (dy.to(cs.dtype) * x.to(cs.dtype) * cs[:, :, None, None]).sum(1)
    return dy, d_ss.flatten(1)


def _grad_gated(dy, ss, d_pooled_s, argmax_s):
    """dz, the gradient of x*cs: dy*ss + dmean/C, plus dmax at the channel that held the max."""
    n, c, h, w = dy.shape
    dz = dy.to(ss.dtype) * ss.view(n, 1, h, w) + d_pooled_s[:, 1:2] / c
    return dz.scatter_add(1, argmax_s[:, None].long(), d_pooled_s[:, 0:1])


def grad_channel(dy, x, ss, d_pooled_s, argmax_s):
    """d cs = sum over H*W of dz*x: (N, C)."""
    return (_grad_gated(dy, ss, d_pooled_s, argmax_s) * x.to(ss.dtype)).sum((2, 3))


def grad_input(dy, x, cs, ss, d_pooled_s, argmax_s, d_pooled_c, argmax_c):
    """dx = dz*cs + dmean/(H*W), plus dmax at the position that held the max; x's dtype and layout."""
    n, c, h, w = x.shape
    dx = _grad_gated(dy, ss, d_pooled_s, argmax_s) * cs[:, :, None, None] + d_pooled_c[0, :, :, None, None] / (h * w)
    dx = dx.contiguous().view(n, c, h * w).scatter_add(2, argmax_c[:, :, None].long(), d_pooled_c[1, :, :, None])
    return torch.empty_like(x).copy_(dx.view(n, c, h, w))
