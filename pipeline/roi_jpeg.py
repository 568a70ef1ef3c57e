"""Python side of the region-of-interest JPEG decoder in native/roi_jpeg.c (see there for what it saves).

tools/setup_env.sh compiles it to native/libroijpeg.so against the system libjpeg-turbo, the one Pillow(-SIMD)
decodes with. Without a compiler or the headers there is no library, and the torch backend decodes with Pillow
alone, only slower: `available()` says which, and `python -m pipeline.info` prints it.

ctypes releases the GIL for the call, and the library holds no global state, so it is safe in any thread or
worker process.

Before any call that decodes, the headers are checked in Python (shards/imagecheck.py decode_problem): libjpeg
allocates for the size a header claims (a progressive JPEG's whole coefficient buffer, in jpeg_start_decompress),
and does not fail on data that ends early, so a tiny file claiming 65000x65000 pixels would cost gigabytes.
"""
import ctypes
import math
import os

import numpy as np

from shards.imagecheck import decode_problem

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "libroijpeg.so")
SCALE_DENOMS = (1, 2, 4, 8)  # the DCT-domain downscales libjpeg-turbo accelerates (the same as Image.draft's)
_MESSAGE_LENGTH = 200  # ROI_MESSAGE_LENGTH in roi_jpeg.c

_JPEG_MAGIC = b"\xff\xd8"  # start-of-image marker
_UNSUPPORTED = -2  # roi_jpeg.c's status for a colour space it leaves to Pillow

_library = None
_load_error = None


class UnsupportedJpeg(ValueError):
    """A valid JPEG this decoder leaves to Pillow (CMYK or YCCK)."""


def is_jpeg(data):
    return data[:2] == _JPEG_MAGIC


def _load():
    global _library, _load_error
    if _library is None and _load_error is None:
        try:
            library = ctypes.CDLL(LIBRARY)
        except OSError as exc:
            _load_error = f"{LIBRARY} not loadable ({exc}); tools/setup_env.sh builds it"
            return None
        uchar_p, int_p = ctypes.POINTER(ctypes.c_ubyte), ctypes.POINTER(ctypes.c_int)
        library.roi_jpeg_size.argtypes = [ctypes.c_char_p, ctypes.c_ulong, int_p, int_p, ctypes.c_char_p]
        library.roi_jpeg_size.restype = ctypes.c_int
        library.roi_jpeg_decode.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_int, ctypes.c_int, uchar_p, ctypes.c_ulong,
                                            int_p, ctypes.c_char_p]
        library.roi_jpeg_decode.restype = ctypes.c_int
        _library = library
    return _library


def available():
    """(True, LIBRARY) when the native decoder is loaded, else (False, why)."""
    return (True, LIBRARY) if _load() is not None else (False, _load_error)


def scaled_size(width, height, scale_denom):
    """The size libjpeg decodes a width x height image to at scale 1/scale_denom (it rounds up)."""
    return -(-width // scale_denom), -(-height // scale_denom)


class RoiDecoder:
    """Decodes windows of JPEGs into a buffer it reuses (one decoder per thread or worker process).

    The returned arrays are views of that buffer, valid until the next decode."""

    def __init__(self):
        self._lib = _load()
        if self._lib is None:
            raise OSError(_load_error)
        self._buffer = np.empty(1 << 20, dtype=np.uint8)
        self._result = (ctypes.c_int * 6)()
        self._message = ctypes.create_string_buffer(_MESSAGE_LENGTH)

    def size(self, jpeg):
        """(width, height) read from the JPEG header; ValueError when the header is unreadable."""
        width, height = ctypes.c_int(), ctypes.c_int()
        if self._lib.roi_jpeg_size(jpeg, len(jpeg), ctypes.byref(width), ctypes.byref(height), self._message):
            raise ValueError(f"unreadable JPEG header: {self._message.value.decode(errors='replace')}")
        return width.value, height.value

    def decode(self, jpeg, box, scale_denom=1, margin=0):
        """Decodes the window around `box` = (left, top, right, bottom), float pixels of the image scaled by
        1/scale_denom, widened by `margin` pixels on every side and clamped to the image.

        Returns (pixels, box_in_pixels): an (h, w, 3) uint8 RGB view of the decoded region and `box` in its
        coordinates. ValueError (with libjpeg's message) when the data is corrupt or cut short, or with
        decode_problem's when the image is over the pixel limit or its data too short for its size."""
        problem = decode_problem(jpeg)
        if problem:
            raise ValueError(problem)
        left = max(0, math.floor(box[0]) - margin)  # the far sides are clamped by the library
        top = max(0, math.floor(box[1]) - margin)
        columns = math.ceil(box[2]) + margin - left
        rows = math.ceil(box[3]) + margin - top
        for _ in range(2):  # a second try only after growing the buffer
            status = self._lib.roi_jpeg_decode(
                jpeg, len(jpeg), scale_denom, left, top, columns, rows,
                self._buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)), self._buffer.size, self._result,
                self._message)
            x, width, _, _, y, height = self._result
            if status != 1:
                break
            self._buffer = np.empty(width * height * 3, dtype=np.uint8)
        if status == _UNSUPPORTED:
            raise UnsupportedJpeg(self._message.value.decode(errors="replace"))
        if status != 0:
            raise ValueError(f"undecodable JPEG: {self._message.value.decode(errors='replace')}")
        pixels = self._buffer[:width * height * 3].reshape(height, width, 3)
        return pixels, (box[0] - x, box[1] - y, box[2] - x, box[3] - y)
