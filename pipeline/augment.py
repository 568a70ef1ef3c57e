"""The augmentation policy, in one place, for every backend.

Train: RandomResizedCrop (area 8-100 % of the image, aspect ratio 3/4-4/3, 10 attempts, then a centred crop of
the largest window with the aspect ratio clamped into range) followed by a horizontal flip with probability 0.5.
Val: resize the shorter side to round(S / 0.875), then centre-crop S x S (the standard ImageNet evaluation
protocol; 0.875 = 224/256), done as one resize of the exact centred window (see val_crop_box). Both end in
normalisation with the ImageNet channel mean/std (pipeline/normalize.py).

The DALI backends pass these numbers to DALI operators; the torch backend uses the geometry helpers below with
Pillow. Known difference: when all 10 attempts fail (extreme aspect ratios, tiny images) DALI places its fallback
window at a random position instead of the centre.
"""
import math

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
