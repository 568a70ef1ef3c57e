"""Classifies one image file as ok / fixed / skipped, and re-encodes the ones that need it.

The check must catch truncated and corrupt files, and a header check does not (a truncated JPEG has a good
header). A full decode does, but most of its time goes into the inverse DCT, chroma upsampling and colour
conversion. libjpeg-turbo can instead decode at 1/8 scale and only the luma plane (PIL `Image.draft("L", size/8)`):
it still reads and Huffman-decodes every entropy-coded byte of every component (the entropy decoder must, to find
where each block ends), so it fails exactly where a full decode fails, but computes one value per 8x8 luma block.
On the shared ImageNet photographs it agreed with a full decode on all of 4,000 truncations (eight cut points per
file) and 2,000 random corruptions, and runs about 1.6x faster (benchmarks/shards.py measures it).
"""
import io
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


def check_bytes(data, name):
    if not data:
        return Check("skipped", "empty file", 0, 0)
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
    so a model sees what it would have seen reading the source folder."""
    image = Image.open(io.BytesIO(data))
    if image.format not in JPEG_FORMATS or image.mode not in STANDARD_JPEG_MODES:
        image = image.convert("RGB")
    if max_side and max(image.size) > max_side:
        # thumbnail() keeps the aspect ratio and, for JPEG, first shrinks in the DCT domain (draft) when that stays
        # at least 2x the target (reducing_gap), then resamples with Lanczos.
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
