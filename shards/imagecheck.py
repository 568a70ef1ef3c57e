"""Classifies one image file as ok / fixed / skipped, and re-encodes the ones that need it.

The check must catch truncated and corrupt files, and a header check does not (a truncated JPEG has a good
header). A full decode does, but most of its time goes into the inverse DCT, chroma upsampling and colour
conversion. libjpeg-turbo can instead decode at 1/8 scale and only the luma plane (PIL `Image.draft("L", size/8)`):
it still reads and Huffman-decodes every entropy-coded byte of every component (the entropy decoder must, to find
where each block ends), so it fails exactly where a full decode fails, but computes one value per 8x8 luma block.
On the shared ImageNet photographs it agreed with a full decode on all of 4,000 truncations (eight cut points per
file) and 2,000 random corruptions, and runs faster (benchmarks/make_shards.py measures it; BENCHMARKS.md).

Before anything is decoded, a JPEG's marker segments are read (jpeg_header): a file whose data is too short for the
size its header claims is skipped there (too_short), as it would otherwise decode as flat grey at that size. The
same header checks, and the pixel limit (MAX_PIXELS), guard every other reader (decode_problem), and every tool
scales samples of more than 8 bits the same way (to_rgb).
"""
import contextlib
import io
import math
from collections import namedtuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated file must raise, not decode to a grey bottom half. That is Pillow's default, but the flag is global
# to the process and some libraries turn it on, so it is set explicitly.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# MPO (camera multi-picture files) starts with an ordinary baseline JPEG that every decoder reads.
JPEG_FORMATS = ("JPEG", "MPO")
JPEG_NAME_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker and the first byte of the next marker
STANDARD_JPEG_MODES = ("RGB", "L")  # what DALI, nvJPEG and Pillow decode to RGB without surprises

# The most pixels (width x height) an image may have for any tool here to decode it: Pillow's decompression-bomb
# threshold as Pillow ships it (Image.MAX_IMAGE_PIXELS = 1024**3 // 4 // 3, about 9459 x 9459, 268 MB as RGB).
# Written out rather than read from Pillow when used, because Pillow's setting is global to the process and other
# code switches it off (this module does too, while it checks and downscales).
# - make_shards stores a larger image downscaled to fit it (target_side), so no shard it writes holds one. The
#   DALI backends decode only shards make_shards checked, each pinned by its sha256 in the manifest, so this
#   guarantee covers them: they need no check of their own.
# - Every other reader of image files or shard members (the torch backend, predict.py, validate.py on an image
#   folder, attention_maps.py, all through pipeline/jpeg_decode.py) refuses a larger image from its header,
#   before any pixel buffer is allocated (decode_problem).
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

# Start-of-frame markers (SOF0-SOF15 without DHT, JPG and DAC); the byte after their length is the sample precision.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Huffman-coded frames: baseline, extended, progressive, lossless (SOF0-3) and their hierarchical forms (SOF5-7).
# The others (SOF9-11, SOF13-15) are arithmetic-coded.
_HUFFMAN_SOF_MARKERS = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7])
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length field
_SOS, _EOI = 0xDA, 0xD9

# What the marker walk finds up to the first scan of a JPEG. marker: the start-of-frame marker (0xC0 = baseline);
# components: (id, horizontal, vertical sampling factor) of each frame component; scan_components: the ids the
# first scan codes and scan_start its first spectral coefficient (0: a DC or sequential scan); data_start: the
# offset where the first scan's entropy-coded data begins. The scan fields are None when the headers end before it.
JpegHeader = namedtuple("JpegHeader", "marker precision width height components scan_components scan_start "
                                      "data_start")

# status: "ok" (stored byte for byte), "fixed" (decodable but nonstandard: converted to RGB JPEG) or "skipped"
# (undecodable); reason says why for fixed and skipped; width/height are the source size in pixels (0 if unknown).
Check = namedtuple("Check", "status reason width height")
CHECK_STATUSES = ("ok", "fixed", "skipped")  # CheckTable's status codes, in this order


class CheckTable:
    """The Checks of a split, one per source, in flat arrays (a status code and the size in pixels) with the reasons
    of the few that are fixed or skipped beside them: as a list of Check tuples every file cost about 100 bytes of
    make_shards' main process for the whole run, here 17. `table[i]` makes the Check, `table[i] = check` stores
    one; unset entries read as skipped with no reason."""

    def __init__(self, count):
        self.status = np.full(count, CHECK_STATUSES.index("skipped"), np.int8)
        self.width = np.zeros(count, np.int64)
        self.height = np.zeros(count, np.int64)
        self._reasons = {}  # index -> reason, for fixed and skipped ones

    def __len__(self):
        return len(self.status)

    def __setitem__(self, i, check):
        self.status[i] = CHECK_STATUSES.index(check.status)
        self.width[i], self.height[i] = check.width, check.height
        if check.reason:
            self._reasons[i] = check.reason
        else:
            self._reasons.pop(i, None)

    def __getitem__(self, i):
        return Check(CHECK_STATUSES[self.status[i]], self._reasons.get(i, ""), int(self.width[i]),
                     int(self.height[i]))


def check_file(path):
    """Reads and checks one file; never raises for a bad file, the reason is in the result."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return Check("skipped", f"cannot read file: {exc.strerror or exc}", 0, 0)
    return check_bytes(data, path)


def pixel_limit():
    """MAX_PIXELS: images above it are stored downscaled, so that no reader ever meets one."""
    return MAX_PIXELS


@contextlib.contextmanager
def without_pixel_limit():
    """Opens images of any size here: a JPEG is checked and downscaled in the DCT domain (draft), so a valid
    20000x10000 photograph costs a 1/8-scale decode, not 600 MB; the limit itself (yielded) decides what gets
    downscaled."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield MAX_PIXELS
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


def jpeg_header(data):
    """The JpegHeader of the JPEG in `data`, or None when no frame header comes before the first scan. Reads the
    marker segments only, not the entropy-coded data."""
    frame, i = None, 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them to the next marker (and warns)
            i = data.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker == _EOI:
            break
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:end]
        if marker in _SOF_MARKERS and frame is None:
            count = segment[5] if len(segment) > 5 else 0
            components = tuple((segment[k], segment[k + 1] >> 4, segment[k + 1] & 0x0F)
                               for k in range(6, min(6 + 3 * count, len(segment) - 1), 3))
            frame = JpegHeader(marker, segment[0] if segment else None, int.from_bytes(segment[3:5], "big"),
                               int.from_bytes(segment[1:3], "big"), components, None, None, None)
        elif marker == _SOS:
            if frame is None:
                return None
            count = segment[0] if segment else 0
            ids = tuple(segment[k] for k in range(1, min(1 + 2 * count, len(segment)), 2))
            start = segment[1 + 2 * count] if len(segment) > 1 + 2 * count else None
            return frame._replace(scan_components=ids, scan_start=start, data_start=end)
        i = end
    return frame


def first_scan_blocks(header):
    """How many 8x8 blocks the first scan of a Huffman-coded JPEG codes, each with at least one Huffman code of at
    least one bit (its DC difference; a sequential scan adds an AC code), or 0 when that gives no bound."""
    sampling = {cid: (h, v) for cid, h, v in header.components}
    scan = [sampling[cid] for cid in header.scan_components or () if cid in sampling]
    # A first scan of AC coefficients (an invalid progression libjpeg only warns about) can code a run of empty
    # blocks with one end-of-band-run code: no bound. A lossless frame has its predictor in that field and is left
    # unbounded too (it codes every sample, so a bound exists; such files are too rare to need one). Nor is there
    # one without a height (0: set later by a DNL marker).
    if not scan or header.scan_start != 0 or not header.width or not header.height:
        return 0
    h_max = max(h for h, _ in sampling.values()) or 1
    v_max = max(v for _, v in sampling.values()) or 1
    if len(scan) == 1:  # a non-interleaved scan codes the blocks of one component's (maybe subsampled) plane
        h, v = scan[0]
        return (math.ceil(math.ceil(header.width * h / h_max) / 8)
                * math.ceil(math.ceil(header.height * v / v_max) / 8))
    mcus = math.ceil(header.width / (8 * h_max)) * math.ceil(header.height / (8 * v_max))
    return mcus * sum(h * v for h, v in scan)


def _coded_end(data, start):
    """The offset of the end-of-image marker after `start`, or len(data) without one. Entropy-coded data holds no
    0xFF 0xD9 (a 0xFF there is followed by 0x00 or a restart marker), but a marker segment between two scans (a
    comment, say) may, so the walk steps over segments by their length."""
    i = start
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            return len(data)
        marker = data[i + 1]
        if marker == _EOI:
            return i
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x00 or marker in _STANDALONE_MARKERS:  # a stuffed 0xFF data byte, a restart marker
            i += 2
        else:  # DHT, SOS, DRI, COM, ... between scans
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")


def too_short(data, header):
    """Why the JPEG in `data` (its JpegHeader) cannot hold the image its header describes, or None.

    libjpeg does not fail on data that ends early at a marker: it warns (JWRN_HIT_MARKER, "premature end of data
    segment"), which Pillow ignores, and decodes the rest as flat grey, at the full size the header claims. So a
    700-byte file claiming 65000x65000 pixels would decode, after allocating gigabytes. A Huffman-coded scan spends
    at least one bit on every block it codes (first_scan_blocks), so data shorter than that cannot hold the
    image, whatever else it holds. Arithmetic-coded frames have no such bound (the coder can spend far less than
    a bit on a run of empty blocks, so a tiny valid file can describe a huge flat image): they are not judged
    here; MAX_PIXELS still bounds what decoding one costs, and make_shards does not downscale one over it (see
    check_bytes)."""
    if header.marker not in _HUFFMAN_SOF_MARKERS or header.data_start is None:
        return None
    start = header.data_start
    needed = math.ceil(first_scan_blocks(header) / 8)
    # No 0xFF 0xD9 at all in the first `needed` bytes of data, so none of them ends it: a cheap test (the search
    # stops there) that every sound file passes; only a file that fails it is walked marker by marker.
    if len(data) - start >= needed and data.find(b"\xff\xd9", start, start + needed + 1) < 0:
        return None
    held = _coded_end(data, start) - start
    if held >= needed:
        return None
    return (f"JPEG data too short for the size its header claims: {header.width}x{header.height} needs at least "
            f"{needed:,} bytes of coded data (a bit per 8x8 block), the file holds {held:,} (truncated or corrupt)")


def over_pixel_limit(width, height, what="image"):
    """Why a width x height image must not be decoded (over MAX_PIXELS), or None."""
    if width * height <= MAX_PIXELS:
        return None
    return (f"{width}x{height} {what} ({width * height / 1e6:.0f} MP) is over the pixel limit of {MAX_PIXELS:,} "
            f"pixels (Pillow's decompression-bomb threshold): not decoded")


def decode_problem(data, size=None):
    """Why the image in `data` must not be decoded, or None: over the pixel limit, or (a Huffman-coded JPEG) data
    too short for the size its header claims. Judged from headers alone, before any pixel buffer exists; `size`
    is (width, height) as another reader of the header found it (Pillow's, libjpeg's), checked as well."""
    if data[:3] == JPEG_MAGIC:
        header = jpeg_header(data)
        if header is not None:
            problem = over_pixel_limit(header.width, header.height, "JPEG") or too_short(data, header)
            if problem:
                return problem
    return over_pixel_limit(*size) if size else None


def check_bytes(data, name):
    if not data:
        return Check("skipped", "empty file", 0, 0)
    if data.startswith(JPEG_MAGIC):
        header = jpeg_header(data)
        if header is not None and header.precision not in (None, 8):
            return Check("skipped", f"{header.precision}-bit JPEG not supported: Pillow, DALI and the torch backend "
                                    "decode 8-bit JPEGs only", 0, 0)
        if header is not None:
            short = too_short(data, header)
            if short:
                return Check("skipped", short, header.width, header.height)
            if header.marker not in _HUFFMAN_SOF_MARKERS and header.width * header.height > MAX_PIXELS:
                # Its length cannot show that the data holds the image (too_short), and downscaling it decodes it
                # at up to half its size: a bogus header would cost gigabytes.
                return Check("skipped", f"arithmetic-coded {header.width}x{header.height} JPEG over the pixel limit "
                                        f"of {MAX_PIXELS:,} pixels: not decoded to downscale it, as its data "
                                        f"cannot be shown to hold the image", header.width, header.height)
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


# Grayscale modes with more than 8 bits per sample: 16-bit unsigned, 32-bit signed integer, 32-bit float.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
HIGH_DEPTH_MODES = (*_SIXTEEN_BIT_MODES, "I", "F")
_SAMPLE_KINDS = {"I": "32-bit integer", "F": "32-bit float"}  # the others are 16-bit


def to_rgb(image):
    """`image` as 8-bit RGB: how every tool here turns a file's pixels into RGB (make_shards' re-encode, and
    through pipeline/jpeg_decode.py the torch backend, predict.py, validate.py and attention_maps.py).

    Pillow's convert("RGB") clips each sample to 0..255, so a 16-bit image comes out white and a float one in
    0..1 black. Samples of more than 8 bits are scaled instead:
    - 16-bit grayscale (modes I;16, I;16L, I;16B, I;16N: 16-bit PNG, TIFF): times 255/65535, so 65535 is white.
    - 32-bit integer grayscale (mode I: 32-bit TIFF; 16-bit PGM/PPM, and 16-bit PNG in older Pillow, use it
      as a 16-bit container): values all within 0..65535 are scaled as 16-bit ones; any other range is
      stretched from its own minimum (black) to its maximum (white).
    - 32-bit float grayscale (mode F): values all within 0..1 (the usual range of float images) times 255;
      within 0..255 as they are; any other range stretched from its minimum to its maximum. NaN and
      infinities become 0 (black).
    - 16-bit RGB and RGBA PNGs and TIFFs need nothing here: Pillow opens them as 8-bit RGB / RGBA (keeping the
      high byte of each sample), as it does 16-bit grayscale with alpha (RGBA).
    Every other mode converts as torchvision's pil_loader does (convert("RGB"): alpha dropped, palette expanded,
    CMYK converted)."""
    if image.mode in HIGH_DEPTH_MODES:
        image = Image.fromarray(_eight_bit_samples(image))
    return image if image.mode == "RGB" else image.convert("RGB")


def _eight_bit_samples(image):
    """The grayscale `image` of a HIGH_DEPTH_MODES mode as a uint8 array, scaled as to_rgb says."""
    pixels = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        pixels[~np.isfinite(pixels)] = 0
    low, high = float(pixels.min()), float(pixels.max())
    if image.mode == "F" and low >= 0 and high <= 1:
        scale, offset = 255.0, 0.0
    elif image.mode == "F" and low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    elif image.mode != "F" and low >= 0 and high <= 65535:
        scale, offset = 255 / 65535, 0.0
    else:
        scale, offset = (255 / (high - low) if high > low else 0.0), low
    return np.clip(np.rint((pixels - offset) * scale), 0, 255).astype(np.uint8)


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
    if image.mode in HIGH_DEPTH_MODES:
        what += f" of {_SAMPLE_KINDS.get(image.mode, '16-bit')} samples (scaled to 8 bits)"
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
    so a model sees what it would have seen reading the source folder, except that samples of more than 8 bits
    are scaled to 8 rather than clipped (to_rgb). Images over the pixel limit are downscaled to fit it
    (target_side)."""
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
            image = to_rgb(image)
        if side and not is_jpeg:
            image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
