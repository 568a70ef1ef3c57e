"""benchmarks/order_quality.py measures the order rules at ImageNet's size by replaying them; here the replay of the
torch backend is checked sample for sample against the real loader, and the measures against known orders."""
import json
import os
import tarfile

import numpy as np
import pytest
from conftest import epoch_batches

from benchmarks import order_quality


def sample_ids(shard_dir):
    """{label: global sample id}: the unique shards hold one sample per label, in manifest order."""
    manifest = json.load(open(os.path.join(shard_dir, "manifest.json")))
    labels = []
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(os.path.join(shard_dir, shard["tar"])) as tar:
            labels += [int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")]
    return {label: i for i, label in enumerate(labels)}, len(labels)


@pytest.mark.parametrize("world, per_rank, workers, epoch", [(1, 8, 2, 0), (2, 6, 3, 1), (3, 4, 0, 2)])
def test_the_replayed_torch_order_is_the_real_loaders(unique_shards, world, per_rank, workers, epoch):
    ids, samples = sample_ids(unique_shards)
    for rank in range(world):
        _, batches = epoch_batches(unique_shards, "train", per_rank, "torch", rank=rank, world_size=world,
                                   epoch=epoch, workers=workers, seed=5)
        real = [[ids[int(label)] for label in labels] for _, labels in batches]
        replay = order_quality.torch_rank_batches(samples, rank, world, per_rank, workers, epoch, 5)
        assert real == [list(map(int, batch)) for batch in replay], (rank, real[:2], replay[:2])


def test_the_measures_of_known_orders():
    samples, batch = 10_000, 100
    same = order_quality.permutation_order(samples, 1, batch, 0, 3)
    pairs, expected = order_quality.re_meetings(same, same, samples)
    assert order_quality.spearman(same[0], same[0]) == pytest.approx(1.0)
    # Every pair of a batch meets again: (N - 1) / (B - 1) times what a fresh permutation gives.
    assert pairs == samples // batch * batch * (batch - 1) // 2
    assert pairs / expected == pytest.approx((samples - 1) / (batch - 1))
    other = order_quality.permutation_order(samples, 1, batch, 1, 3)
    pairs, expected = order_quality.re_meetings(same, other, samples)
    assert abs(order_quality.spearman(same[0], other[0])) < 0.05 and 0.8 < pairs / expected < 1.2
    reversed_order = (same[0][::-1].copy(), same[1])
    assert order_quality.spearman(same[0], reversed_order[0]) == pytest.approx(-1.0)


def test_todays_orders_at_imagenet_scale_are_nearly_fixed_and_the_sampler_is_not():
    """The figures BENCHMARKS.md records, at 100k samples (a second): this trainer's epochs re-meet far more
    pairs than DistributedSampler's, which is what a fresh order per epoch is to fix."""
    args = type("Args", (), dict(samples=100_000, world=1, batch=256, workers=8, seed=1234))
    rows = {row["order"]: row for row in order_quality.measure(args)}
    assert rows["torch (this trainer)"]["spearman"] > 0.99 and rows["torch (this trainer)"]["re_meeting_ratio"] > 25
    assert rows["DistributedSampler(shuffle=True)"]["re_meeting_ratio"] == pytest.approx(1, abs=0.2)
    assert abs(rows["DistributedSampler(shuffle=True)"]["spearman"]) < 0.02
    assert np.isfinite(rows["fresh permutation"]["spearman"])
