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

# The crop sides (pixels) every tool takes for --image-size and --val-image-size. Below 32 px ResNet's five
# stride-2 stages leave nothing to pool. Above 1024 px, over four times the 224 px these networks are trained at and
# far past the sizes where evaluating larger than training still gains, the cost grows with the square: one image's
# float input is 12 MB and each of a ResNet-50's largest activations 67 MB, times the batch. A larger value is a
# typo: one of 100000 would ask for a 30 GB crop per image, found only when the first batch is decoded.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024


def image_size_problem(flag, value):
    """Why `value` is not a crop side `flag` can take (None when it is)."""
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        return f"{flag} must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {value}"
    return None


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
        raise ValueError(f"expected rand-m<M>[-n<N>][-mstd<S>][-p<P>][-inc1], trivial or imagenet, got "
                         f"{str(text)[:60]!r}")
    values = dict(RAND_DEFAULTS)
    for part in parts:
        key = next((k for k in ("mstd", "inc", "m", "n", "p") if part.startswith(k)), None)
        try:
            values[key] = float(part[len(key):]) if key else None
        except ValueError:
            key = None
        if key is None:
            raise ValueError(f"{text[:60]!r}: unknown part {part[:20]!r} (expected m<M>, n<N>, mstd<S>, p<P> or inc1)")
    # n is bounded by the operations there are: timm draws the n with replacement, so more layers only repeat
    # operations, each a pass over every image (n1000000 would hold the loader for hours per batch).
    if not (0 <= values["m"] <= RAND_LEVEL_MAX and 1 <= values["n"] <= len(RAND_OPERATIONS)
            and values["n"] == int(values["n"]) and values["mstd"] >= 0 and 0 < values["p"] <= 1
            and values["inc"] in (0, 1)):
        raise ValueError(f"{text[:60]!r}: needs 0 <= m <= {RAND_LEVEL_MAX:g}, a whole n from 1 to "
                         f"{len(RAND_OPERATIONS)} (the operations there are), mstd >= 0, 0 < p <= 1 and inc 0 or 1")
    return AutoAugmentPolicy("rand", values["m"], int(values["n"]), values["mstd"], values["p"],
                             bool(values["inc"]), text)


# timm's _RAND_TRANSFORMS, in its order (the draw picks an index into it).
RAND_OPERATIONS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _rand_operations(increasing):
    """timm's RandAugment operations (with `increasing`, its _RAND_INCREASING_TRANSFORMS maps), each applied to a
    group of samples at once: op(images uint8 (b, 3, H, W), levels (b,) in 0-10, signs (b,) of +-1) -> images.
    Per-sample arguments, the arithmetic of torchvision's functional ops (tested against them sample by sample)."""
    operations = {**_rand_pixel_operations(increasing), **_rand_geometry_operations()}
    return {name: operations[name] for name in RAND_OPERATIONS}


def _per_sample(values, images):
    import torch
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=images.device).view(-1, 1, 1, 1)


def _rand_pixel_operations(increasing):
    """The operations on pixel values: timm's level-to-argument maps, torchvision's arithmetic."""
    import torch
    from torchvision.transforms.v2 import functional as F

    def blend(images, degenerate, factors):  # torchvision's _blend with one ratio per sample
        ratio = _per_sample(factors, images)
        return images.mul(ratio).add_(degenerate.mul(1.0 - ratio)).clamp_(0, 255).to(torch.uint8)

    def enhance(degenerate_of):
        def op(images, levels, signs):
            if increasing:  # 1.0 is no change; stronger away from it on either side
                factors = np.maximum(0.1, 1.0 + signs * levels / RAND_LEVEL_MAX * 0.9)
            else:
                factors = levels / RAND_LEVEL_MAX * 1.8 + 0.1
            return blend(images, degenerate_of(images), factors)
        return op

    def contrast_degenerate(images):  # the mean of the floored greyscale image, as adjust_contrast
        return F.rgb_to_grayscale(images).float().mean(dim=(-3, -2, -1), keepdim=True)

    def posterize(images, levels, signs):
        bits = (levels / RAND_LEVEL_MAX * 4).astype(np.int64)
        bits = 4 - bits if increasing else bits
        masks = [((1 << int(b)) - 1) << (8 - int(b)) for b in bits]
        return images & torch.as_tensor(masks, dtype=torch.uint8, device=images.device).view(-1, 1, 1, 1)

    def solarize(images, levels, signs):
        thresholds = np.minimum(256, (levels / RAND_LEVEL_MAX * 256).astype(np.int64))
        thresholds = 256 - thresholds if increasing else thresholds
        return torch.where(images >= _per_sample(thresholds, images), 255 - images, images)

    def solarize_add(images, levels, signs):
        added = _per_sample(np.minimum(128, (levels / RAND_LEVEL_MAX * 110).astype(np.int64)), images)
        return torch.where(images < 128, (images + added).clamp_(max=255).to(torch.uint8), images)

    return {
        "AutoContrast": lambda images, levels, signs: F.autocontrast(images),
        "Equalize": lambda images, levels, signs: F.equalize(images),
        "Invert": lambda images, levels, signs: F.invert(images),
        "Posterize": posterize,
        "Solarize": solarize,
        "SolarizeAdd": solarize_add,
        "Color": enhance(lambda images: F.rgb_to_grayscale(images)),
        "Contrast": enhance(contrast_degenerate),
        "Brightness": enhance(torch.zeros_like),
        # adjust_sharpness with factor 0 is its degenerate: the 3x3-smoothed interior, the border kept.
        "Sharpness": enhance(lambda images: F.adjust_sharpness(images, 0.0)),
    }


def _rand_geometry_operations():
    """The affine operations, signed levels: one inverse matrix per sample, then one batched resampling."""
    def affine(matrix_of):
        def op(images, levels, signs):
            height, width = images.shape[-2:]
            return _affine_batch(images, [matrix_of(level * sign, width, height) for level, sign in zip(levels, signs)])
        return op

    def rotate(level, width, height):
        return _inverse_affine([0.0, 0.0], level / RAND_LEVEL_MAX * 30.0, [0.0, 0.0], [0.0, 0.0])

    def shear(axis):  # about the top-left corner, as PIL's transform in timm
        def matrix(level, width, height):
            degrees = math.degrees(math.atan(level / RAND_LEVEL_MAX * 0.3))
            return _inverse_affine([-width * 0.5, -height * 0.5], 0.0, [0.0, 0.0],
                                   [degrees, 0.0] if axis == 0 else [0.0, degrees])
        return matrix

    def translate(axis):
        def matrix(level, width, height):
            pixels = float(round(level / RAND_LEVEL_MAX * 0.45 * (width if axis == 0 else height)))
            return _inverse_affine([0.0, 0.0], 0.0, [pixels, 0.0] if axis == 0 else [0.0, pixels], [0.0, 0.0])
        return matrix

    return {"Rotate": affine(rotate), "ShearX": affine(shear(0)), "ShearY": affine(shear(1)),
            "TranslateXRel": affine(translate(0)), "TranslateYRel": affine(translate(1))}


def _inverse_affine(center, angle, translate, shear):
    """torchvision's inverse affine matrix (output pixel -> input pixel, centre-based coordinates), scale 1."""
    from torchvision.transforms.functional import _get_inverse_affine_matrix
    return _get_inverse_affine_matrix(center, angle, translate, 1.0, shear)


def _affine_batch(images, matrices):
    """torchvision's affine_image (bilinear, AUTO_AUGMENT_FILL) with one inverse matrix per sample."""
    import torch
    count, channels, height, width = images.shape
    device = images.device
    theta = torch.tensor(matrices, dtype=torch.float32, device=device).view(count, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=device)  # as torchvision's _affine_grid
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height,
                                      device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * width, 0.5 * height], device=device)
    grid = base.view(1, height * width, 3).expand(count, -1, -1).bmm(theta.transpose(1, 2) / scale)
    # A ones channel marks the covered area; the uncovered rest takes the fill colour.
    work = torch.cat((images.float(), torch.ones(count, 1, height, width, device=device)), dim=1)
    work = torch.nn.functional.grid_sample(work, grid.view(count, height, width, 2), mode="bilinear",
                                           padding_mode="zeros", align_corners=False)
    pixels, mask = work[:, :channels], work[:, channels:]
    fill = torch.tensor(AUTO_AUGMENT_FILL, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return pixels.sub_(fill).mul_(mask).add_(fill).round_().to(torch.uint8)


class AutoAugmenter:
    """Applies an AutoAugmentPolicy to uint8 NHWC batches in place: RandAugment grouped by operation (one call
    per operation and layer for all the samples that drew it; the same pixels as sample by sample), the
    torchvision policies sample by sample."""

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
        rngs = [np.random.default_rng([*stream, first + i, _AUGMENT_STREAM]) for i in range(pixels.shape[0])]
        images = pixels.permute(0, 3, 1, 2)  # NCHW view of the same memory
        if self.policy.kind == "rand":
            self.rand_in_place(images, rngs, grouped=True)
            return
        for i, rng in enumerate(rngs):  # torchvision's policies draw from torch's generator: seed a forked one
            with self._torch.random.fork_rng(devices=[]):
                self._torch.manual_seed(int(rng.integers(2**63)))
                images[i] = self._transform(images[i])

    def _draws(self, rng):
        """One sample's RandAugment draws, per layer: (operation, applied, level 0-10, sign)."""
        policy = self.policy
        operations = rng.integers(len(self._operations), size=policy.layers)  # with replacement, as timm
        draws = []
        for operation in operations:
            applied = policy.prob >= 1.0 or rng.random() <= policy.prob
            level = policy.magnitude
            if policy.magnitude_std > 100:  # timm: uniform in [0, m]
                level = rng.uniform(0, level)
            elif policy.magnitude_std > 0:
                level = rng.normal(level, policy.magnitude_std)
            sign = -1.0 if rng.random() > 0.5 else 1.0
            draws.append((int(operation), applied, min(max(level, 0.0), RAND_LEVEL_MAX), sign))
        return draws

    def rand_in_place(self, images, rngs, grouped):
        """RandAugment on uint8 NCHW `images` (one numpy Generator per sample), in place: grouped by operation
        over the batch, or sample by sample."""
        parts = [slice(None)] if grouped else [slice(i, i + 1) for i in range(images.shape[0])]
        for part in parts:
            images[part] = self._rand(images[part], rngs[part])

    def _rand(self, images, rngs):
        torch = self._torch
        draws = np.array([self._draws(rng) for rng in rngs], dtype=np.float64).reshape(len(rngs), -1, 4)
        images = images.contiguous()
        for layer in range(draws.shape[1]):
            operation, applied, levels, signs = draws[:, layer].T
            for index in np.unique(operation[applied > 0]).astype(int):
                chosen = np.flatnonzero((operation == index) & (applied > 0))
                rows = torch.as_tensor(chosen, device=images.device)
                images[rows] = self._operations[index](images[rows], levels[chosen], signs[chosen])
        return images


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
