"""pipeline/: the rank/worker split, the augmentation geometry, and the loader contract of the CPU backends.

Shards come from the real tools/make_shards.py (run as a subprocess) over generated or real JPEG trees. The
'unique' shards have one image per class, so a label identifies a sample: that is how the tests check that no
sample repeats within an epoch and that val covers every sample exactly once across ranks.
"""
import collections
import io
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, build_sample_tree, run_make_shards
from PIL import Image

import pipeline
from pipeline import augment
from pipeline.shards import ShardError, rank_plan, shard_segments, worker_plans
from tools.make_demo_data import write_tree


def _dali_importable():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


needs_dali = pytest.mark.skipif(not _dali_importable(), reason="NVIDIA DALI is not installed")
CPU_BACKENDS = ["torch", pytest.param("dali-cpu", marks=needs_dali)]
UNIQUE_CLASSES = 121  # labels 0..120: one, two and three ASCII digits


def make_shards(src, out, max_count):
    """Runs the real shard writer; returns the shard directory."""
    return run_make_shards(src, out, max_count, "--skip-bad")


@pytest.fixture(scope="module")
def generated_shards(tmp_path_factory):
    """4 classes, 48 train samples in 5 shards of 9-10, 20 val samples in 2 shards."""
    root = tmp_path_factory.mktemp("generated")
    write_tree(str(root / "src"), classes=4, train_per_class=12, val_per_class=5, size=64, seed=1)
    return make_shards(root / "src", root / "shards", max_count=10)


@pytest.fixture(scope="module")
def unique_shards(tmp_path_factory):
    """121 classes x 1 sample per split: 7 uneven train shards (17 or 18 samples), 7 val shards."""
    root = tmp_path_factory.mktemp("unique")
    write_tree(str(root / "src"), classes=UNIQUE_CLASSES, train_per_class=1, val_per_class=1, size=20, seed=2)
    return make_shards(root / "src", root / "shards", max_count=18)


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory):
    """Real ImageNet photographs, one per class: 24 train (3 shards), 8 val (1 shard)."""
    root = tmp_path_factory.mktemp("real")
    build_sample_tree(str(root / "src"), limit=24, val_every=3)
    return make_shards(root / "src", root / "shards", max_count=10)


def manifest(shard_dir):
    with open(os.path.join(shard_dir, "manifest.json")) as handle:
        return json.load(handle)


def epoch_batches(shard_dir, split, batch_size, backend, *, rank=0, world_size=1, epoch=0, workers=2,
                  image_size=16, **kwargs):
    """(loader, [(images, labels), ...]) for one epoch on CPU."""
    loader = pipeline.build_loader(shard_dir, split, batch_size, backend=backend, rank=rank, world_size=world_size,
                                   workers=workers, device="cpu", image_size=image_size, **kwargs)
    loader.set_epoch(epoch)
    return loader, list(loader)


def labels_of(batches):
    return [int(v) for _, labels in batches for v in labels]


# ---------------------------------------------------------------------------------------------------------------
# The split: pure functions


@pytest.mark.parametrize("train", [True, False])
def test_rank_ranges_partition_the_split_like_dali(train):
    for n in range(1, 41):
        for world in range(1, 6):
            for epoch in range(4):
                plans = [rank_plan(n, rank=r, world_size=world, batch_size=3, epoch=epoch, train=train)
                         for r in range(world)]
                covered = sorted(i for p in plans for i in range(p.start, p.stop))
                assert covered == list(range(n))
                for p in plans:  # DALI's start_index(shard_id, num_shards, size) = size * shard_id / num_shards
                    assert (p.start, p.stop) == (n * p.part // world, n * (p.part + 1) // world)
                if train:
                    assert {p.batches for p in plans} == {n // (world * 3)}
                    assert {p.part for p in plans} == set(range(world))
                else:
                    assert [p.batches for p in plans] == [-(-(p.stop - p.start) // 3) for p in plans]


def test_train_parts_rotate_with_the_epoch():
    parts = [rank_plan(100, rank=0, world_size=4, batch_size=5, epoch=e, train=True).part for e in range(4)]
    assert parts == [0, 1, 2, 3]


@pytest.mark.parametrize("train", [True, False])
def test_worker_plans_add_up_to_the_rank_quota(train):
    for n in range(0, 60, 7):
        for batch in (1, 4, 9):
            for workers in (1, 2, 3, 5):
                plan = rank_plan(n, rank=0, world_size=1, batch_size=batch, epoch=0, train=train)
                shares = worker_plans(plan, workers)
                assert sum(s.batches for s in shares) == plan.batches
                assert shares[0].start == plan.start and shares[-1].stop == plan.stop
                for before, after in zip(shares, shares[1:]):
                    assert before.stop == after.start  # contiguous, no gaps, no overlaps
                for w, share in enumerate(shares):
                    size = share.stop - share.start
                    if train:
                        assert size >= share.batches * batch
                    elif w < workers - 1:  # val cuts at batch boundaries: only the range's last batch is partial
                        assert size == share.batches * batch
                    else:
                        assert size == 0 or (share.batches - 1) * batch < size <= share.batches * batch


def test_shard_segments_follow_uneven_shards():
    sizes = [7, 1, 3, 9, 2]
    offsets = np.cumsum([0] + sizes[:-1])
    shards = [pipeline.shards.Shard(f"s{i}", "", n, 0, "", int(o)) for i, (n, o) in enumerate(zip(sizes, offsets))]
    for start in range(sum(sizes)):
        for stop in range(start, sum(sizes) + 1):
            indices = [s.offset + i for s, first, end in shard_segments(shards, start, stop) for i in range(first, end)]
            assert indices == list(range(start, stop))


# ---------------------------------------------------------------------------------------------------------------
# Augmentation geometry


def test_random_resized_crop_box_stays_in_bounds_and_ranges():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (64, 48), (17, 300), (1000, 10), (8, 8)]:
        for _ in range(200):
            left, top, w, h = augment.random_resized_crop_box(width, height, rng)
            assert 0 <= left and 0 <= top and left + w <= width and top + h <= height and w > 0 and h > 0
    for _ in range(200):  # a normal image never needs the fallback: area and ratio are within range
        left, top, w, h = augment.random_resized_crop_box(500, 375, rng)
        assert 0.08 * 0.97 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_random_resized_crop_falls_back_to_a_centred_clamped_window():
    rng = np.random.default_rng(0)
    assert augment.random_resized_crop_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)
    assert augment.random_resized_crop_box(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)


def test_draft_factor_keeps_the_crop_at_least_the_output_size():
    assert augment.draft_factor(224, 224, 224) == 1
    assert augment.draft_factor(447, 1000, 224) == 1
    assert augment.draft_factor(448, 900, 224) == 2
    assert augment.draft_factor(900, 900, 224) == 4
    assert augment.draft_factor(4000, 1800, 224) == 8


def test_val_window_matches_torchvision_resize_centre_crop_within_a_pixel():
    size = 224
    for width, height in [(500, 375), (375, 500), (640, 480), (333, 1000)]:
        short = augment.val_resize_size(size)  # torchvision: Resize(256) then CenterCrop(224)
        rw, rh = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        tv_left, tv_top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
        left, top, right, bottom = augment.val_crop_box(width, height, size)
        scale = short / min(width, height)
        # torchvision rounds the offset (<= 0.5 px) after truncating the resized size (< 0.5 px at the centre).
        assert abs(left * scale - tv_left) < 1 and abs(top * scale - tv_top) < 1
        assert right - left == pytest.approx(size / scale) and bottom - top == pytest.approx(size / scale)


def test_draft_decode_crops_the_same_window_as_a_full_decode():
    """Image.draft's DCT-domain downscale must not move the crop: compare with a full decode of the same box."""
    from pipeline.torchvision_backend import decode_train

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


# ---------------------------------------------------------------------------------------------------------------
# The loader contract, on both CPU backends


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_batches_have_the_contract_shape_dtype_layout_and_range(generated_shards, backend, split):
    loader, batches = epoch_batches(generated_shards, split, 8, backend, image_size=32)
    assert loader.backend == backend and loader.batch_size == 8
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


def test_more_val_ranks_than_samples_yield_empty_epochs_not_errors(generated_shards):
    # 20 val samples over 24 ranks: DALI refuses more shards than samples, so ranks map to single samples.
    backends = ["torch"] + (["dali-cpu"] if _dali_importable() else [])
    for backend in backends:
        seen = []
        for rank in range(24):
            loader, batches = epoch_batches(generated_shards, "val", 2, backend, rank=rank, world_size=24, workers=1)
            assert len(loader) == len(batches) <= 1
            seen += labels_of(batches)
        assert collections.Counter(seen) == collections.Counter({c: 5 for c in range(4)})


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores: on purpose
@pytest.mark.parametrize("workers", [0, 3])
def test_torch_backend_in_process_and_with_more_workers(unique_shards, workers):
    for split in ("train", "val"):
        loader, batches = epoch_batches(unique_shards, split, 5, "torch", workers=workers)
        assert len(batches) == len(loader) == (UNIQUE_CLASSES // 5 if split == "train" else -(-UNIQUE_CLASSES // 5))
        seen = labels_of(batches)
        assert len(seen) == len(set(seen))
    assert multiprocessing.active_children() == []  # the DataLoader workers are gone after the epoch


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


def test_slow_consumer_and_an_early_break_get_the_same_batches(unique_shards):
    """The torch backend's workers reuse shared-memory slots that the main process releases: a consumer slower
    than the workers (they fill every slot and wait) or one that left the last epoch early must still receive
    exactly the batches of a fast consumer."""
    import time

    def run(epoch, delay=0.0, stop_after=None):
        loader = pipeline.build_loader(unique_shards, "train", 8, backend="torch", workers=2, device="cpu",
                                       image_size=16)
        if stop_after is not None:
            loader.set_epoch(epoch + 1)
            for i, _ in enumerate(loader):
                if i == stop_after:
                    break
        loader.set_epoch(epoch)
        batches = []
        for images, labels in loader:
            batches.append((images.clone(), labels))
            time.sleep(delay)
        return batches

    fast = run(1)
    assert len(fast) == 121 // 8
    for other in (run(1, delay=0.05), run(1, stop_after=1)):
        assert len(other) == len(fast)
        for (images_a, labels_a), (images_b, labels_b) in zip(fast, other):
            assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs_match_float32(generated_shards, backend, dtype):
    _, reference = epoch_batches(generated_shards, "val", 10, backend, image_size=32)
    _, half = epoch_batches(generated_shards, "val", 10, backend, image_size=32, dtype=dtype)
    for (ref_images, ref_labels), (images, labels) in zip(reference, half):
        assert images.dtype == dtype and images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(labels, ref_labels)
        assert torch.allclose(images.float(), ref_images, atol=0.02, rtol=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_normalizer_is_the_imagenet_formula_and_never_overwrites_a_held_batch(dtype):
    pixels = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8)
    mean = torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1)
    expected = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
    normalize = augment.Normalizer(torch.device("cpu"), dtype)
    held = normalize(pixels)
    assert held.dtype == dtype and held.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(held.float(), expected, atol=1e-5 if dtype == torch.float32 else 0.02, rtol=0.01)
    snapshot = held.clone()
    view = normalize(pixels[:2], pixels[2:])[0]  # two parts make one batch; keep only a view of it
    assert torch.equal(normalize(255 - pixels), normalize(255 - pixels[:3], 255 - pixels[3:]))
    assert torch.equal(held, snapshot) and torch.equal(view, snapshot[0])  # still in use: never written over
    fresh = augment.Normalizer(torch.device("cpu"), dtype)
    address = fresh(pixels).data_ptr()  # dropped at once
    assert fresh(pixels).data_ptr() == address  # released: its memory is reused


@needs_dali
def test_dali_cpu_resizing_train_windows_in_torch_matches_resizing_in_the_graph(real_shards, monkeypatch):
    """Same seed, same windows and flips; only the resampler differs. Interior pixels agree within rounding (1
    level); the 2-pixel border differs more because DALI and torch clamp the filter at the window edge
    differently."""
    _, on_host = epoch_batches(real_shards, "train", 4, "dali-cpu", image_size=64)
    monkeypatch.setattr(pipeline.dali.DaliLoader, "_resize_on_host", lambda self, plan: False)
    _, in_graph = epoch_batches(real_shards, "train", 4, "dali-cpu", image_size=64)
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1) * 255
    for (host_images, host_labels), (graph_images, graph_labels) in zip(on_host, in_graph):
        assert torch.equal(host_labels, graph_labels)
        levels = (host_images - graph_images).abs() * std
        assert float(levels[:, :, 2:-2, 2:-2].max()) <= 1.5
        assert float(levels.mean()) <= 0.5


@needs_dali
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_graph_fused_normalisation_matches_the_host_normaliser(real_shards, monkeypatch, split, dtype):
    """The GPU graph ends in fn.crop_mirror_normalize (flip + normalise + cast in one pass). Run that graph
    with CPU operators (normalize_in_graph=True) against the host Normalizer path: same pixels up to float
    rounding of the requested dtype, same flips (train), same labels."""
    import pipeline.dali
    monkeypatch.setattr(pipeline.dali.DaliLoader, "_resize_on_host", lambda self, plan: False)
    _, host = epoch_batches(real_shards, split, 4, "dali-cpu", image_size=32, dtype=dtype)
    original_init = pipeline.dali.DaliLoader.__init__
    monkeypatch.setattr(pipeline.dali.DaliLoader, "__init__",
                        lambda self, split_, **kw: original_init(self, split_, normalize_in_graph=True, **kw))
    loader, fused = epoch_batches(real_shards, split, 4, "dali-cpu", image_size=32, dtype=dtype)
    assert loader.normalize_in_graph
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2  # half precision: ~3 significant digits
    assert len(host) == len(fused) > 0
    for (host_images, host_labels), (fused_images, fused_labels) in zip(host, fused):
        assert torch.equal(host_labels, fused_labels)
        assert fused_images.dtype == dtype and fused_images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused_images.float(), host_images.float(), atol=tolerance, rtol=tolerance)


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


# ---------------------------------------------------------------------------------------------------------------
# Damaged data: an error that names the file


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
    if _dali_importable() and reader == "torch":
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


# ---------------------------------------------------------------------------------------------------------------
# Backend selection and arguments


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_dali_without_a_gpu_is_a_clear_error(generated_shards):
    with pytest.raises(pipeline.BackendUnavailable, match="CUDA"):
        pipeline.build_loader(generated_shards, "train", 4, backend="dali")


def test_auto_logs_its_choice(generated_shards, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        loader = pipeline.build_loader(generated_shards, "val", 4, backend="auto", workers=0)
    expected = "dali" if torch.cuda.is_available() and _dali_importable() else "torch"
    assert loader.backend == expected
    assert f"auto -> {expected}" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="tensorflow"), "backend must be one of"),
    (dict(rank=2, world_size=2), "rank must be in"),
    (dict(batch_size=0), "batch_size"),
    (dict(workers=-1), "workers"),
    (dict(dtype=torch.int8), "dtype"),
])
def test_bad_arguments_are_value_errors(generated_shards, kwargs, match):
    arguments = dict(batch_size=4, backend="torch", device="cpu")
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pipeline.build_loader(generated_shards, "train", arguments.pop("batch_size"), **arguments)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_split_smaller_than_one_batch_per_rank_yields_nothing(generated_shards, caplog, backend):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        loader = pipeline.build_loader(generated_shards, "train", 13, backend=backend, rank=3, world_size=4,
                                       workers=1, device="cpu", image_size=16)
    assert len(loader) == 0 and list(loader) == []
    assert "yields no batches" in caplog.text


def test_import_pipeline_is_cheap():
    code = ("import sys, pipeline; heavy = [m for m in ('torch', 'nvidia.dali', 'PIL') if m in sys.modules]; "
            "sys.exit(f'imported {heavy}' if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


def test_info_reports_the_active_pil():
    result = subprocess.run([sys.executable, "-m", "pipeline.info"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["pil"].split()[0] in ("pillow", "pillow-simd") and Image.__version__ in info["pil"]


def test_too_little_shared_memory_for_the_batch_slots_is_a_clear_error(tmp_path):
    from pipeline.torchvision_backend import _check_shared_memory

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    _check_shared_memory(free // 2, 2, 4, folder=str(tmp_path))
    with pytest.raises(ValueError, match=r"2 workers x 4 batch slots.*--workers.*--shm-size"):
        _check_shared_memory(free * 4, 2, 4, folder=str(tmp_path))
    _check_shared_memory(10**18, 2, 4, folder=str(tmp_path / "missing"))  # no such folder: nothing to check


def test_a_worker_waiting_for_a_batch_slot_stops_when_the_epoch_is_closed():
    import threading
    import time

    from pipeline.torchvision_backend import BatchSlots, EpochClosed

    slots = BatchSlots(workers=1, slots=1, batch_size=2, image_size=4)
    slots.new_epoch(multiprocessing.get_context())
    assert slots.take(0) == 0
    outcome = []

    def second_take():
        try:
            outcome.append(slots.take(0))
        except EpochClosed:
            outcome.append("closed")

    waiter = threading.Thread(target=second_take)
    waiter.start()
    time.sleep(0.2)
    assert outcome == []  # the only slot is still held: the worker waits
    started = time.monotonic()
    slots.close_epoch()
    waiter.join(timeout=5)
    assert outcome == ["closed"] and time.monotonic() - started < 1.0
    slots.new_epoch(multiprocessing.get_context())  # the next epoch starts with every slot free again
    assert slots.take(0) == 0
    slots.release((0, 0, 2))
    assert slots.take(0) == 0  # round the single slot again
