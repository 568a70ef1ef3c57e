"""Splitting a split's samples (shards/manifest.py) over ranks, epochs and loader workers.

Every backend uses the same sample-level split. The split's shards, concatenated in manifest order, form one index
space [0, N) of sample ids. Each train epoch reads them in an order of its own (epoch_order): the shards are cut
into blocks of `shuffle_block` consecutive samples (none crosses a shard's end) and the blocks are permuted by a
generator seeded with (seed, epoch) alone, the same on every rank. Block 1 is a fresh permutation of the samples,
as random as torch's DistributedSampler, read at the offsets the shards' indexes give; larger blocks read longer
runs per request (object storage) at some cost in randomness (benchmarks/order_quality.py measures both);
block 0 keeps the storage order of every epoch (the rule before the permutation existed, for old checkpoints).
Validation reads the storage order.

Positions [0, N) in the epoch's order are then cut over ranks: in epoch e, rank r of W reads the positions
[N*j//W, N*(j+1)//W) with j = (r + e) % W for training and j = r for validation (with a fresh order per epoch the
rotation changes nothing in distribution; with block 0 it gives each rank other data every epoch). In storage
order this is exactly how DALI's readers split data for shard_id=j, num_shards=W (start_index() in DALI's
loader.cc), and it works whatever the shard sizes and with more ranks than shard files.

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


# Default blocks (samples a fresh order keeps together), chosen by benchmarks/order_quality.py's figures
# (BENCHMARKS.md, "Order quality"): a worker's reads at index offsets from local files cost the same one sample
# at a time, so the torch backend takes block 1 there, DistributedSampler's randomness; from object storage one
# ranged request per block, so 64 samples (about 7 MB of ImageNet) per request. DALI's reader opens one entry per
# run of a shard (see pipeline/dali.py), and more than about 30,000 entries exhaust its mappings and then the open
# files: 128 keeps ImageNet on one GPU at 10,000 entries, and DALI's single 2,048-sample buffer mixes blocks far
# better than a torch worker's share of it (at 1.28 M samples on one rank, block 128 re-meets 9.7x the pairs of a
# fresh permutation under DALI's rule, 99x under the torch backend's; block 1: 1.0x under both).
SAMPLE_BLOCK = 1
REQUEST_BLOCK = 64
DALI_BLOCK = 128
ORDER_STREAM = 2  # epoch_seed's stream of the block permutation (1: the torch backend's shuffle buffer)


def epoch_order(shard_samples, *, seed, epoch, block):
    """Sample ids in the order train epoch `epoch` reads them (see the module docstring), or None for block 0
    (storage order). shard_samples: samples per shard, in manifest order. A function of its arguments alone:
    every rank and every resumed run computes the same order."""
    if block <= 0:
        return None
    sizes = np.asarray(shard_samples, dtype=np.int64)
    total = int(sizes.sum())
    shard_start = np.repeat(np.cumsum(sizes) - sizes, sizes)
    ids = np.arange(total, dtype=np.int64)
    starts = np.flatnonzero((ids - shard_start) % block == 0)  # a block starts every `block` samples of a shard
    lengths = np.diff(np.append(starts, total))
    order = np.random.default_rng(epoch_seed(seed, epoch, ORDER_STREAM)).permutation(len(starts))
    starts, lengths = starts[order], lengths[order]
    # Each block's ids laid out one after the other: position p of block k holds starts[k] + (p - its first).
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + ids


def order_segments(shards, order, start, stop):
    """(shard, first, stop) runs of consecutive samples of one shard that positions [start, stop) of `order`
    (epoch_order's ids; None: storage order) read, in reading order."""
    if order is None:
        return shard_segments(shards, start, stop)
    ids = order[start:stop]
    if not len(ids):
        return []
    offsets = np.array([shard.offset for shard in shards], dtype=np.int64)
    owner = np.searchsorted(offsets, ids, side="right") - 1
    breaks = np.flatnonzero((np.diff(ids) != 1) | (np.diff(owner) != 0)) + 1
    firsts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(ids)]])
    return [(shards[owner[a]], int(ids[a] - offsets[owner[a]]), int(ids[b - 1] - offsets[owner[a]] + 1))
            for a, b in zip(firsts.tolist(), ends.tolist())]


def epoch_seed(seed, epoch, *streams):
    """A 31-bit seed derived from (seed, epoch, *streams): independent streams, reproducible for any epoch."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), *(int(s) for s in streams)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)
