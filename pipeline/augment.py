"""The augmentation policy, in one place, for every backend.

Train: RandomResizedCrop (area 8-100 % of the image, aspect ratio 3/4-4/3, 10 attempts, then a centred crop of
the largest window with the aspect ratio clamped into range) followed by a horizontal flip with probability 0.5.
Val: resize the shorter side to round(S / 0.875), then centre-crop S x S (the standard ImageNet evaluation
protocol; 0.875 = 224/256), done as one resize of the exact centred window (see val_crop_box). Both end in
normalisation with the ImageNet channel mean/std (pipeline/normalize.py).

The DALI backends pass these numbers to DALI operators; the torch backend uses the geometry helpers below with
Pillow. Known difference: when all 10 attempts fail (extreme aspect ratios, tiny images) DALI places its fallback
window at a random position instead of the centre.

Optional, train only, the same code for every backend (Loader applies it to the decoded uint8 batch on the
device before normalisation, the torch backend's workers to theirs; erasing follows normalisation):
- automatic augmentation (parse_auto_augment): timm's RandAugment in timm's notation (`rand-m9-mstd0.5`: its 15
  operations and level-to-argument maps, `inc1` its increasing ones, each of n layers applied with probability
  p, magnitude noise std),
  torchvision's TrivialAugmentWide (`trivial`) or AutoAugment ImageNet policy (`imagenet`), computed with
  torchvision.transforms.v2.functional on the tensor (GPU or CPU);
- random erasing (erase_batch): timm's RandomErasing, mode 'pixel' (one box of normal noise per chosen sample).
Each sample's draws come from (seed, epoch, rank, the sample's position in the rank's epoch; in the torch
backend, whose worker processes apply the policy in parallel, its worker and position there), so replaying an
epoch (a mid-epoch resume) gives the same images. Deviation from timm: bilinear resampling only (timm draws
bilinear or bicubic), and shears and translations act on the tensor (PIL's transform in timm).
"""
import math
from dataclasses import dataclass

import numpy as np

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


# ---------------------------------------------------------------------------------------------------------------
# Automatic augmentation (--auto-augment) and random erasing (--reprob)

AUTO_AUGMENT_FILL = [round(255 * m) for m in IMAGENET_MEAN]  # area uncovered by affine ops (timm's img_mean)
RAND_LEVEL_MAX = 10.0           # timm's magnitude scale: m10 is each operation's strongest setting
RAND_DEFAULTS = dict(m=9.0, n=2, mstd=0.0, p=0.5, inc=0)  # timm's rand_augment_transform defaults
ERASE_AREA = (0.02, 1 / 3)      # timm RandomErasing: box area as a fraction of the image
ERASE_RATIO = (0.3, 1 / 0.3)    # box height / width, drawn log-uniformly
ERASE_ATTEMPTS = 10
_AUGMENT_STREAM, _ERASE_STREAM = 1, 2  # keep the two draws apart from each other


@dataclass(frozen=True)
class AutoAugmentPolicy:
    """A parsed --auto-augment value; str() gives it back."""
    kind: str                 # 'rand' | 'trivial' | 'imagenet'
    magnitude: float = RAND_DEFAULTS["m"]
    layers: int = RAND_DEFAULTS["n"]
    magnitude_std: float = RAND_DEFAULTS["mstd"]
    prob: float = RAND_DEFAULTS["p"]
    increasing: bool = False  # timm's 'inc1': maps whose strength grows with the magnitude (RSB's choice)
    text: str = ""

    def __str__(self):
        return self.text or self.kind


def parse_auto_augment(text):
    """'rand-m9-mstd0.5' (keys m magnitude 0-10, n layers, mstd magnitude std, p each layer's probability, inc1
    the increasing maps), 'trivial' or 'imagenet' -> AutoAugmentPolicy; ValueError naming the bad part."""
    kind, *parts = str(text).split("-")
    if kind in ("trivial", "imagenet") and not parts:
        return AutoAugmentPolicy(kind, text=text)
    if kind != "rand":
        raise ValueError(f"expected rand-m<M>[-n<N>][-mstd<S>][-p<P>][-inc1], trivial or imagenet, got {text!r}")
    values = dict(RAND_DEFAULTS)
    for part in parts:
        key = next((k for k in ("mstd", "inc", "m", "n", "p") if part.startswith(k)), None)
        try:
            values[key] = float(part[len(key):]) if key else None
        except ValueError:
            key = None
        if key is None:
            raise ValueError(f"{text!r}: unknown part {part!r} (expected m<M>, n<N>, mstd<S>, p<P> or inc1)")
    if not (0 <= values["m"] <= RAND_LEVEL_MAX and values["n"] >= 1 and values["n"] == int(values["n"])
            and values["mstd"] >= 0 and 0 < values["p"] <= 1 and values["inc"] in (0, 1)):
        raise ValueError(f"{text!r}: needs 0 <= m <= 10, a whole n >= 1, mstd >= 0, 0 < p <= 1 and inc 0 or 1")
    return AutoAugmentPolicy("rand", values["m"], int(values["n"]), values["mstd"], values["p"],
                             bool(values["inc"]), text)


def _rand_operations(increasing):
    """timm's _RAND_TRANSFORMS (or _RAND_INCREASING_TRANSFORMS) with its level-to-argument maps:
    name -> op(image uint8 CHW, level 0-10, rng)."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    def signed(value, rng):
        return -value if rng.random() > 0.5 else value

    def affine(image, angle=0.0, translate=(0, 0), shear=(0.0, 0.0), center=None):
        return F.affine(image, angle=angle, translate=list(translate), scale=1.0, shear=list(shear),
                        interpolation=InterpolationMode.BILINEAR, fill=AUTO_AUGMENT_FILL, center=center)

    def shear(image, level, rng, axis):
        degrees = math.degrees(math.atan(signed(level / RAND_LEVEL_MAX * 0.3, rng)))
        return affine(image, shear=(degrees, 0.0) if axis == 0 else (0.0, degrees), center=[0, 0])  # PIL's origin

    def translate(image, level, rng, axis):
        pixels = round(signed(level / RAND_LEVEL_MAX * 0.45, rng) * image.shape[-1 - axis])
        return affine(image, translate=(pixels, 0) if axis == 0 else (0, pixels))

    def enhance(adjust):
        if increasing:  # 1.0 is no change; stronger away from it on either side
            return lambda image, level, rng: adjust(image, max(0.1, 1.0 + signed(level / RAND_LEVEL_MAX * 0.9, rng)))
        return lambda image, level, rng: adjust(image, level / RAND_LEVEL_MAX * 1.8 + 0.1)

    def posterize(image, level, rng):
        bits = int(level / RAND_LEVEL_MAX * 4)
        return F.posterize(image, 4 - bits if increasing else bits)

    def solarize(image, level, rng):
        threshold = min(256, int(level / RAND_LEVEL_MAX * 256))
        threshold = 256 - threshold if increasing else threshold
        return image if threshold > 255 else F.solarize(image, threshold)

    def solarize_add(image, level, rng):
        added = (image.to(torch.int16) + min(128, int(level / RAND_LEVEL_MAX * 110))).clamp_(max=255)
        return torch.where(image < 128, added.to(torch.uint8), image)

    return {
        "AutoContrast": lambda image, level, rng: F.autocontrast(image),
        "Equalize": lambda image, level, rng: F.equalize(image),
        "Invert": lambda image, level, rng: F.invert(image),
        "Rotate": lambda image, level, rng: affine(image, angle=signed(level / RAND_LEVEL_MAX * 30.0, rng)),
        "Posterize": posterize,
        "Solarize": solarize,
        "SolarizeAdd": solarize_add,
        "Color": enhance(F.adjust_saturation),
        "Contrast": enhance(F.adjust_contrast),
        "Brightness": enhance(F.adjust_brightness),
        "Sharpness": enhance(F.adjust_sharpness),
        "ShearX": lambda image, level, rng: shear(image, level, rng, 0),
        "ShearY": lambda image, level, rng: shear(image, level, rng, 1),
        "TranslateXRel": lambda image, level, rng: translate(image, level, rng, 0),
        "TranslateYRel": lambda image, level, rng: translate(image, level, rng, 1),
    }


class AutoAugmenter:
    """Applies an AutoAugmentPolicy to uint8 NHWC batches in place, sample by sample."""

    def __init__(self, policy):
        import torch
        from torchvision.transforms import v2
        self.policy = policy
        self._torch = torch
        if policy.kind == "rand":
            self._operations = list(_rand_operations(policy.increasing).values())
        elif policy.kind == "trivial":
            self._transform = v2.TrivialAugmentWide(fill=AUTO_AUGMENT_FILL)
        else:
            self._transform = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=AUTO_AUGMENT_FILL)

    def __reduce__(self):  # sent to worker processes by its policy alone (the operations are closures)
        return AutoAugmenter, (self.policy,)

    def __call__(self, pixels, key):
        """pixels: (B, H, W, 3) uint8 on any device; key: (seed, epoch, rank, ..., position of pixels[0])."""
        *stream, first = key
        for i in range(pixels.shape[0]):
            rng = np.random.default_rng([*stream, first + i, _AUGMENT_STREAM])
            pixels[i] = self._one(pixels[i].permute(2, 0, 1), rng).permute(1, 2, 0)

    def _one(self, image, rng):
        policy = self.policy
        if policy.kind != "rand":  # torchvision's transforms draw from torch's generator: seed a forked one
            with self._torch.random.fork_rng(devices=[]):
                self._torch.manual_seed(int(rng.integers(2**63)))
                return self._transform(image)
        for index in rng.integers(len(self._operations), size=policy.layers):  # with replacement, as timm
            if policy.prob < 1.0 and rng.random() > policy.prob:
                continue
            level = policy.magnitude
            if policy.magnitude_std > 0:
                level = (rng.uniform(0, level) if policy.magnitude_std > 100
                         else rng.normal(level, policy.magnitude_std))
            image = self._operations[index](image, min(max(level, 0.0), RAND_LEVEL_MAX), rng)
        return image


def erase_box(height, width, rng):
    """A random-erasing box (top, left, box_height, box_width), or None when no attempt fits."""
    area = height * width
    log_low, log_high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    for _ in range(ERASE_ATTEMPTS):
        target = area * rng.uniform(*ERASE_AREA)
        ratio = math.exp(rng.uniform(log_low, log_high))
        box_h, box_w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < box_h < height and 0 < box_w < width:
            return int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1)), box_h, box_w
    return None


def erase_batch(images, prob, key):
    """Random erasing in place on a normalised (B, 3, H, W) batch: each sample with probability `prob` gets one
    box of standard normal noise (the normalised pixel distribution). key as AutoAugmenter's."""
    import torch
    *stream, first = key
    height, width = images.shape[-2:]
    generator = None
    for i in range(images.shape[0]):
        rng = np.random.default_rng([*stream, first + i, _ERASE_STREAM])
        box = erase_box(height, width, rng) if rng.random() < prob else None
        if box is None:
            continue
        if generator is None:  # the noise: one device generator per batch, seeded from its first erased sample
            generator = torch.Generator(images.device).manual_seed(int(rng.integers(2**63)))
        top, left, box_h, box_w = box
        noise = torch.randn((3, box_h, box_w), generator=generator, device=images.device, dtype=torch.float32)
        images[i, :, top:top + box_h, left:left + box_w] = noise.to(images.dtype)
