"""JPEG bytes -> augmented uint8 RGB arrays (HWC) for the `torch` backend: only the crop window is decoded.

The window comes from the shared policy (pipeline/augment.py). RoiWindows decodes just that window with the
native libjpeg-turbo ROI decoder (pipeline/roi_jpeg.py), downscaled in the DCT domain whenever the crop allows;
PillowWindows decodes the whole image with Pillow(-SIMD) where that library is not built. Both resize the window
with one antialiased bilinear Pillow call, so their outputs agree within one grey level (tests/test_jpeg_decode.py).

Both refuse, from the headers and before allocating anything, an image over the pixel limit or a JPEG whose data
is too short for the size its header claims (shards/imagecheck.py decode_problem: MAX_PIXELS says why the limit is
what it is); samples of more than 8 bits are scaled to 8, not clipped (imagecheck.to_rgb).
"""
import io
import math
import warnings

import numpy as np
from PIL import Image

from shards.imagecheck import MAX_PIXELS, decode_problem, over_pixel_limit, to_rgb

from . import augment, roi_jpeg

# What a damaged, foreign or oversized image raises while it is decoded; the reader turns it into a ShardError (or
# predict.py into a line) naming it.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_train(jpeg, image_size, rng, windows=None):
    """JPEG bytes -> RandomResizedCrop'd, maybe flipped, image_size x image_size RGB uint8 array (HWC)."""
    windows = windows or window_decoder()
    handle, (width, height) = windows.open(jpeg)
    left, top, crop_w, crop_h = augment.random_resized_crop_box(width, height, rng)
    box = (left, top, left + crop_w, top + crop_h)
    flip = rng.random() < augment.FLIP_PROBABILITY
    return windows.resize(handle, (width, height), box, image_size, allow_draft=True, flip=flip)


def decode_val(jpeg, image_size, windows=None):
    """JPEG bytes -> shorter side resized to image_size/0.875, centre image_size crop, RGB uint8 array (HWC).

    Full resolution, no DCT-domain downscale: val is the yardstick, so it matches the DALI backends pixel for
    pixel (within resampler rounding) rather than trading exactness for speed."""
    windows = windows or window_decoder()
    handle, (width, height) = windows.open(jpeg)
    box = augment.val_crop_box(width, height, image_size)
    return windows.resize(handle, (width, height), box, image_size, allow_draft=False)


def window_decoder():
    """The fastest window decoder this machine has: RoiWindows when the native library is built, else
    PillowWindows (same output within one grey level, see tests)."""
    return RoiWindows() if roi_jpeg.available()[0] else PillowWindows()


class PillowWindows:
    """Decodes the whole image with Pillow (DCT-downscaled with Image.draft where the window allows), then crops
    and resizes the window in one Pillow call."""

    def open(self, jpeg):
        """(image, (width, height)) with nothing decoded yet; ValueError for an image decode_problem refuses."""
        refuse(decode_problem(jpeg))
        try:
            with warnings.catch_warnings():
                # Pillow warns about an image between its threshold and twice it: refused just below instead.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(jpeg))
        except Image.DecompressionBombError as exc:  # over twice its threshold Pillow refuses before we see the size
            raise ValueError(f"image over the pixel limit of {MAX_PIXELS:,} pixels (Pillow refuses it: {exc})") \
                from None
        refuse(over_pixel_limit(*image.size))  # other formats: the size from Pillow's reading of their header
        return image, image.size

    def resize(self, image, size, box, image_size, allow_draft=True, flip=False):
        width, height = size
        factor = augment.draft_factor(box[2] - box[0], box[3] - box[1], image_size) if allow_draft else 1
        if factor > 1 and image.format == "JPEG":
            # Requesting (W//f, H//f) makes Pillow pick the DCT scale 1/f exactly; the result is ceil(W/f) wide.
            image.draft("RGB", (width // factor, height // factor))
            scale_x, scale_y = image.size[0] / width, image.size[1] / height
            box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        if image.mode != "RGB":
            image = to_rgb(image)
        return _resize(image, box, image_size, flip)


class RoiWindows:
    """Decodes only the window (plus the resampler's margin) with the native libjpeg-turbo ROI decoder
    (pipeline/roi_jpeg.py), DCT-downscaled like Image.draft where the window allows, then resizes it with
    Pillow exactly as PillowWindows does. Faster than decoding the whole image (BENCHMARKS.md, torch backend)."""

    def __init__(self):
        self.decoder = roi_jpeg.RoiDecoder()
        self.pillow = PillowWindows()

    def open(self, jpeg):
        """(handle, (width, height)); the handle says who decodes: this decoder, or Pillow for data that is not
        a JPEG at all (Pillow reads it or raises a clear error)."""
        if not roi_jpeg.is_jpeg(jpeg):
            image, size = self.pillow.open(jpeg)
            return (self.pillow, image), size
        size = self.decoder.size(jpeg)
        refuse(over_pixel_limit(*size, "JPEG"))  # libjpeg's reading of the header; decode() checks the rest
        return (self, jpeg), size

    def resize(self, handle, size, box, image_size, allow_draft=True, flip=False):
        owner, jpeg = handle
        if owner is self.pillow:
            return self.pillow.resize(jpeg, size, box, image_size, allow_draft, flip)
        width, height = size
        factor = augment.draft_factor(box[2] - box[0], box[3] - box[1], image_size) if allow_draft else 1
        scaled_w, scaled_h = roi_jpeg.scaled_size(width, height, factor)
        scale_x, scale_y = scaled_w / width, scaled_h / height
        scaled_box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        # Pillow's resampler reads up to its filter support (1 px, times the downscale) beyond the box; decoding
        # that margin too keeps the result identical to resizing the box out of the whole image.
        support = max(1.0, (scaled_box[2] - scaled_box[0]) / image_size, (scaled_box[3] - scaled_box[1]) / image_size)
        try:
            pixels, window_box = self.decoder.decode(jpeg, scaled_box, factor, margin=math.ceil(support) + 1)
        except roi_jpeg.UnsupportedJpeg:  # CMYK/YCCK (make_shards converts them; other shards may not): Pillow
            image, _ = self.pillow.open(jpeg)
            return self.pillow.resize(image, size, box, image_size, allow_draft, flip)
        image = Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGB", 0, 1)
        return _resize(image, window_box, image_size, flip)


def refuse(problem):
    """ValueError(problem) when there is one (a reason from shards/imagecheck.py not to decode an image)."""
    if problem:
        raise ValueError(problem)


def _resize(image, box, image_size, flip):
    # One Pillow call crops and resamples (antialiased bilinear, like torchvision's RandomResizedCrop on PIL).
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    if flip:
        # Mirror the small output in Pillow: copying a reversed numpy view (HWC, negative stride) into the batch
        # instead costs about ten times as much (profile in BENCHMARKS.md).
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image)


