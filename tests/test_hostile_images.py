"""Hostile and unusual image files in every tool that reads them: decompression bombs (a header claiming more
pixels than the limit), JPEGs whose data is far too short for the size their header claims, samples of more than
8 bits, and flag values no run can use. Small files only: a huge size is claimed by patching the width and height
bytes of a small JPEG's start-of-frame header, or built as a valid flat JPEG whose entropy-coded data is all
zero bits, so nothing here ever decodes a large image."""
import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from conftest import imagenet_sample_files
from PIL import Image

from model import build_model
from pipeline import roi_jpeg
from pipeline.folder import load_image
from pipeline.jpeg_decode import PillowWindows, RoiWindows, decode_train, decode_val
from shards.imagecheck import MAX_PIXELS, check_bytes, encode_jpeg, jpeg_header
from tools import make_shards, predict

LIMIT_TEXT = f"over the pixel limit of {MAX_PIXELS:,} pixels"
TOO_SHORT = "JPEG data too short for the size its header claims"


# ---------------------------------------------------------------------------------------------------- files

def jpeg_bytes(image, **save_args):
    out = io.BytesIO()
    image.save(out, "JPEG", **save_args)
    return out.getvalue()


def small_jpeg(seed=0, size=(16, 16)):
    """A few hundred bytes of real baseline JPEG (noise, 4:2:0)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return jpeg_bytes(Image.fromarray(pixels))


def claiming(jpeg, width, height, marker=0xC0):
    """`jpeg` with its start-of-frame header saying width x height (and `marker`): the data stays as short as it
    was, as in a file cut short or a forged header."""
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    data[sof + 1] = marker
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def flat_jpeg(width, height):
    """A valid grayscale JPEG of any size, flat grey, built in microseconds: with optimised Huffman tables a flat
    image's only DC symbol and only AC symbol (end of block) each get the 1-bit code '0', so its entropy-coded
    data is two zero bits per 8x8 block (libjpeg pads the last byte with one bits). Two bits per block is as short
    as a valid Huffman-coded JPEG gets, so it must pass the check of data length against size."""
    template = jpeg_bytes(Image.new("L", (64, 64), 128), optimize=True)
    header = jpeg_header(template)
    assert template[header.data_start:] == bytes(16) + b"\xff\xd9"  # 64 blocks x 2 bits, then end of image
    bits = -(-width // 8) * -(-height // 8) * 2
    tail = bytes([0xFF >> (bits % 8)]) if bits % 8 else b""
    return claiming(template[:header.data_start], width, height) + bytes(bits // 8) + tail + b"\xff\xd9"


def png_header(width, height):
    """A grayscale PNG whose header says width x height, followed by a few bytes of image data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def cut_after_scan_header(photo, keep):
    """A photograph's headers and the first `keep` bytes of its data, then an end-of-image marker: libjpeg only
    warns about such a file ("premature end of data segment") and Pillow decodes the rest as flat grey."""
    return photo[:jpeg_header(photo).data_start + keep] + b"\xff\xd9"


def large_photo():
    """A real photograph of at least 500x300 pixels, so 40 bytes of data are far too few for it."""
    for path in imagenet_sample_files():
        data = open(path, "rb").read()
        header = jpeg_header(data)
        if header.width * header.height >= 150_000:
            return data
    pytest.skip("no sample photograph of 500x300 pixels or more")


def windows(kind):
    if kind == "roi" and not roi_jpeg.available()[0]:
        pytest.skip(f"ROI decoder not built ({roi_jpeg.available()[1]})")
    return RoiWindows() if kind == "roi" else PillowWindows()


# The gradient a high bit-depth test image holds, and its 8-bit values: a left-to-right ramp over the full range.
GRADIENT_SIZE = (160, 48)


def gradient_8bit():
    return np.round(np.linspace(0, 255, GRADIENT_SIZE[0]))[None, :].repeat(GRADIENT_SIZE[1], 0).astype(np.uint8)


def high_depth_file(kind):
    """(file bytes, suffix, the mode Pillow opens it in) of the gradient in a kind of image with samples of more
    than 8 bits."""
    ramp = gradient_8bit().astype(np.float64) / 255
    out = io.BytesIO()
    if kind == "png-16":
        Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(out, "PNG")
        return out.getvalue(), ".png", "I;16"
    if kind == "tiff-16-big-endian":
        samples = np.round(ramp * 65535).astype(">u2")
        Image.frombytes("I;16B", GRADIENT_SIZE, samples.tobytes()).save(out, "TIFF")
        return out.getvalue(), ".tiff", "I;16B"
    if kind == "pgm-16":  # 16-bit PGM opens as 32-bit "I" holding 0..65535
        Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(out, "PPM")
        return out.getvalue(), ".pgm", "I"
    Image.fromarray(ramp.astype(np.float32), "F").save(out, "TIFF")  # float samples in 0..1
    return out.getvalue(), ".tiff", "F"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained ResNet-18 CBAM of 3 classes as a bare state dict (what predict.py reads of the authors')."""
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.manual_seed(0)
    torch.save(build_model(18, "CBAM", num_classes=3, cbam_impl="torch").state_dict(), path)
    return str(path)


def run_predict(capsys, *argv):
    status = predict.main([*map(str, argv), "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err.strip().splitlines()


# ---------------------------------------------------------------------------------------------------- the decoders

@pytest.mark.parametrize("kind, make, size", [
    ("pillow", flat_jpeg, (9700, 9300)),  # a valid JPEG of 90.2 MP, data and all
    ("roi", flat_jpeg, (9000, 10000)),
    ("pillow", png_header, (9500, 9500)),  # other formats: the size from Pillow's reading of the header
    ("roi", png_header, (12000, 7500)),
], ids=["pillow-jpeg", "roi-jpeg", "pillow-png", "roi-png"])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(kind, make, size):
    decoder, data = windows(kind), make(*size)
    for decode in (lambda: decode_val(data, 40, decoder),
                   lambda: decode_train(data, 40, np.random.default_rng(1), decoder)):
        with pytest.raises(ValueError) as error:
            decode()
        assert f"{size[0]}x{size[1]}" in str(error.value) and LIMIT_TEXT in str(error.value), str(error.value)


@pytest.mark.parametrize("kind", ["pillow", "roi"])
def test_a_jpeg_too_short_for_its_size_is_refused_under_the_limit_too(kind):
    decoder = windows(kind)
    forged = claiming(small_jpeg(seed=2), 2600, 1900)
    cut = cut_after_scan_header(large_photo(), keep=40)
    header = jpeg_header(cut)
    for data, size in ((forged, "2600x1900"), (cut, f"{header.width}x{header.height}")):
        with pytest.raises(ValueError) as error:
            decode_val(data, 48, decoder)
        assert TOO_SHORT in str(error.value) and size in str(error.value), str(error.value)
    # The shortest valid JPEGs (flat, two bits per block; progressive: one bit per block in its first scan) pass.
    flat = flat_jpeg(1208, 904)
    progressive = jpeg_bytes(Image.new("RGB", (640, 480), (90, 140, 200)), progressive=True, optimize=True)
    for data in (flat, progressive):
        assert decode_val(data, 48, decoder).shape == (48, 48, 3)
    assert np.all(decode_val(flat, 48, decoder) == 128)


# ---------------------------------------------------------------------------------------------------- predict.py

def test_predict_names_each_refused_image_and_still_classifies_the_good_ones(checkpoint, tmp_path, capsys):
    photos = imagenet_sample_files()[3:5]
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photos:
        (folder / os.path.basename(path)).write_bytes(open(path, "rb").read())
    bomb, forged = folder / "bomb.jpg", folder / "forged.jpeg"
    bomb.write_bytes(flat_jpeg(9800, 9200))                     # 90.2 MP: a valid JPEG over the limit
    forged.write_bytes(claiming(small_jpeg(seed=4), 4100, 2900))  # under the limit, data far too short
    status, out, err = run_predict(capsys, "--checkpoint", checkpoint, folder, "--image-size", 40, "--json")
    assert status == 1, err
    assert f"predict.py: {bomb}: cannot decode: 9800x9200 JPEG (90 MP) is {LIMIT_TEXT}" in err[0], err
    assert err[1].startswith(f"predict.py: {forged}: cannot decode: {TOO_SHORT}: 4100x2900 needs"), err
    assert err[2:] == ["predict.py: 2 of 4 images could not be read"]
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(row["image"] for row in rows) == sorted(str(folder / os.path.basename(p)) for p in photos)
    assert all(len(row["top"]) == 3 for row in rows)


def test_predict_on_folders_without_images_is_a_one_line_usage_error(checkpoint, tmp_path, capsys):
    empty, notes, photos = tmp_path / "empty", tmp_path / "notes", tmp_path / "photos"
    for folder in (empty, notes / "deeper", photos):
        folder.mkdir(parents=True)
    (notes / "deeper" / "readme.txt").write_text("no pictures here")
    (photos / "a.JPEG").write_bytes(open(imagenet_sample_files()[0], "rb").read())
    status, out, err = run_predict(capsys, "--checkpoint", checkpoint, empty, photos, notes, "--image-size", 40)
    assert (status, out) == (2, "")
    assert err == [f"predict.py: error: no image files (.jpeg, .jpg, .png, .bmp, .webp) in {empty}, {notes}"]
    status, out, err = run_predict(capsys, "--checkpoint", checkpoint, notes / "deeper")
    assert (status, out) == (2, "") and len(err) == 1 and err[0].endswith(f" in {notes / 'deeper'}")


def test_predict_refuses_an_absurd_image_size_when_parsed(tmp_path, capsys):
    photo = imagenet_sample_files()[0]
    for size in (5000, 1025, 31):
        # The checkpoint need not exist: the flag is refused before anything is read.
        status, out, err = run_predict(capsys, "--checkpoint", tmp_path / "none.pth", photo, "--image-size", size)
        assert (status, out) == (2, "")
        assert err == [f"predict.py: error: --image-size must be between 32 and 1024 pixels, got {size}"]
    assert predict.parse_args(["--checkpoint", "c.pth", photo, "--image-size", "1024"]).image_size == 1024


# ---------------------------------------------------------------------------------------------------- make_shards

def stored_samples(out):
    """{label: decoded stored image (uint8 array)} of the train shards in `out`."""
    samples = {}
    for name in sorted(os.listdir(out)):
        if name.startswith("train-") and name.endswith(".tar"):
            with tarfile.open(out / name) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for member, data in members.items():
                if member.endswith(".jpg"):
                    label = int(members[member[:-4] + ".cls"])
                    samples[label] = np.asarray(Image.open(io.BytesIO(data)))
    return samples


def test_make_shards_skips_jpegs_too_short_for_their_size_and_stores_the_rest(tmp_path, capsys):
    photo = large_photo()
    files = {"n01/photo.JPEG": photo,
             "n02/forged-over.JPEG": claiming(small_jpeg(seed=5), 9900, 9100),   # over the limit: was "downscaled"
             "n03/forged-under.JPEG": claiming(small_jpeg(seed=6), 1500, 1100),  # under it: was stored as it was
             "n04/cut.JPEG": cut_after_scan_header(photo, keep=30)}
    for name, data in files.items():
        (tmp_path / "src" / "train" / name).parent.mkdir(parents=True)
        (tmp_path / "src" / "train" / name).write_bytes(data)
    out = tmp_path / "out"
    status = make_shards.main([str(tmp_path / "src"), str(out), "--splits", "train", "--workers", "1",
                               "--allow-empty-classes"])
    capsys.readouterr()
    assert status == 1
    summary = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    reasons = {item["path"]: item["reason"] for item in summary["skipped"]}
    header = jpeg_header(photo)
    assert set(reasons) == {f"train/{name}" for name in files if name != "n01/photo.JPEG"}
    for name, size in (("n02/forged-over.JPEG", "9900x9100"), ("n03/forged-under.JPEG", "1500x1100"),
                       ("n04/cut.JPEG", f"{header.width}x{header.height}")):
        assert reasons[f"train/{name}"].startswith(f"{TOO_SHORT}: {size} needs at least "), reasons
    assert summary["samples"] == 1 and summary["fixed"] == []


def test_an_arithmetic_coded_jpeg_over_the_limit_is_skipped_not_downscaled():
    """Arithmetic coding has no bits-per-block floor, so data length cannot expose a forged size: over the limit
    such a file is not decoded to be downscaled."""
    check = check_bytes(claiming(small_jpeg(seed=7), 9600, 9400, marker=0xC9), "arith.JPEG")
    assert check.status == "skipped"
    assert check.reason.startswith("arithmetic-coded 9600x9400 JPEG over the pixel limit of 89,478,485 pixels")


def test_max_side_below_what_training_can_use_is_refused_when_parsed(tmp_path, capsys):
    for value in ("36", "12"):
        with pytest.raises(SystemExit) as exit_info:
            make_shards.parse_args([str(tmp_path), str(tmp_path / "out"), "--max-side", value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("make_shards.py: error: argument --max-side: "), err
        assert "must be at least 37 pixels" in err[0] and f", got {value} " in err[0], err
    assert make_shards.parse_args([str(tmp_path), str(tmp_path / "out"), "--max-side", "37"]).max_side == 37


# ---------------------------------------------------------------------------------------------------- bit depth

@pytest.mark.parametrize("kind", ["png-16", "tiff-16-big-endian", "pgm-16", "tiff-float"])
def test_samples_of_more_than_8_bits_are_scaled_to_8_not_clipped_to_white(kind, tmp_path):
    data, suffix, mode = high_depth_file(kind)
    assert Image.open(io.BytesIO(data)).mode == mode
    path, reference = tmp_path / f"gradient{suffix}", tmp_path / "gradient-8bit.png"
    path.write_bytes(data)
    Image.fromarray(gradient_8bit()).convert("RGB").save(reference)
    # predict.py, validate.py and attention_maps.py read files with load_image (the torch backend's decoder).
    assert np.abs(load_image(path, 48).astype(int) - load_image(reference, 48)).max() <= 1
    # make_shards re-encodes it as an RGB JPEG.
    stored = np.asarray(Image.open(io.BytesIO(encode_jpeg(data, 95))).convert("RGB")).astype(int)
    assert np.abs(stored - gradient_8bit()[:, :, None]).max() <= 4


def test_make_shards_stores_a_16_bit_gradient_as_the_same_gradient(tmp_path, capsys):
    for label, kind in enumerate(["png-16", "tiff-float"]):
        data, suffix, _ = high_depth_file(kind)
        (tmp_path / "src" / "train" / f"n0{label}").mkdir(parents=True)
        (tmp_path / "src" / "train" / f"n0{label}" / f"gradient{suffix}").write_bytes(data)
    out = tmp_path / "out"
    assert make_shards.main([str(tmp_path / "src"), str(out), "--splits", "train", "--workers", "1"]) == 0
    capsys.readouterr()
    fixed = json.loads((out / "manifest.json").read_text())["splits"]["train"]["fixed"]
    assert [item["reason"] for item in fixed] == [
        "PNG image of 16-bit samples (scaled to 8 bits) converted to RGB JPEG",
        "TIFF image of 32-bit float samples (scaled to 8 bits) converted to RGB JPEG"]
    samples = stored_samples(out)
    assert sorted(samples) == [0, 1]
    for image in samples.values():
        assert image.shape == (*reversed(GRADIENT_SIZE), 3)
        assert np.abs(image.astype(int) - gradient_8bit()[:, :, None]).max() <= 4
