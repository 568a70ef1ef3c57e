"""The rank and worker split (pipeline/rank_plan.py): pure functions, every rank, world size and epoch."""

import numpy as np
import pytest

from pipeline.rank_plan import rank_plan, shard_segments, worker_plans
from shards.manifest import Shard


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
    shards = [Shard(f"s{i}", "", n, 0, "", int(o)) for i, (n, o) in enumerate(zip(sizes, offsets))]
    for start in range(sum(sizes)):
        for stop in range(start, sum(sizes) + 1):
            indices = [s.offset + i for s, first, end in shard_segments(shards, start, stop) for i in range(first, end)]
            assert indices == list(range(start, stop))
