"""The loader contract (pipeline/loader.py) on both CPU backends: shapes, dtypes, layout, rank coverage, labels,
reproducibility, and the caller's state left as it was.

The 'unique' shards have one image per class, so a label identifies a sample: that is how the tests check that no
sample repeats within an epoch and that val covers every sample exactly once across ranks.
"""
import collections
import multiprocessing
import os

import pytest
import torch
from conftest import CPU_BACKENDS, UNIQUE_CLASSES, dali_importable, epoch_batches, labels_of, manifest, needs_dali

import pipeline
from pipeline import augment


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_batches_have_the_contract_shape_dtype_layout_and_range(generated_shards, backend, split):
    loader, batches = epoch_batches(generated_shards, split, 8, backend, image_size=32)
    assert loader.backend == backend and loader.per_rank_batch == 8
    assert loader.num_samples == manifest(generated_shards)["splits"][split]["samples"]
    assert len(batches) == len(loader) == (48 // 8 if split == "train" else -(-20 // 8))
    low = min((0 - m) / s for m, s in zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD))
    for images, labels in batches:
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert images.device.type == "cpu" and labels.device.type == "cpu" and labels.dtype == torch.int64
        assert images.shape[0] == labels.shape[0] > 0
        assert low - 1e-4 <= float(images.min()) and float(images.max()) <= high + 1e-4
        assert float(images.std()) > 0.1  # real picture content, not a constant
    if split == "val":
        assert [len(labels) for _, labels in batches] == [8, 8, 4]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])  # 8 ranks > 7 train shards, all of uneven size
def test_train_epoch_equal_batches_on_every_rank_and_no_sample_twice(unique_shards, backend, world_size):
    shard_sizes = [s["samples"] for s in manifest(unique_shards)["splits"]["train"]["shards"]]
    assert len(shard_sizes) == 7 and len(set(shard_sizes)) > 1  # the premise: uneven shards, fewer than 8
    batch_size, seen = 4, []
    expected = UNIQUE_CLASSES // (world_size * batch_size)
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            loader, batches = epoch_batches(unique_shards, "train", batch_size, backend, rank=rank,
                                            world_size=world_size, epoch=epoch)
            assert len(loader) == len(batches) == expected
            assert all(len(labels) == batch_size for _, labels in batches)
            seen += labels_of(batches)
        assert len(seen) == len(set(seen)) == expected * world_size * batch_size
        assert set(seen) <= set(range(UNIQUE_CLASSES))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_val_covers_every_sample_exactly_once_across_ranks(unique_shards, backend, world_size):
    batch_size, seen, lengths = 4, [], []
    for rank in range(world_size):
        loader, batches = epoch_batches(unique_shards, "val", batch_size, backend, rank=rank, world_size=world_size)
        sizes = [len(labels) for _, labels in batches]
        assert len(loader) == len(batches) and all(size > 0 for size in sizes)
        assert all(size == batch_size for size in sizes[:-1])  # only a rank's last batch may be partial
        lengths.append(len(loader))
        seen += labels_of(batches)
    assert sorted(seen) == list(range(UNIQUE_CLASSES))
    assert max(lengths) - min(lengths) <= 1


@pytest.mark.slow
def test_more_val_ranks_than_samples_yield_empty_epochs_not_errors(generated_shards):
    # 20 val samples over 24 ranks: DALI refuses more shards than samples, so ranks map to single samples.
    backends = ["torch"] + (["dali-cpu"] if dali_importable() else [])
    for backend in backends:
        seen = []
        for rank in range(24):
            loader, batches = epoch_batches(generated_shards, "val", 2, backend, rank=rank, world_size=24, workers=1)
            assert len(loader) == len(batches) <= 1
            seen += labels_of(batches)
        assert collections.Counter(seen) == collections.Counter({c: 5 for c in range(4)})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_val_label_multiset_is_the_manifests(generated_shards, backend):
    _, batches = epoch_batches(generated_shards, "val", 6, backend)
    counts = manifest(generated_shards)["splits"]["val"]["class_counts"]
    assert collections.Counter(labels_of(batches)) == collections.Counter(
        {label: n for label, n in enumerate(counts) if n})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_label_multiset_is_the_manifests_when_nothing_is_dropped(generated_shards, backend):
    seen = []
    for rank in range(2):  # 48 samples = 2 ranks x 6 batches x 4: no remainder to drop
        _, batches = epoch_batches(generated_shards, "train", 4, backend, rank=rank, world_size=2, epoch=1)
        seen += labels_of(batches)
    counts = manifest(generated_shards)["splits"]["train"]["class_counts"]
    assert collections.Counter(seen) == collections.Counter({label: n for label, n in enumerate(counts) if n})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_labels_of_one_two_and_three_digits_in_one_batch(unique_shards, backend):
    _, batches = epoch_batches(unique_shards, "val", UNIQUE_CLASSES, backend, workers=1)
    assert len(batches) == 1
    assert sorted(labels_of(batches)) == list(range(UNIQUE_CLASSES))


@needs_dali
@pytest.mark.parametrize("fixture, image_size", [("unique_shards", 16), ("real_shards", 64)])
def test_val_images_of_both_backends_agree_within_one_level(request, fixture, image_size):
    """Tolerance: 1 grey level of 255 per pixel (checked at 1.5 for float slack).

    Both backends decode with libjpeg-turbo (same IDCT, same fancy chroma upsampling: identical pixels), take
    the same exact centred window (augment.val_crop_box) and resample it with an antialiased linear (triangle)
    filter; only the resamplers' fixed-point rounding differs, by at most one level."""
    shard_dir = request.getfixturevalue(fixture)
    results = {}
    for backend in ("torch", "dali-cpu"):
        _, batches = epoch_batches(shard_dir, "val", 5, backend, image_size=image_size)
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        order = torch.argsort(labels)  # one sample per class: sorting by label pairs up the same samples
        results[backend] = images[order], labels[order]
    assert torch.equal(results["torch"][1], results["dali-cpu"][1])
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1) * 255
    levels = (results["torch"][0] - results["dali-cpu"][0]).abs() * std
    assert float(levels.max()) <= 1.5
    assert float(levels.mean()) <= 0.5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_set_epoch_is_reproducible_and_changes_the_order(unique_shards, backend):
    def run(epoch, seed=0):
        _, batches = epoch_batches(unique_shards, "train", 4, backend, rank=1, world_size=2, epoch=epoch, seed=seed)
        return labels_of(batches), torch.cat([images for images, _ in batches])

    first, again, other_epoch, other_seed = run(3), run(3), run(4), run(3, seed=1)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert first[0] != other_epoch[0]
    assert first[0] != other_seed[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_breaking_out_of_an_epoch_then_running_more_epochs(unique_shards, backend):
    loader = pipeline.build_loader(unique_shards, "train", 4, backend=backend, workers=2, device="cpu",
                                   image_size=16)
    for _ in loader:
        break
    counts = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        assert sum(1 for _ in loader) == len(loader)
        # A closed multiprocessing queue's feeder thread exits shortly after the epoch: let it go before counting
        # (the first count simply waits half a second; later ones wait until they are down to the first).
        counts.append(_settled_thread_count(at_most=counts[0], wait=5.0) if counts else
                      _settled_thread_count(at_most=0, wait=0.5))
    assert counts[-1] <= counts[0]  # DALI pipelines and DataLoader threads do not pile up over epochs
    assert len(multiprocessing.active_children()) == (2 if backend == "torch" else 0)  # one set, every epoch
    if backend == "torch":
        loader.close()
    assert multiprocessing.active_children() == []


def _settled_thread_count(at_most, wait):
    """This process's thread count once it is at most `at_most`, or after `wait` seconds, whichever is first."""
    import time

    deadline = time.monotonic() + wait
    while True:
        count = len(os.listdir("/proc/self/task"))
        if count <= at_most or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs_match_float32(generated_shards, backend, dtype):
    _, reference = epoch_batches(generated_shards, "val", 10, backend, image_size=32)
    _, half = epoch_batches(generated_shards, "val", 10, backend, image_size=32, dtype=dtype)
    for (ref_images, ref_labels), (images, labels) in zip(reference, half):
        assert images.dtype == dtype and images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(labels, ref_labels)
        assert torch.allclose(images.float(), ref_images, atol=0.02, rtol=0.01)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_callers_torch_thread_count_is_restored(generated_shards, backend):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loader = pipeline.build_loader(generated_shards, "train", 4, backend=backend, workers=2, device="cpu",
                                       image_size=16)
        for _ in loader:
            assert torch.get_num_threads() == 2  # what the training step between batches runs with
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_real_photographs(real_shards, backend):
    classes = len(manifest(real_shards)["classes"])
    _, train = epoch_batches(real_shards, "train", 4, backend, image_size=64)
    _, val = epoch_batches(real_shards, "val", 4, backend, image_size=64)
    assert len(train) == 24 // 4 and sum(len(labels) for _, labels in val) == 8
    for images, labels in train + val:
        assert torch.isfinite(images).all() and float(images.std()) > 0.2
        assert int(labels.min()) >= 0 and int(labels.max()) < classes
    assert len(set(labels_of(train))) == 24  # one photograph per class: no sample twice
