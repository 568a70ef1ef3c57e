"""The native region-of-interest JPEG decoder (pipeline/native/roi_jpeg.c via pipeline/roi_jpeg.py) and the torch
backend's two window decoders built on it: same pixels as Pillow, same failures, every JPEG flavour handled."""
import io
import os

import numpy as np
import pytest
from conftest import imagenet_sample_files
from PIL import Image

from pipeline import augment, roi_jpeg
from pipeline.jpeg_decode import PillowWindows, RoiWindows, decode_train, decode_val

HEADERS = "/usr/include/jpeglib.h"


@pytest.fixture(scope="module")
def decoder():
    built, why = roi_jpeg.available()
    if not built:
        if os.path.exists(HEADERS):  # tools/setup_env.sh must have built it here: a missing library is a bug
            pytest.fail(f"libjpeg headers are installed but the ROI decoder is not built: {why}")
        pytest.skip(f"ROI decoder not built ({why})")
    return roi_jpeg.RoiDecoder()


def jpeg_bytes(image, **save_args):
    out = io.BytesIO()
    image.save(out, "JPEG", **save_args)
    return out.getvalue()


def textured(width, height, seed=0):
    """A photo-like RGB image: smooth gradients plus noise, so every 8x8 block has real AC coefficients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 255, yy / height * 255, 128 + 90 * np.sin(xx / 23) * np.cos(yy / 17)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos():
    return [open(path, "rb").read() for path in imagenet_sample_files()[::10]]


def test_size_reads_the_header(decoder, photos):
    for jpeg in photos:
        assert decoder.size(jpeg) == Image.open(io.BytesIO(jpeg)).size


@pytest.mark.parametrize("scale", roi_jpeg.SCALE_DENOMS)
def test_window_equals_the_same_window_of_a_full_decode(decoder, photos, scale):
    """Every decoded pixel equals Pillow's decode of the whole image (at the same DCT scale), windows anywhere,
    edges included."""
    rng = np.random.default_rng(scale)
    for jpeg in photos:
        full = Image.open(io.BytesIO(jpeg))
        if scale > 1:
            full.draft("RGB", (full.size[0] // scale, full.size[1] // scale))
        full = np.asarray(full.convert("RGB"))
        height, width = full.shape[:2]
        assert roi_jpeg.scaled_size(*Image.open(io.BytesIO(jpeg)).size, scale) == (width, height)
        for _ in range(3):
            left, top = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
            right, bottom = rng.uniform(left + 0.5, width), rng.uniform(top + 0.5, height)
            pixels, box = decoder.decode(jpeg, (left, top, right, bottom), scale, margin=2)
            x0, y0 = round(left - box[0]), round(top - box[1])  # where the decoded region starts
            assert box[2] - box[0] == pytest.approx(right - left)
            assert x0 <= max(0, int(left) - 2) and y0 == max(0, int(top) - 2)  # the margin, clamped
            assert x0 + pixels.shape[1] >= min(width, int(np.ceil(right)) + 2)
            assert y0 + pixels.shape[0] == min(height, int(np.ceil(bottom)) + 2)
            difference = np.abs(full[y0:y0 + pixels.shape[0], x0:x0 + pixels.shape[1]].astype(int) - pixels)
            # Chroma upsampling lacks its neighbour row or column at the region's first and last line where that
            # is not the image edge: a few levels there, which `margin` keeps out of the resize.
            inner = difference[1:-1, 1:-1]
            assert inner.max() == 0, (inner.max(), np.argwhere(inner))


def test_train_and_val_windows_match_pillow_on_real_photographs(photos):
    roi, pillow = RoiWindows(), PillowWindows()
    for i, jpeg in enumerate(photos):
        for seed in range(3):
            a = decode_train(jpeg, 224, np.random.default_rng(seed), roi)
            b = decode_train(jpeg, 224, np.random.default_rng(seed), pillow)
            assert a.shape == b.shape == (224, 224, 3)
            assert np.abs(a.astype(int) - b).max() <= 1, f"photo {i} seed {seed}"
        a, b = decode_val(jpeg, 160, roi), decode_val(jpeg, 160, pillow)
        assert np.abs(a.astype(int) - b).max() <= 1


def test_downscaled_windows_are_used_and_stay_exact(decoder):
    """A large image: most random crops decode at 1/2..1/8 scale, and still match the Pillow path."""
    jpeg = jpeg_bytes(textured(1600, 1200), quality=92)
    roi, pillow, scaled = RoiWindows(), PillowWindows(), 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        _, _, w, h = augment.random_resized_crop_box(1600, 1200, rng)
        scaled += augment.draft_factor(w, h, 64) > 1
        a = decode_train(jpeg, 64, np.random.default_rng(seed), roi)
        b = decode_train(jpeg, 64, np.random.default_rng(seed), pillow)
        assert np.abs(a.astype(int) - b).max() <= 1
    assert scaled >= 6


@pytest.mark.parametrize("kind", ["grayscale", "progressive", "subsampling-444", "odd-size", "cmyk", "png"])
def test_every_flavour_decodes_like_pillow(kind):
    image = textured(301, 203, seed=3)
    if kind == "grayscale":
        data = jpeg_bytes(image.convert("L"))
    elif kind == "progressive":
        data = jpeg_bytes(image, progressive=True)
    elif kind == "subsampling-444":
        data = jpeg_bytes(image, subsampling=0)
    elif kind == "odd-size":
        data = jpeg_bytes(image.crop((0, 0, 97, 61)))
    elif kind == "cmyk":  # not stored by make_shards, but a foreign shard may hold one: Pillow takes it
        data = jpeg_bytes(image.convert("CMYK"))
    else:
        out = io.BytesIO()
        image.save(out, "PNG")
        data = out.getvalue()
    roi, pillow = RoiWindows(), PillowWindows()
    for seed in range(4):
        a = decode_train(data, 48, np.random.default_rng(seed), roi)
        b = decode_train(data, 48, np.random.default_rng(seed), pillow)
        assert a.shape == (48, 48, 3) and np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(decode_val(data, 48, roi).astype(int) - decode_val(data, 48, pillow)).max() <= 1


def test_windows_larger_than_the_buffer_grow_it(decoder):
    jpeg = jpeg_bytes(textured(1100, 1000), quality=90)
    pixels, _ = decoder.decode(jpeg, (0, 0, 1100, 1000))
    assert pixels.shape == (1000, 1100, 3)  # 3.3 MB, more than the initial 1 MiB buffer
    assert np.abs(pixels.astype(int) - np.asarray(Image.open(io.BytesIO(jpeg)))).max() <= 1


def test_truncated_and_corrupt_data_raise_a_clear_error(decoder, photos):
    jpeg = photos[0]
    with pytest.raises(ValueError, match="undecodable JPEG"):
        decoder.decode(jpeg[:len(jpeg) // 2], (0, 0, 50, Image.open(io.BytesIO(jpeg)).size[1]))
    with pytest.raises(ValueError, match="unreadable JPEG header"):
        decoder.size(jpeg[:40])
    with pytest.raises(ValueError, match="undecodable JPEG"):
        decoder.decode(b"\xff\xd8\xff" + bytes(300), (0, 0, 10, 10))
    # A window above the cut needs none of the missing data, so it decodes (DALI's ROI decode does the same;
    # tools/make_shards.py has already rejected every truncated file when the shards were written).
    pixels, _ = decoder.decode(jpeg[:len(jpeg) * 3 // 4], (0, 0, 40, 16))
    assert pixels.shape[0] == 16


def test_everything_the_make_shards_check_accepts_decodes(decoder):
    """Damaged variants of real photographs (byte flips, cuts, zeroed runs): whatever tools/make_shards.py's check
    lets into a shard, the loader's decoder must read; it may accept more (a window needs less of the file)."""
    from shards.imagecheck import check_bytes

    rng = np.random.default_rng(7)
    accepted = 0
    for path in imagenet_sample_files()[::17]:
        original = open(path, "rb").read()
        for trial in range(6):
            data = bytearray(original)
            if trial % 3 == 0:
                for _ in range(5):
                    data[int(rng.integers(600, len(data) - 2))] = int(rng.integers(256))
            elif trial % 3 == 1:
                data = data[:int(rng.integers(700, len(data) - 10))]
            else:
                start = int(rng.integers(600, len(data) - 300))
                data[start:start + 200] = bytes(200)
            data = bytes(data)
            if check_bytes(data, "sample.JPEG").status == "skipped":
                continue
            accepted += 1
            width, height = decoder.size(data)
            pixels, _ = decoder.decode(data, (0, 0, width, height))
            assert pixels.shape == (height, width, 3)
    assert accepted >= 30  # byte flips and zeroed runs mostly stay decodable; cuts never do


def test_draft_decode_crops_the_same_window_as_a_full_decode():
    """Image.draft's DCT-domain downscale must not move the crop: compare with a full decode of the same box."""
    yy, xx = np.mgrid[0:900, 0:1200].astype(np.float32)
    smooth = np.stack([xx / 1200 * 255, yy / 900 * 255, 128 + 100 * np.sin(xx / 90) * np.cos(yy / 70)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buffer, "JPEG", quality=95)
    jpeg, drafted = buffer.getvalue(), 0
    for seed in range(20):
        out = decode_train(jpeg, 64, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # replay the draws decode_train made: the crop, then the flip
        left, top, w, h = augment.random_resized_crop_box(1200, 900, rng)
        drafted += augment.draft_factor(w, h, 64) > 1
        box = (left, top, left + w, top + h)
        full = Image.open(io.BytesIO(jpeg)).resize((64, 64), Image.Resampling.BILINEAR, box=box)
        reference = np.asarray(full)[:, ::-1] if rng.random() < augment.FLIP_PROBABILITY else np.asarray(full)
        assert np.abs(out.astype(int) - reference.astype(int)).mean() < 2.0
    assert drafted >= 10  # most of these crops were decoded at 1/2, 1/4 or 1/8 scale
