"""Damaged or missing shard files: every reading path stops with one error that names the file."""
import glob
import itertools
import json
import os
import re
import shutil

import pytest
import torch
from conftest import CPU_BACKENDS, dali_importable, epoch_batches, manifest

import pipeline
from shards.errors import ShardError


def damaged_copy(shard_dir, tmp_path):
    target = tmp_path / "shards"
    shutil.copytree(shard_dir, target)
    return str(target)


def overwrite(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def index_records(index_path):
    """[(ext, offset, size), ...] per sample from a DALI index."""
    with open(index_path) as handle:
        lines = handle.read().split("\n")[1:]
    return [[(f[i], int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)] for f in map(str.split, lines) if f]


# The torch backend reads members at the offsets of the DALI index when the manifest names one, and streams the tar
# otherwise (shards from other tools): both ways must catch the same damage.
READ_PATHS = CPU_BACKENDS + ["torch-streamed"]


def reader_backend(shard_dir, backend):
    """The backend to pass to build_loader; for "torch-streamed", first drops the indexes from the manifest."""
    if backend != "torch-streamed":
        return backend
    data = manifest(shard_dir)
    for split in data["splits"].values():
        for shard in split["shards"]:
            shard.pop("index", None)
    with open(os.path.join(shard_dir, "manifest.json"), "w") as handle:
        json.dump(data, handle)
    return "torch"


def first_error(shard_dir, backend, split="train"):
    backend = reader_backend(shard_dir, backend)
    with pytest.raises(ShardError) as info:
        for _ in pipeline.build_loader(shard_dir, split, 4, backend=backend, workers=2, device="cpu", image_size=16):
            pass
    return str(info.value)


@pytest.mark.slow
def test_indexed_and_streamed_reading_give_identical_batches(generated_shards, tmp_path):
    streamed_dir = damaged_copy(generated_shards, tmp_path)
    reader_backend(streamed_dir, "torch-streamed")
    for split in ("train", "val"):
        for epoch in (0, 1):
            batches = []
            for shard_dir in (generated_shards, streamed_dir):
                # Storage order for both: without its indexes a split cannot be read at index offsets.
                loader = pipeline.build_loader(shard_dir, split, 4, backend="torch", workers=2, device="cpu",
                                               image_size=16, shuffle_block=0)
                loader.set_epoch(epoch)
                batches.append(list(loader))
            assert len(batches[0]) == len(batches[1]) > 0
            for (images_a, labels_a), (images_b, labels_b) in zip(*batches):
                assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


def test_torch_backend_reads_shards_whose_index_files_are_gone(generated_shards, tmp_path):
    """Only the DALI backends need the .idx files: without them the torch backend streams the tars."""
    shard_dir = damaged_copy(generated_shards, tmp_path)
    for name in os.listdir(shard_dir):
        if name.endswith(".idx"):
            os.remove(os.path.join(shard_dir, name))
    _, reference = epoch_batches(generated_shards, "val", 4, "torch", image_size=16)
    _, without = epoch_batches(shard_dir, "val", 4, "torch", image_size=16)
    assert len(reference) == len(without) > 0
    for (images_a, labels_a), (images_b, labels_b) in zip(reference, without):
        assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


def test_member_header_overwritten_in_place_names_the_shard(generated_shards, tmp_path):
    """Same size, so the build-time size check passes; the index still points at the member, whose header is gone."""
    shard_dir = damaged_copy(generated_shards, tmp_path)
    (_, offset, _), _ = index_records(os.path.join(shard_dir, "train-000001.idx"))[2]
    overwrite(os.path.join(shard_dir, "train-000001.tar"), offset - 512, b"garbage" * 20)
    message = first_error(shard_dir, "torch")
    assert "train-000001.tar" in message and "damaged" in message


@pytest.mark.parametrize("backend", READ_PATHS)
def test_zero_filled_tail_of_a_shard_names_the_shard(generated_shards, tmp_path, backend):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    path = os.path.join(shard_dir, "train-000002.tar")
    samples = index_records(os.path.join(shard_dir, "train-000002.idx"))
    start = samples[len(samples) // 2][0][1] - 512  # the tar header of a middle sample: reads as end of archive
    overwrite(path, start, bytes(os.path.getsize(path) - start))
    message = first_error(shard_dir, backend)
    assert "train-000002.tar" in message


@pytest.mark.parametrize("backend", READ_PATHS)
def test_zero_filled_jpeg_names_the_shard(generated_shards, tmp_path, backend):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    (ext, offset, size), _ = index_records(os.path.join(shard_dir, "train-000001.idx"))[3]
    assert ext == "jpg"
    overwrite(os.path.join(shard_dir, "train-000001.tar"), offset, bytes(size))
    assert "train-000001.tar" in first_error(shard_dir, backend)


@pytest.mark.parametrize("backend", READ_PATHS)
def test_non_digit_label_names_the_shard(generated_shards, tmp_path, backend):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    _, (ext, offset, _) = index_records(os.path.join(shard_dir, "val-000001.idx"))[2]
    assert ext == "cls"
    overwrite(os.path.join(shard_dir, "val-000001.tar"), offset, b"x")
    assert "val-000001.tar" in first_error(shard_dir, backend, split="val")


@pytest.mark.parametrize("backend", READ_PATHS)
def test_shard_cut_short_fails_at_build_naming_it(generated_shards, tmp_path, backend):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    path = os.path.join(shard_dir, "train-000003.tar")
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(ShardError, match="train-000003.tar"):
        pipeline.build_loader(shard_dir, "train", 4, backend=reader_backend(shard_dir, backend), device="cpu")


@pytest.mark.parametrize("reader", ["torch", "torch-streamed"])
def test_sample_count_differing_from_the_manifest_is_caught_while_reading(generated_shards, tmp_path, reader):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    data = manifest(shard_dir)
    shards = data["splits"]["train"]["shards"]
    shards[0]["samples"] += 1  # the total stays right; only reading shard 0 can tell
    shards[1]["samples"] -= 1
    with open(os.path.join(shard_dir, "manifest.json"), "w") as handle:
        json.dump(data, handle)
    message = first_error(shard_dir, reader)
    assert "train-000000.tar" in message and "manifest" in message
    # DALI trusts the index: its count is compared with the manifest when the epoch's reader entries are written.
    if dali_importable() and reader == "torch":
        # Both indexes now disagree with the manifest; the first the epoch reads is named.
        assert re.search(r"train-00000[01]\.idx describes (9|10) samples but the manifest says (10|9)",
                         first_error(shard_dir, "dali-cpu"))


def test_missing_files_and_bad_split_are_one_clear_error(generated_shards, tmp_path):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    with pytest.raises(ShardError, match="has no split 'test'.*train, val"):
        pipeline.build_loader(shard_dir, "test", 4, backend="torch", device="cpu")
    os.remove(os.path.join(shard_dir, "val-000001.tar"))
    with pytest.raises(ShardError, match="val-000001.tar"):
        pipeline.build_loader(shard_dir, "val", 4, backend="torch", device="cpu")
    os.remove(os.path.join(shard_dir, "manifest.json"))
    with pytest.raises(ShardError, match="manifest.json"):
        pipeline.build_loader(shard_dir, "val", 4, backend="torch", device="cpu")


def swap_side_file(shard_dir, ext, source=1, target=4):
    """Copies shard `source`'s .idx or .crc32 over shard `target`'s: both hold 10 samples, so counts agree."""
    entries = manifest(shard_dir)["splits"]["train"]["shards"]
    assert entries[source]["samples"] == entries[target]["samples"]
    target_path = os.path.join(shard_dir, f"train-{target:06d}.{ext}")
    shutil.copy(os.path.join(shard_dir, f"train-{source:06d}.{ext}"), target_path)
    return target_path


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_an_index_of_another_shard_is_named_before_reading(generated_shards, tmp_path, backend):
    """Same sample count, so only the manifest's size and sha256 of the .idx tell (DALI would decode the wrong
    bytes and report nvImageCodec's '#4')."""
    shard_dir = damaged_copy(generated_shards, tmp_path)
    index = swap_side_file(shard_dir, "idx")
    expected = f"DALI index {index} is not the file tools/make_shards.py wrote for train-000004.tar"
    with pytest.raises(ShardError, match=expected):
        list(pipeline.build_loader(shard_dir, "train", 4, backend=backend, workers=2, device="cpu", image_size=16))


def test_member_checksums_of_another_shard_are_named_by_the_damage_report(generated_shards, tmp_path):
    """A shard whose sha256 differs is explained from its .crc32; a .crc32 that is not its own is named instead of
    blaming an intact member."""
    from pipeline.verify import damage_report
    from shards.manifest import load_split

    shard_dir = damaged_copy(generated_shards, tmp_path)
    checksums = swap_side_file(shard_dir, "crc32", source=3, target=1)
    (_, offset, size), _ = index_records(os.path.join(shard_dir, "train-000001.idx"))[5]
    overwrite(os.path.join(shard_dir, "train-000001.tar"), offset + size // 2, b"\x00\x11\x22")
    shard = load_split(shard_dir, "train").shards[1]
    assert damage_report(shard).startswith(f"member checksums {checksums} is not the file tools/make_shards.py "
                                           "wrote for train-000001.tar")


@pytest.mark.parametrize("first, second", [(("train", 2), ("train", 0)), (("val", 1), ("train", 3))],
                         ids=["same-split", "across-splits"])
def test_a_shard_listed_twice_in_the_manifest_is_refused_by_name(generated_shards, tmp_path, first, second):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    data = manifest(shard_dir)
    (split, number), (into, position) = first, second
    entry = data["splits"][split]["shards"][number]
    data["splits"][into]["shards"].insert(position, dict(entry))
    data["splits"][into]["samples"] += entry["samples"]
    with open(os.path.join(shard_dir, "manifest.json"), "w") as handle:
        json.dump(data, handle)
    path = os.path.join(shard_dir, "manifest.json")
    backends = ["torch"] + (["dali-cpu"] if dali_importable() else [])
    for backend, loaded in itertools.product(backends, ("train", "val")):
        with pytest.raises(ShardError) as info:
            pipeline.build_loader(shard_dir, loaded, 4, backend=backend, device="cpu")
        assert str(info.value).startswith(f"{path}: {entry['tar']} is listed twice ("), str(info.value)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_manifest_without_side_file_checksums_still_loads(generated_shards, tmp_path, backend):
    shard_dir = damaged_copy(generated_shards, tmp_path)
    data = manifest(shard_dir)
    for split in data["splits"].values():
        for entry in split["shards"]:
            for key in ("index_bytes", "index_sha256", "checksums_bytes", "checksums_sha256"):
                del entry[key]
    with open(os.path.join(shard_dir, "manifest.json"), "w") as handle:
        json.dump(data, handle)
    _, old = epoch_batches(shard_dir, "val", 4, backend)
    _, new = epoch_batches(generated_shards, "val", 4, backend)
    assert len(old) == len(new) > 0
    for (images_a, labels_a), (images_b, labels_b) in zip(old, new):
        assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


def test_the_lean_member_header_check_agrees_with_tarfile_on_intact_and_damaged_headers(real_shards):
    """shards/format.member_header_ok parses two fields of a tar header, where tarfile parses all of them: on
    every header of real shards, on long and non-ASCII names, and on each byte of them changed, both agree."""
    import io
    import random
    import tarfile

    from shards.format import BLOCK, member_header_ok

    def tarfile_says(header, size):
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return False
        return info.size == size

    headers = []
    for path in sorted(glob.glob(os.path.join(real_shards, "*.tar")))[:2]:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                with open(path, "rb") as handle:
                    handle.seek(member.offset)
                    headers.append((handle.read(BLOCK), member.size))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, size in (("n" * 90 + "/" + "é" * 40 + ".jpg", 7), ("ß/ünïcode.cls", 0), ("big.jpg", 8**11 - 1)):
            info = tarfile.TarInfo(name)
            info.size = size
            headers.append((info.tobuf(tarfile.USTAR_FORMAT), size))
    random.seed(7)
    cases = 0
    for header, size in headers:
        assert member_header_ok(header, size) and tarfile_says(header, size)
        assert not member_header_ok(header, size + 1) and not member_header_ok(header[:-1], size)
        for position in random.sample(range(BLOCK), 40) + list(range(124, 156)):
            damaged = bytearray(header)
            damaged[position] = (damaged[position] + random.randrange(1, 256)) % 256
            assert member_header_ok(bytes(damaged), size) == tarfile_says(bytes(damaged), size), (position, damaged)
            cases += 1
    assert not member_header_ok(bytes(BLOCK), 0)  # the end-of-archive block
    assert cases > 1000
