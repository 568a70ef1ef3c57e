"""uint8 NHWC pixels -> the loader contract's normalised channels_last batches, for every backend.

The workers or DALI deliver uint8 pixels; this is the one place where they become (x / 255 - mean) / std with
the ImageNet channel statistics of the augmentation policy (pipeline/augment.py).
"""
import sys

import numpy as np
import torch

from .augment import IMAGENET_MEAN, IMAGENET_STD


class Normalizer:
    """uint8 NHWC batches (any device) -> normalised `dtype` NCHW batches on `device`, channels_last layout.

    The uint8 batch crosses to the device first (4x fewer bytes than float). On a CPU device the output memory
    is recycled once the caller no longer holds it (BufferPool; BENCHMARKS.md gives the saving)."""

    def __init__(self, device, dtype, reusable=3):
        self.device, self.dtype = device, dtype
        self._buffers = BufferPool(reusable if device.type == "cpu" else 0)
        self._scratch = None  # float32 work area for half-precision outputs, never handed out
        self._rows = {}

    def __call__(self, *parts):
        """One batch from one or more uint8 NHWC parts of equal image size, concatenated along N."""
        parts = [part.to(self.device, non_blocking=True) for part in parts]
        _, height, width, channels = parts[0].shape
        count = sum(part.shape[0] for part in parts)
        out = self._buffers.take((count, height, width, channels), self.dtype, self.device)
        first = 0
        for part in parts:
            self._normalize_into(part, out[first:first + part.shape[0]])
            first += part.shape[0]
        # NHWC -> NCHW is a view whose strides already are channels_last.
        return out.permute(0, 3, 1, 2)

    def _normalize_into(self, images, out):
        count, height, width, channels = images.shape
        # Each image row is W*3 contiguous values in both layouts, so the per-channel affine map becomes a
        # multiply-add with a (W*3,) pattern: long, contiguous, vectorised inner loops. Broadcasting a (1,3,1,1)
        # tensor over channels_last instead gives inner loops of length 3, an order of magnitude slower on CPU.
        rows = (count * height, width * channels)
        flat_out = out.view(rows)
        shift, scale = self._row_stats(width)
        if self.dtype == torch.float32:
            flat_out.copy_(images.reshape(rows))
            torch.addcmul(shift, flat_out, scale, out=flat_out)
        else:
            # float16/bfloat16: compute in float32 (exact uint8 -> float32) and round once on store.
            work = self._scratch_rows(rows)
            work.copy_(images.reshape(rows))
            torch.addcmul(shift, work, scale, out=flat_out)

    def _scratch_rows(self, rows):
        if self._scratch is None or self._scratch.shape != rows or not self._buffers.capacity:
            self._scratch = torch.empty(rows, dtype=torch.float32, device=self.device)
        return self._scratch

    def _row_stats(self, width):
        """(-mean/std, 1/(255 std)) tiled over one image row of `width` RGB pixels, float32 on the device."""
        if width not in self._rows:
            shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=self.device)
            scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=self.device)
            self._rows[width] = (shift.repeat(width), scale.repeat(width))
        return self._rows[width]


class BufferPool:
    """CPU output tensors whose memory is taken again once no tensor outside this pool uses it.

    A fresh float batch of a few tens of MB is a new mmap for glibc (above its mmap threshold), and every page
    faults and is zeroed on first touch: that, not the arithmetic, was most of the normalisation time on CPU.
    The pool keeps numpy byte arrays and hands out tensors made from them with torch.from_numpy, which holds a
    reference to its array for as long as any tensor, view, numpy export or DLPack capsule shares that memory.
    So the array's reference count says whether the caller still uses a batch, and a batch the caller keeps is
    never overwritten. capacity 0 (CUDA devices: torch's caching allocator already recycles) always allocates."""

    def __init__(self, capacity):
        self.capacity = capacity
        self._arrays = []  # numpy uint8 arrays, oldest first
        self._idle = None  # the reference count an array has when only the pool holds it

    def take(self, shape, dtype, device):
        if not self.capacity or device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        for index in range(len(self._arrays)):
            if self._arrays[index].nbytes == nbytes and self._references(index) == self._idle:
                return self._tensor(index, shape, dtype)
        if len(self._arrays) >= self.capacity:
            self._arrays.pop(0)  # the oldest: still in use by the caller, or of a size no longer asked for
        self._arrays.append(np.empty(nbytes, dtype=np.uint8))
        if self._idle is None:
            self._idle = self._references(len(self._arrays) - 1)
        return self._tensor(len(self._arrays) - 1, shape, dtype)

    def _references(self, index):
        # Always measured through this one call, so the interpreter's own temporary references are the same
        # every time and only tensors made from the array make a difference.
        return sys.getrefcount(self._arrays[index])

    def _tensor(self, index, shape, dtype):
        return torch.from_numpy(self._arrays[index]).view(dtype).view(shape)
