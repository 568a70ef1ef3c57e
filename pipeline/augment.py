"""The augmentation policy, in one place, for every backend.

Train: RandomResizedCrop (area 8-100 % of the image, aspect ratio 3/4-4/3, 10 attempts, then a centred crop of
the largest window with the aspect ratio clamped into range) followed by a horizontal flip with probability 0.5.
Val: resize the shorter side to round(S / 0.875), then centre-crop S x S (the standard ImageNet evaluation
protocol; 0.875 = 224/256), done as one resize of the exact centred window (see val_crop_box). Both end in
normalisation with the ImageNet channel mean/std.

The DALI backends pass these numbers to DALI operators; the torch backend uses the geometry helpers below with
Pillow. Known difference: when all 10 attempts fail (extreme aspect ratios, tiny images) DALI places its fallback
window at a random position instead of the centre.
"""
import math

import torch

# ImageNet channel statistics (RGB, fraction of full scale), as used by torchvision's reference training.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_AREA = (0.08, 1.0)         # fraction of the source image area
CROP_RATIO = (3 / 4, 4 / 3)     # width / height
CROP_ATTEMPTS = 10              # tries before the centred fallback crop
FLIP_PROBABILITY = 0.5
VAL_CROP_FRACTION = 0.875       # centre crop S out of a shorter side of S / 0.875

# JPEG DCT-domain downscale factors libjpeg offers through Pillow's Image.draft, largest first.
DRAFT_FACTORS = (8, 4, 2, 1)


def val_resize_size(image_size):
    """Shorter side (pixels) the val path resizes to before the centre crop of `image_size`."""
    return round(image_size / VAL_CROP_FRACTION)


def random_resized_crop_box(width, height, rng):
    """A RandomResizedCrop window for a width x height image: (left, top, crop_width, crop_height) in pixels.

    `rng` is a numpy Generator. Area is drawn uniformly from CROP_AREA, the aspect ratio log-uniformly from
    CROP_RATIO; a window that does not fit is redrawn, CROP_ATTEMPTS times at most."""
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(CROP_AREA[0], CROP_AREA[1])
        ratio = math.exp(rng.uniform(log_low, log_high))
        crop_w = round(math.sqrt(target_area * ratio))
        crop_h = round(math.sqrt(target_area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return left, top, crop_w, crop_h
    return _centred_fallback_box(width, height)


def _centred_fallback_box(width, height):
    """The largest centred window whose aspect ratio lies in CROP_RATIO."""
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        crop_w, crop_h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        crop_w, crop_h = round(height * CROP_RATIO[1]), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def val_crop_box(width, height, image_size):
    """The val window in source pixels, (left, top, right, bottom) floats: a centred square of side
    image_size * shorter / val_resize_size(image_size).

    Resizing it to image_size x image_size is "resize the shorter side to val_resize_size, centre-crop
    image_size" computed without rounding the intermediate image to whole pixels (torchvision rounds the
    intermediate size down and the crop offset, which moves the window by less than one output pixel). Exact,
    the same window is reproducible in every backend: DALI gets it as a resize ROI."""
    side = min(width, height) * image_size / val_resize_size(image_size)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def draft_factor(crop_width, crop_height, image_size):
    """Largest JPEG DCT-domain reduction that still leaves the crop at least image_size on both sides."""
    for factor in DRAFT_FACTORS:
        if crop_width >= factor * image_size and crop_height >= factor * image_size:
            return factor
    return 1


class Normalizer:
    """uint8 NHWC batches (any device) -> normalised `dtype` NCHW batches on `device`, channels_last layout.

    Shared by every backend: the workers or DALI deliver uint8 pixels, and this is the one place where they
    become (x / 255 - mean) / std. The uint8 batch crosses to the device first (4x fewer bytes than float).
    On a CPU device the output memory is recycled (see _ReusableBuffers): on the 2-core VM this made the step
    0.04 ms per 224 px image instead of 0.51 ms (tmp measurements, batch 64)."""

    def __init__(self, device, dtype, reusable=3):
        self.device, self.dtype = device, dtype
        self._buffers = _ReusableBuffers(reusable if device.type == "cpu" else 0)
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
        # tensor over channels_last instead gives inner loops of length 3 (measured 10x slower on CPU).
        rows = (count * height, width * channels)
        flat_out = out.view(rows)
        shift, scale = self._row_stats(width)
        if self.dtype == torch.float32:
            flat_out.copy_(images.reshape(rows))
            torch.addcmul(shift, flat_out, scale, out=flat_out)
        else:
            # float16/bfloat16: compute in float32 (exact uint8 -> float32) and round once on store.
            work = self._buffers.take_scratch(rows, self.device)
            work.copy_(images.reshape(rows))
            torch.addcmul(shift, work, scale, out=flat_out)

    def _row_stats(self, width):
        """(-mean/std, 1/(255 std)) tiled over one image row of `width` RGB pixels, float32 on the device."""
        if width not in self._rows:
            shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=self.device)
            scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=self.device)
            self._rows[width] = (shift.repeat(width), scale.repeat(width))
        return self._rows[width]


class _ReusableBuffers:
    """Output tensors handed out earlier, taken again once no tensor outside this pool uses their memory.

    A fresh float batch (38.5 MB at 64 x 224 x 224 x 3) is a new mmap for glibc (above its 32 MB threshold) and
    every one of its 9,400 pages faults and is zeroed on first touch: that, not the arithmetic, was 90 % of the
    normalisation time on CPU. A buffer is reused only when its storage has no user besides the pool (views,
    numpy arrays and DLPack exports of a yielded batch all count as users), so a batch the caller keeps is never
    overwritten. capacity 0 (CUDA devices: torch's caching allocator already recycles) always allocates."""

    def __init__(self, capacity):
        # torch has no public storage reference count; without this private one, fall back to allocating.
        self.capacity = capacity if hasattr(torch._C, "_storage_Use_Count") else 0
        self._held = []      # [(tensor, its use count when only the pool holds it)]
        self._scratch = None  # float32 work area, never handed out

    def take(self, shape, dtype, device):
        for tensor, idle in self._held:
            if tensor.shape == shape and tensor.dtype == dtype and _storage_users(tensor) == idle:
                return tensor
        tensor = torch.empty(shape, dtype=dtype, device=device)
        if self.capacity:
            if len(self._held) >= self.capacity:
                self._held.pop(0)  # the oldest: still in use by the caller, or of a shape no longer asked for
            self._held.append((tensor, _storage_users(tensor)))
        return tensor

    def take_scratch(self, shape, device):
        if self._scratch is None or self._scratch.shape != shape or not self.capacity:
            self._scratch = torch.empty(shape, dtype=torch.float32, device=device)
        return self._scratch


def _storage_users(tensor):
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)
