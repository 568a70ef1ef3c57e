"""The DALI backends' alternative placements of resizing and normalisation agree with the defaults.

The dali-cpu backend resizes train windows in torch and normalises on the host; the GPU backend resizes and
normalises in the graph (fn.crop_mirror_normalize). DaliLoader's normalize_in_graph and resize_on_host choose the
place, so the GPU graph's arithmetic runs here with CPU operators."""
import pytest
import torch
from conftest import epoch_batches, needs_dali

import pipeline
from pipeline import augment, load_split

pytestmark = needs_dali


from pipeline.rank_plan import DALI_BLOCK  # noqa: E402  (build_loader's default for DALI)


def dali_cpu_epoch(shard_dir, split, batch_size, image_size, dtype=torch.float32, **placement):
    """(loader, batches) of one epoch of the dali-cpu backend with the given step placement."""
    from pipeline.dali import DaliLoader

    loader = DaliLoader(load_split(shard_dir, split, need_index=True), gpu=False, per_rank_batch=batch_size, rank=0,
                        world_size=1, workers=2, device=torch.device("cpu"), image_size=image_size, seed=0,
                        dtype=dtype, verify="off", shuffle_block=DALI_BLOCK, **placement)
    return loader, list(loader)


def test_dali_cpu_resizing_train_windows_in_torch_matches_resizing_in_the_graph(real_shards):
    """Same seed, same windows and flips; only the resampler differs. Interior pixels agree within rounding (1
    level); the 2-pixel border differs more because DALI and torch clamp the filter at the window edge
    differently."""
    _, on_host = epoch_batches(real_shards, "train", 4, "dali-cpu", image_size=64)
    loader, in_graph = dali_cpu_epoch(real_shards, "train", 4, 64, resize_on_host=False)
    assert not loader.resize_on_host and len(in_graph) == len(on_host) > 0
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1) * 255
    for (host_images, host_labels), (graph_images, graph_labels) in zip(on_host, in_graph):
        assert torch.equal(host_labels, graph_labels)
        levels = (host_images - graph_images).abs() * std
        assert float(levels[:, :, 2:-2, 2:-2].max()) <= 1.5
        assert float(levels.mean()) <= 0.5


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_graph_fused_normalisation_matches_the_host_normaliser(real_shards, split, dtype):
    """The GPU graph ends in fn.crop_mirror_normalize (flip + normalise + cast in one pass). Run that graph
    with CPU operators (normalize_in_graph=True) against the host Normalizer path: same pixels up to float
    rounding of the requested dtype, same flips (train), same labels."""
    _, host = dali_cpu_epoch(real_shards, split, 4, 32, dtype, resize_on_host=False)
    loader, fused = dali_cpu_epoch(real_shards, split, 4, 32, dtype, normalize_in_graph=True)
    assert loader.normalize_in_graph
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2  # half precision: ~3 significant digits
    assert len(host) == len(fused) > 0
    for (host_images, host_labels), (fused_images, fused_labels) in zip(host, fused):
        assert torch.equal(host_labels, fused_labels)
        assert fused_images.dtype == dtype and fused_images.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused_images.float(), host_images.float(), atol=tolerance, rtol=tolerance)


def test_resizing_on_the_host_with_normalisation_in_the_graph_is_refused(real_shards):
    with pytest.raises(ValueError, match="resize_on_host"):
        dali_cpu_epoch(real_shards, "train", 4, 32, resize_on_host=True, normalize_in_graph=True)


@pytest.mark.parametrize("split, block", [("train", 5), ("train", 0), ("val", 0)])
def test_a_rank_reads_only_the_indexes_and_tars_of_its_own_samples_once_per_epoch(unique_shards, monkeypatch,
                                                                                   split, block):
    """Rank 1 of 3: DALI's reader gets one entry per run of the rank's samples, each shard's index read once in
    the epoch (not the whole split's), and the entries' indexes hold exactly the lines of those samples."""
    from pipeline import dali

    read = []
    real_check = dali.check_index_file
    monkeypatch.setattr(dali, "check_index_file", lambda shard: read.append(shard.index_path) or real_check(shard))
    loader = pipeline.build_loader(unique_shards, split, 4, backend="dali-cpu", rank=1, world_size=3, workers=1,
                                   device="cpu", image_size=16, seed=3, shuffle_block=block, verify="off")
    loader.set_epoch(2)
    assert not read  # building a loader reads no index
    batches = list(loader)
    plan = loader.plan()
    runs = loader.segments(plan.start, plan.stop)
    own = {shard.index_path for shard, _, _ in runs}
    assert sorted(read) == sorted(own) and len(own) < len(loader.split.shards)
    labels = sorted(int(label) for _, batch_labels in batches for label in batch_labels)
    expected = []
    for shard, first, stop in runs:  # the labels of the run's samples, read at their .cls offsets
        with open(shard.index_path) as handle, open(shard.path, "rb") as tar:
            for line in handle.read().splitlines()[1 + first:1 + stop]:
                fields = line.split()
                cls = fields.index("cls")
                tar.seek(int(fields[cls + 1]))
                expected.append(int(tar.read(int(fields[cls + 2]))))
    if split == "val":
        assert labels == sorted(expected)
    else:  # the batch quota ends the epoch before the rank's last samples
        assert set(labels) <= set(expected) and len(labels) == len(batches) * 4
