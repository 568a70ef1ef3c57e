"""Damaged or missing shard files: every reading path stops with one error that names the file."""
import json
import os
import shutil

import pytest
import torch
from conftest import CPU_BACKENDS, dali_importable, epoch_batches, manifest

import pipeline
from pipeline.shards import ShardError


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


def test_indexed_and_streamed_reading_give_identical_batches(generated_shards, tmp_path):
    streamed_dir = damaged_copy(generated_shards, tmp_path)
    reader_backend(streamed_dir, "torch-streamed")
    for split in ("train", "val"):
        for epoch in (0, 1):
            batches = []
            for shard_dir in (generated_shards, streamed_dir):
                loader = pipeline.build_loader(shard_dir, split, 4, backend="torch", workers=2, device="cpu",
                                               image_size=16)
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
    # DALI trusts the index: its count is compared with the manifest at build time.
    if dali_importable() and reader == "torch":
        with pytest.raises(ShardError, match="train-000000.idx"):
            pipeline.build_loader(shard_dir, "train", 4, backend="dali-cpu", device="cpu")


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
