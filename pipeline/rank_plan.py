"""Splitting a split's samples (shards/manifest.py) over ranks, epochs and loader workers.

Every backend uses the same sample-level split. The split's shards, concatenated in manifest order, form one index
space [0, N). In epoch e, rank r of W reads the contiguous range [N*j//W, N*(j+1)//W) with j = (r + e) % W for
training (the rotation gives each rank a different part of the data every epoch) and j = r for validation. This is
exactly how DALI's readers split data for shard_id=j, num_shards=W (start_index() in DALI's loader.cc), and it
works whatever the shard sizes and with more ranks than shard files.

Train: every rank yields exactly floor(N / (W * B)) full batches, drawn through a shuffle buffer from its range;
the samples still in the buffer when the quota is met are this epoch's dropped remainder.
Val: every rank yields its whole range in order, its last batch possibly smaller, so every sample is seen exactly
once across ranks and ranks may differ by one batch.
"""
from dataclasses import dataclass

import numpy as np

# Samples held by one rank's shuffle buffer: enough to mix classes well when shards are already shuffled at
# creation time, small enough to stay near 250 MB of ImageNet JPEG bytes (~110 kB each) per rank.
SHUFFLE_BUFFER = 2048


@dataclass(frozen=True)
class RankPlan:
    """What one rank reads in one epoch: the global sample range [start, stop) and its batch quota."""
    start: int
    stop: int
    batches: int
    batch_size: int
    train: bool
    part: int          # j: which of the world_size equal parts this is (DALI's shard_id)
    parts: int         # world_size (DALI's num_shards)

    @property
    def samples(self):
        return self.stop - self.start

    def last_batch_size(self):
        """Samples in the final batch (val ranks may end with a partial batch)."""
        if self.batches == 0:
            return 0
        return self.batch_size if self.train else self.samples - (self.batches - 1) * self.batch_size


def train_batches(num_samples, world_size, batch_size):
    """Full batches every rank yields per train epoch: floor(N / (W * B))."""
    return num_samples // (world_size * batch_size)


def rank_plan(num_samples, *, rank, world_size, batch_size, epoch, train):
    """The RankPlan of `rank` in `epoch` (see the module docstring for the rules)."""
    part = (rank + epoch) % world_size if train else rank
    start = num_samples * part // world_size
    stop = num_samples * (part + 1) // world_size
    if train:
        batches = train_batches(num_samples, world_size, batch_size)
    else:
        batches = -(-(stop - start) // batch_size)
    return RankPlan(start, stop, batches, batch_size, train, part, world_size)


@dataclass(frozen=True)
class WorkerPlan:
    """One loader worker's contiguous share of a RankPlan: samples [start, stop), and batches to yield from it."""
    start: int
    stop: int
    batches: int


def worker_plans(plan, num_workers):
    """Splits a RankPlan over num_workers workers so that their batch counts add up to plan.batches.

    Train: worker w gets batches L*w//K .. L*(w+1)//K of the quota and a contiguous sub-range holding exactly
    those batches plus its share of the remainder (so every sample of the range is read and counted).
    Val: the range is cut at batch boundaries, so only the last worker's last batch can be partial."""
    plans = []
    total, rest = plan.batches, plan.samples - plan.batches * plan.batch_size
    for w in range(num_workers):
        first, last = total * w // num_workers, total * (w + 1) // num_workers
        if plan.train:
            lo = plan.start + first * plan.batch_size + rest * w // num_workers
            hi = plan.start + last * plan.batch_size + rest * (w + 1) // num_workers
        else:
            lo = plan.start + first * plan.batch_size
            hi = min(plan.start + last * plan.batch_size, plan.stop)
        plans.append(WorkerPlan(lo, hi, last - first))
    return plans


def shard_segments(shards, start, stop):
    """(shard, first, stop) local sample ranges of the shards overlapping the global range [start, stop)."""
    segments = []
    for shard in shards:
        lo, hi = max(start, shard.offset), min(stop, shard.offset + shard.samples)
        if lo < hi:
            segments.append((shard, lo - shard.offset, hi - shard.offset))
    return segments


def epoch_seed(seed, epoch, *streams):
    """A 31-bit seed derived from (seed, epoch, *streams): independent streams, reproducible for any epoch."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), *(int(s) for s in streams)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)
