"""The six kernels of the fused CBAM op (op.py) in Triton, for CUDA GPUs.

Same arguments and results as their PyTorch mirror, tests/cbam_kernels_torch.py, against which
tests/test_cbam_triton.py checks them under Triton's interpreter. x is addressed as (N, C, P = H*W) with one stride
per axis, so contiguous and channels_last tensors are read in place; every big tensor a kernel touches has x's
strides (op.py guarantees it). Per-(n, c) and per-(n, p) vectors are contiguous, in the accumulation dtype.

Two shapes of kernel:
- reductions over P with a program per (n, block of channels), looping over P (channel_pool, grad_channel);
- reductions over C with a program per (n, block of positions), looping over C (spatial_pool, grad_spatial);
- element-wise tiles with a program per (n, block of positions, block of channels) (apply, grad_input).
The loops accumulate in fp32 (fp64 for fp64 inputs); maxima keep the first index among equal values, like
torch.max on the CPU. Block sizes are picked by triton.autotune per (C, P) on the GPU; the interpreter takes
the first configuration.
"""
import inspect

import torch
import triton
import triton.language as tl
import triton.testing

from ..triton_env import interpreting


def _configs(shapes):
    """Autotune candidates (BLOCK_P, BLOCK_C, num_warps); just the first under the interpreter (no timing)."""
    configs = [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w) for p, c, w in shapes]
    return configs[:1] if interpreting() else configs


def _quick_bench(kernel_call, quantiles):
    """Autotuning timer: 5 ms warm-up and 20 ms of repetitions per candidate instead of Triton's 25 + 100, so the
    24 tunings of a ResNet-50 (6 kernels x 4 stage shapes, once per process) take seconds; these kernels run for
    0.1-1 ms, so 20 ms still averages dozens of runs."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _autotune(configs):
    if "do_bench" in inspect.signature(triton.autotune).parameters:  # Triton >= 3.2
        return triton.autotune(configs=configs, key=["C", "P"], do_bench=_quick_bench)
    return triton.autotune(configs=configs, key=["C", "P"])


# Loops over P (C in blocks per program) want many channel blocks; loops over C want many position blocks;
# tiles are square-ish. Channels are innermost in channels_last, so BLOCK_C >= 16 keeps 32-byte bf16 segments.
_OVER_P = _configs([(64, 64, 4), (32, 32, 4), (128, 32, 4), (64, 16, 2), (32, 128, 8)])
_OVER_C = _configs([(64, 64, 4), (32, 64, 4), (16, 64, 2), (128, 32, 8), (16, 128, 4)])
_TILES = _configs([(64, 64, 4), (32, 64, 4), (64, 128, 8), (128, 64, 8), (32, 32, 2)])


@_autotune(_OVER_P)
@triton.jit
def _channel_pool_kernel(x_ptr, pooled_ptr, argmax_ptr, N, C, P, s_n, s_c, s_p,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    acc_t = pooled_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_C], acc_t)
    top = tl.full([BLOCK_C], float("-inf"), acc_t)
    top_at = tl.zeros([BLOCK_C], tl.int32)
    x_ptr += n * s_n
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = (p < P)[:, None] & c_ok[None, :]
        v = tl.load(x_ptr + p[:, None] * s_p + c[None, :] * s_c, mask=ok, other=0.0).to(acc_t)
        total += tl.sum(v, axis=0)
        block_top, block_at = tl.max(tl.where(ok, v, float("-inf")), axis=0, return_indices=True)
        better = block_top > top  # strict: the first maximum wins
        top_at = tl.where(better, block_at + p0, top_at)
        top = tl.where(better, block_top, top)
    out = n * C + c
    tl.store(pooled_ptr + out, total / P, mask=c_ok)
    tl.store(pooled_ptr + N * C + out, top, mask=c_ok)
    tl.store(argmax_ptr + out, top_at, mask=c_ok)


@_autotune(_OVER_C)
@triton.jit
def _spatial_pool_kernel(x_ptr, cs_ptr, pooled_ptr, argmax_ptr, C, P, s_n, s_c, s_p,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    acc_t = pooled_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_P], acc_t)
    top = tl.full([BLOCK_P], float("-inf"), acc_t)
    top_at = tl.zeros([BLOCK_P], tl.int32)
    x_ptr += n * s_n
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        ok = p_ok[:, None] & c_ok[None, :]
        scale = tl.load(cs_ptr + n * C + c, mask=c_ok, other=0.0)
        v = tl.load(x_ptr + p[:, None] * s_p + c[None, :] * s_c, mask=ok, other=0.0).to(acc_t) * scale[None, :]
        total += tl.sum(v, axis=1)
        block_top, block_at = tl.max(tl.where(ok, v, float("-inf")), axis=1, return_indices=True)
        better = block_top > top
        top_at = tl.where(better, block_at + c0, top_at)
        top = tl.where(better, block_top, top)
    # [max, mean] in the authors' order.
    tl.store(pooled_ptr + n * 2 * P + p, top, mask=p_ok)
    tl.store(pooled_ptr + n * 2 * P + P + p, total / C, mask=p_ok)
    tl.store(argmax_ptr + n * P + p, top_at, mask=p_ok)


@_autotune(_TILES)
@triton.jit
def _apply_kernel(x_ptr, identity_ptr, cs_ptr, ss_ptr, out_ptr, C, P, s_n, s_c, s_p,
                  HAS_IDENTITY: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok, c_ok = p < P, c < C
    ok = p_ok[:, None] & c_ok[None, :]
    at = n * s_n + p[:, None] * s_p + c[None, :] * s_c
    cs = tl.load(cs_ptr + n * C + c, mask=c_ok, other=0.0)
    ss = tl.load(ss_ptr + n * P + p, mask=p_ok, other=0.0)
    # (x*cs)*ss in this order, as the unfused gates round it.
    y = tl.load(x_ptr + at, mask=ok, other=0.0).to(cs.dtype) * cs[None, :] * ss[:, None]
    if HAS_IDENTITY:
        y = tl.maximum(y + tl.load(identity_ptr + at, mask=ok, other=0.0).to(cs.dtype), 0.0)
    tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=ok)


@_autotune(_OVER_C)
@triton.jit
def _grad_spatial_kernel(grad_ptr, out_ptr, x_ptr, cs_ptr, dy_ptr, d_ss_ptr, C, P, s_n, s_c, s_p,
                         HAS_IDENTITY: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    acc_t = d_ss_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_P], acc_t)
    base = n * s_n + p[:, None] * s_p
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        ok = p_ok[:, None] & c_ok[None, :]
        at = base + c[None, :] * s_c
        g = tl.load(grad_ptr + at, mask=ok, other=0.0)
        if HAS_IDENTITY:  # the ReLU's mask; the masked gradient is also the identity's gradient
            g = tl.where(tl.load(out_ptr + at, mask=ok, other=0.0) > 0, g, 0.0)
            tl.store(dy_ptr + at, g, mask=ok)
        scale = tl.load(cs_ptr + n * C + c, mask=c_ok, other=0.0)
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(acc_t)
        total += tl.sum(g.to(acc_t) * x * scale[None, :], axis=1)
    tl.store(d_ss_ptr + n * P + p, total, mask=p_ok)


@triton.jit
def _grad_gated(dy, ss_ptr, d_pooled_ptr, argmax_ptr, n, p, c, p_ok, C, P):
    """dz = dy*ss + dmean/C + [c = argmax]*dmax on a (positions, channels) tile: the gradient of x*cs."""
    ss = tl.load(ss_ptr + n * P + p, mask=p_ok, other=0.0)
    d_max = tl.load(d_pooled_ptr + n * 2 * P + p, mask=p_ok, other=0.0)
    d_mean = tl.load(d_pooled_ptr + n * 2 * P + P + p, mask=p_ok, other=0.0)
    top_at = tl.load(argmax_ptr + n * P + p, mask=p_ok, other=-1)
    dz = dy.to(ss.dtype) * ss[:, None] + (d_mean / C)[:, None]
    return dz + tl.where(top_at[:, None] == c[None, :], d_max[:, None], 0.0)


@_autotune(_OVER_P)
@triton.jit
def _grad_channel_kernel(dy_ptr, x_ptr, ss_ptr, d_pooled_ptr, argmax_ptr, d_cs_ptr, C, P, s_n, s_c, s_p,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    acc_t = d_cs_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_C], acc_t)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < P
        ok = p_ok[:, None] & c_ok[None, :]
        at = n * s_n + p[:, None] * s_p + c[None, :] * s_c
        dy = tl.load(dy_ptr + at, mask=ok, other=0.0)
        dz = _grad_gated(dy, ss_ptr, d_pooled_ptr, argmax_ptr, n, p, c, p_ok, C, P)
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(acc_t)
        total += tl.sum(tl.where(ok, dz * x, 0.0), axis=0)
    tl.store(d_cs_ptr + n * C + c, total, mask=c_ok)


@_autotune(_TILES)
@triton.jit
def _grad_input_kernel(dy_ptr, x_ptr, cs_ptr, ss_ptr, d_pooled_s_ptr, argmax_s_ptr, d_pooled_c_ptr, argmax_c_ptr,
                       dx_ptr, N, C, P, s_n, s_c, s_p, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok, c_ok = p < P, c < C
    ok = p_ok[:, None] & c_ok[None, :]
    at = n * s_n + p[:, None] * s_p + c[None, :] * s_c
    dz = _grad_gated(tl.load(dy_ptr + at, mask=ok, other=0.0), ss_ptr, d_pooled_s_ptr, argmax_s_ptr,
                     n, p, c, p_ok, C, P)
    cs = tl.load(cs_ptr + n * C + c, mask=c_ok, other=0.0)
    d_mean = tl.load(d_pooled_c_ptr + n * C + c, mask=c_ok, other=0.0)
    d_max = tl.load(d_pooled_c_ptr + N * C + n * C + c, mask=c_ok, other=0.0)
    top_at = tl.load(argmax_c_ptr + n * C + c, mask=c_ok, other=-1)
    dx = dz * cs[None, :] + (d_mean / P)[None, :] + tl.where(top_at[None, :] == p[:, None], d_max[None, :], 0.0)
    tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _strides(x):
    """(stride of n, of c, of p = h*W + w): valid for the contiguous and channels_last tensors op.py passes."""
    s_n, s_c, _, s_w = x.stride()
    return s_n, s_c, s_w


def _over_p(n, c):
    return lambda meta: (n, triton.cdiv(c, meta["BLOCK_C"]))


def _over_c(n, p):
    return lambda meta: (n, triton.cdiv(p, meta["BLOCK_P"]))


def _tiles(n, c, p):
    return lambda meta: (n, triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))


def channel_pool(x, acc):
    n, c, h, w = x.shape
    pooled = x.new_empty((2, n, c), dtype=acc)
    argmax = x.new_empty((n, c), dtype=torch.int32)
    _channel_pool_kernel[_over_p(n, c)](x, pooled, argmax, n, c, h * w, *_strides(x))
    return pooled, argmax


def spatial_pool(x, cs):
    n, c, h, w = x.shape
    pooled = x.new_empty((n, 2, h, w), dtype=cs.dtype)
    argmax = x.new_empty((n, h, w), dtype=torch.int32)
    _spatial_pool_kernel[_over_c(n, h * w)](x, cs.contiguous(), pooled, argmax, c, h * w, *_strides(x))
    return pooled, argmax


def apply(x, cs, ss, identity):
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    _apply_kernel[_tiles(n, c, h * w)](x, x if identity is None else identity, cs.contiguous(), ss.contiguous(),
                                       out, c, h * w, *_strides(x), HAS_IDENTITY=identity is not None)
    return out


def grad_spatial(grad, out, x, cs):
    n, c, h, w = x.shape
    dy = grad if out is None else torch.empty_like(x)
    d_ss = x.new_empty((n, h * w), dtype=cs.dtype)
    _grad_spatial_kernel[_over_c(n, h * w)](grad, x if out is None else out, x, cs.contiguous(), dy, d_ss,
                                            c, h * w, *_strides(x), HAS_IDENTITY=out is not None)
    return dy, d_ss


def grad_channel(dy, x, ss, d_pooled_s, argmax_s):
    n, c, h, w = x.shape
    d_cs = x.new_empty((n, c), dtype=ss.dtype)
    _grad_channel_kernel[_over_p(n, c)](dy, x, ss.contiguous(), d_pooled_s.contiguous(), argmax_s.contiguous(),
                                        d_cs, c, h * w, *_strides(x))
    return d_cs


def grad_input(dy, x, cs, ss, d_pooled_s, argmax_s, d_pooled_c, argmax_c):
    n, c, h, w = x.shape
    dx = torch.empty_like(x)
    _grad_input_kernel[_tiles(n, c, h * w)](dy, x, cs.contiguous(), ss.contiguous(), d_pooled_s.contiguous(),
                                            argmax_s.contiguous(), d_pooled_c.contiguous(), argmax_c.contiguous(),
                                            dx, n, c, h * w, *_strides(x))
    return dx
