"""Shard checksums: the background verifier names a damaged shard and the sample whose bytes changed, records the
intact ones, and every backend stops before an epoch reads a shard known to be damaged."""
import io
import json
import os
import shutil

import pytest
from conftest import CPU_BACKENDS, build_sample_tree, run_make_shards
from PIL import Image

import pipeline
from pipeline.verify import ShardVerifier
from shards.manifest import load_split
from shards.read import read_index


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory):
    """Real photographs: 24 train samples in 3 shards, 8 val in 1."""
    root = tmp_path_factory.mktemp("verify")
    build_sample_tree(str(root / "src"), limit=24, val_every=3)
    return run_make_shards(root / "src", root / "shards", 8)


@pytest.fixture
def copy(photo_shards, tmp_path):
    return str(shutil.copytree(photo_shards, tmp_path / "shards"))


def member(shard_dir, shard_name, sample, ext):
    """(offset, size, member name) of one member, from the shard's DALI index."""
    split = load_split(shard_dir, shard_name.split("-")[0])
    shard = next(s for s in split.shards if os.path.basename(s.path) == f"{shard_name}.tar")
    return read_index(shard)[sample][ext]


def flip(path, offset, count=8):
    """Inverts `count` bytes at `offset`: the file keeps its size (the start-up check cannot see it)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


def verify_all(shard_dir, split, record_dir=""):
    shards = load_split(shard_dir, split).shards
    return ShardVerifier(record_dir).wait(shards)


def test_intact_shards_pass_and_are_recorded_once_per_machine(photo_shards, tmp_path):
    record = tmp_path / "record"
    assert verify_all(photo_shards, "train", str(record)) is None
    assert len(os.listdir(record)) == 3  # one record per intact shard


def test_make_shards_writes_member_checksums_named_in_the_manifest(photo_shards):
    with open(os.path.join(photo_shards, "manifest.json")) as handle:
        manifest = json.load(handle)
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            with open(os.path.join(photo_shards, entry["checksums"])) as handle:
                lines = handle.read().splitlines()
            assert len(lines) == 2 * entry["samples"]  # .jpg and .cls of every sample, in tar order
            assert [line.split()[0].rsplit(".", 1)[1] for line in lines[:2]] == ["jpg", "cls"]


@pytest.mark.parametrize("sample, ext, where", [(3, "jpg", "data"), (5, "cls", "data"), (2, "jpg", "header")])
def test_flipped_bytes_name_the_shard_and_the_sample(copy, sample, ext, where):
    offset, size, name = member(copy, "train-000001", sample, ext)
    key = name.split(".")[0]
    at = offset + size // 2 if where == "data" else offset - 512 + 100  # inside the data, or inside the header
    flip(os.path.join(copy, "train-000001.tar"), at, count=1 if ext == "cls" else 8)
    message = verify_all(copy, "train")
    assert message.startswith(f"shard {os.path.join(copy, 'train-000001.tar')} does not match the sha256")
    assert f"sample {key}" in message and "\n" not in message
    assert verify_all(copy, "val") is None  # the other split is untouched


def test_without_member_checksums_an_undecodable_sample_is_named_else_only_the_shard(copy):
    with open(os.path.join(copy, "manifest.json")) as handle:
        manifest = json.load(handle)
    for entry in manifest["splits"]["train"]["shards"]:
        del entry["checksums"]  # shard folders written before member checksums existed
    with open(os.path.join(copy, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    tar = os.path.join(copy, "train-000000.tar")
    original = open(tar, "rb").read()
    offset, size, name = member(copy, "train-000000", 4, "jpg")
    flip(tar, offset + 2, count=16)  # the JPEG's first marker segment: the file no longer opens as an image
    message = verify_all(copy, "train")
    assert f"sample {name.split('.')[0]} does not decode" in message, message
    # A flipped byte in the entropy-coded data that still decodes: only the shard can be named.
    for at in range(offset + size // 2, offset + size - 16, 97):
        damaged = bytearray(original)
        damaged[at] ^= 0xFF
        try:
            with Image.open(io.BytesIO(bytes(damaged[offset:offset + size]))) as image:
                image.load()
        except Exception:
            continue
        break
    with open(tar, "wb") as handle:
        handle.write(damaged)
    message = verify_all(copy, "train")
    assert message.startswith(f"shard {tar} does not match the sha256"), message
    assert "no sample fails to decode" in message


def test_a_record_trusts_an_unchanged_identity_and_a_rewrite_is_hashed_again(copy, tmp_path):
    """The record is keyed by inode, size and modification time: bytes changed behind a restored mtime are not
    hashed again (delete the record to force that); a normal write changes the mtime and is caught."""
    record = str(tmp_path / "record")
    assert verify_all(copy, "train", record) is None
    tar = os.path.join(copy, "train-000002.tar")
    status = os.stat(tar)
    offset, size, _ = member(copy, "train-000002", 1, "jpg")
    flip(tar, offset + size // 2)
    os.utime(tar, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert verify_all(copy, "train", record) is None  # trusted: same inode, size and mtime
    assert "train-000002.tar" in verify_all(copy, "train", "")  # without the record: hashed, caught
    os.utime(tar)  # what any write does
    assert "train-000002.tar" in verify_all(copy, "train", record)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_verify_before_stops_an_epoch_before_its_first_batch(copy, backend):
    offset, size, name = member(copy, "train-000000", 6, "jpg")
    flip(os.path.join(copy, "train-000000.tar"), offset + size // 3)
    loader = pipeline.build_loader(copy, "train", 4, backend=backend, workers=1, device="cpu", image_size=16,
                                   verify="before", verify_dir="")
    with pytest.raises(pipeline.ShardError, match=f"train-000000.tar does not match.*sample {name.split('.')[0]}"):
        next(iter(loader))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_background_checks_report_between_steps_and_refuse_the_next_epoch(copy, backend):
    offset, size, _ = member(copy, "train-000002", 0, "jpg")
    flip(os.path.join(copy, "train-000002.tar"), offset + size // 3)
    loader = pipeline.build_loader(copy, "train", 4, backend=backend, workers=1, device="cpu", image_size=16,
                                   verify_dir="")
    assert "train-000002.tar" in loader.shard_problem(wait=True)
    with pytest.raises(pipeline.ShardError, match="train-000002.tar"):
        next(iter(loader))
    off = pipeline.build_loader(copy, "train", 4, backend=backend, workers=1, device="cpu", image_size=16,
                                verify="off")
    assert off.shard_problem(wait=True) is None and len(list(off)) == 6  # off: the bytes decode, nothing checks


def test_val_waits_for_its_shards(copy):
    offset, size, name = member(copy, "val-000000", 2, "cls")
    flip(os.path.join(copy, "val-000000.tar"), offset, count=1)
    loader = pipeline.build_loader(copy, "val", 4, backend="torch", workers=1, device="cpu", image_size=16,
                                   verify_dir="")
    with pytest.raises(pipeline.ShardError, match=f"val-000000.tar does not match.*sample {name.split('.')[0]}"):
        list(loader)
