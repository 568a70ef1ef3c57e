"""Classifies one image file as ok / fixed / skipped, and re-encodes the ones that need it.

The check must catch truncated and corrupt files, and a header check does not (a truncated JPEG has a good
header). A full decode does, but most of its time goes into the inverse DCT, chroma upsampling and colour
conversion. libjpeg-turbo can instead decode at 1/8 scale and only the luma plane (PIL `Image.draft("L", size/8)`):
it still reads and Huffman-decodes every entropy-coded byte of every component (the entropy decoder must, to find
where each block ends), so it fails exactly where a full decode fails, but computes one value per 8x8 luma block.
On the shared ImageNet photographs it agreed with a full decode on all of 4,000 truncations (eight cut points per
file) and 2,000 random corruptions, and runs faster (benchmarks/make_shards.py measures it; BENCHMARKS.md).
"""
import contextlib
import io
import math
from collections import namedtuple

from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated file must raise, not decode to a grey bottom half. That is Pillow's default, but the flag is global
# to the process and some libraries turn it on, so it is set explicitly.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# MPO (camera multi-picture files) starts with an ordinary baseline JPEG that every decoder reads.
JPEG_FORMATS = ("JPEG", "MPO")
JPEG_NAME_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker and the first byte of the next marker
STANDARD_JPEG_MODES = ("RGB", "L")  # what DALI, nvJPEG and Pillow decode to RGB without surprises

# Start-of-frame markers (SOF0-SOF15 without DHT, JPG and DAC); the byte after their length is the sample precision.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length field

# status: "ok" (stored byte for byte), "fixed" (decodable but nonstandard: converted to RGB JPEG) or "skipped"
# (undecodable); reason says why for fixed and skipped; width/height are the source size in pixels (0 if unknown).
Check = namedtuple("Check", "status reason width height")


def check_file(path):
    """Reads and checks one file; never raises for a bad file, the reason is in the result."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return Check("skipped", f"cannot read file: {exc.strerror or exc}", 0, 0)
    return check_bytes(data, path)


def pixel_limit():
    """Pillow's decompression-bomb threshold in pixels as configured (it warns above it and refuses twice it), or
    None when switched off. Images above it are stored downscaled, so that no reader ever meets one."""
    return Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def without_pixel_limit():
    """Opens images of any size here: a JPEG is checked and downscaled in the DCT domain (draft), so a valid
    20000x10000 photograph costs a 1/8-scale decode, not 600 MB; the limit itself decides what gets downscaled."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield saved
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def target_side(width, height, max_side=None, limit=None):
    """The longer side to downscale to, or None when the image fits both --max-side and the pixel limit (default:
    pixel_limit())."""
    limit, longer = limit or pixel_limit(), max(width, height)
    sides = []
    if max_side and longer > max_side:
        sides.append(max_side)
    if limit and width * height > limit:
        side, shorter = math.floor(longer * math.sqrt(limit / (width * height))), min(width, height)
        while side > 1 and side * math.ceil(side * shorter / longer) > limit:  # the short side is rounded up
            side -= 1
        sides.append(max(1, side))
    return min(sides) if sides else None


def jpeg_precision(data):
    """The sample precision in bits from a JPEG's start-of-frame header, or None if none is found."""
    i = 2
    while i + 4 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE_MARKERS:
            i += 2
        elif marker in _SOF_MARKERS:
            return data[i + 4]
        elif marker == 0xDA:  # start of scan before any frame header
            return None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def check_bytes(data, name):
    if not data:
        return Check("skipped", "empty file", 0, 0)
    if data.startswith(JPEG_MAGIC):
        precision = jpeg_precision(data)
        if precision not in (None, 8):
            return Check("skipped", f"{precision}-bit JPEG not supported: Pillow, DALI and the torch backend decode "
                                    "8-bit JPEGs only", 0, 0)
    with without_pixel_limit() as limit:
        return _check_image(data, name, limit)


def _check_image(data, name, limit):
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data.startswith(JPEG_MAGIC):
            return Check("skipped", "unreadable JPEG header (truncated or corrupt)", 0, 0)
        return Check("skipped", "not an image (no format Pillow can read)", 0, 0)
    except Exception as exc:  # Pillow's format parsers raise many types for a damaged header; all mean unreadable
        return Check("skipped", _failure("image header", exc), 0, 0)
    width, height = image.size
    problem = nonstandard_reason(image, name)  # before draft(), which may change the mode
    if limit and width * height > limit:
        megapixels = f"{width}x{height} ({width * height / 1e6:.0f} MP)"
        if image.format not in JPEG_FORMATS and width * height > 2 * limit:
            return Check("skipped", f"{megapixels} {image.format} image is over twice Pillow's decompression-bomb "
                                    f"limit of {limit / 1e6:.0f} MP; only JPEGs are decoded downscaled", width, height)
        oversize = f"{megapixels} is over Pillow's decompression-bomb limit of {limit / 1e6:.0f} MP: downscaled"
        problem = f"{problem}; {oversize}" if problem else oversize
    try:
        if image.format in JPEG_FORMATS:
            # 1/8-scale luma-only decode: all entropy-coded data is still decoded (see the module docstring).
            # draft() leaves CMYK and grayscale JPEGs in their own mode.
            image.draft("L", (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Exception as exc:  # any decoder failure (OSError, SyntaxError, ValueError, ...) means undecodable
        return Check("skipped", _failure(image.format, exc), width, height)
    if problem:
        return Check("fixed", problem, width, height)
    return Check("ok", "", width, height)


def _failure(what, exc):
    message = str(exc) or type(exc).__name__
    if "truncated" in message.lower():
        return f"truncated {what}: {message}"
    return f"undecodable {what}: {type(exc).__name__}: {message}"


def has_alpha(image):
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def nonstandard_reason(image, name):
    """Why `image` cannot be stored as it is (None when it is a plain RGB or grayscale JPEG)."""
    if image.format in JPEG_FORMATS:
        if image.mode in STANDARD_JPEG_MODES:
            return None
        if image.mode == "CMYK":
            # Pillow opens Adobe YCCK JPEGs as CMYK; the Adobe marker's transform flag tells them apart.
            kind = "YCCK" if image.info.get("adobe_transform") == 2 else "CMYK"
            return f"{kind} JPEG converted to RGB"
        return f"JPEG in mode {image.mode} converted to RGB"
    what = f"{image.format} image"
    if has_alpha(image):
        what += f" with alpha channel ({image.mode})"
    if str(name).lower().endswith(JPEG_NAME_SUFFIXES):
        what += " under a JPEG name"
    suffix = ", alpha dropped" if has_alpha(image) else ""
    return f"{what} converted to RGB JPEG{suffix}"


def encode_jpeg(data, quality, max_side=None):
    """Decodes `data` and re-encodes it as a standard JPEG at `quality`, downscaled so that its longer side is at
    most `max_side` pixels when given.

    Nonstandard images become RGB like torchvision's `pil_loader` (`convert("RGB")`, alpha dropped, first frame),
    so a model sees what it would have seen reading the source folder. Images over Pillow's pixel limit are
    downscaled to fit it (target_side)."""
    with without_pixel_limit() as limit:
        image = Image.open(io.BytesIO(data))
        side = target_side(*image.size, max_side, limit)
        is_jpeg = image.format in JPEG_FORMATS
        # thumbnail() keeps the aspect ratio and, for JPEG, first shrinks in the DCT domain (draft) when that stays
        # at least 2x the target (reducing_gap), then resamples with Lanczos. A JPEG is shrunk before any colour
        # conversion, so a huge one is never decoded at full size; other formats convert first (a palette image
        # would otherwise be resized with nearest neighbour).
        if side and is_jpeg:
            image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        if not is_jpeg or image.mode not in STANDARD_JPEG_MODES:
            image = image.convert("RGB")
        if side and not is_jpeg:
            image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
