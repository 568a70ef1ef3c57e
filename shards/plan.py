"""Phase 2 of a conversion, planning: the good samples of a split shuffled with the seeded permutation and cut
into shard tasks whose sample counts differ by at most one and that respect --max-count and --max-size."""
import hashlib
import json
import math
import os
import random
from array import array

import numpy as np

from .format import BLOCK, FORMAT_VERSION, RECORD, shard_name
from .imagecheck import CHECK_STATUSES, pixel_limit, target_side
from .writer import PlannedSample, ShardTask

SAMPLE_OVERHEAD = 3 * BLOCK  # tar headers of .jpg and .cls plus the one data block of .cls


def planned_sizes(sources, checks, order, max_side):
    """Tar bytes each sample of `order` (source indices) will take, as a numpy int64 array; re-encoded images are
    estimated from the source size (scaled by area when downscaled), the rest is exact."""
    data = sources.sizes[order].astype(np.int64)
    width, height = checks.width[order], checks.height[order]
    # target_side is None unless one of these holds: only those images are looked at one by one.
    maybe = width * height > pixel_limit()
    if max_side:
        maybe |= np.maximum(width, height) > max_side
    for k in np.flatnonzero(maybe):
        w, h = int(width[k]), int(height[k])
        side = target_side(w, h, max_side)
        if side:
            data[k] = max(1, int(int(data[k]) * (side / max(w, h)) ** 2))
    return SAMPLE_OVERHEAD + data + (-data % BLOCK)


def count_shards(sample_bytes, max_count, max_size):
    """Fewest shards such that equal-count shards (counts differ by at most one) respect both limits; a single
    sample larger than --max-size gets a shard to itself. Found by bisection, so for sizes that do not grow
    evenly with the count the answer may be a few shards above the minimum, never over the limits."""
    n = len(sample_bytes)
    fewest = math.ceil(n / max_count)
    if max_size is None:
        return fewest
    prefix = np.zeros(n + 1, np.int64)
    np.cumsum(np.asarray(sample_bytes, np.int64), out=prefix[1:])
    budget = max_size - 2 * BLOCK - RECORD  # the end-of-archive blocks and record padding come on top

    def fits(shards):
        bounds = [j * n // shards for j in range(shards + 1)]
        return all(prefix[end] - prefix[start] <= budget or end - start == 1
                   for start, end in zip(bounds, bounds[1:]))

    low = max(fewest, math.ceil(int(prefix[-1]) / max(budget, 1)))
    if low >= n or fits(low):
        return min(low, n)
    high = n  # one sample per shard always fits
    while high - low > 1:  # invariant: `low` does not fit, `high` does
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


class ShardPlan:
    """The shards of a split: its good samples in their shuffled order (an index into the SourceTable, 8 bytes a
    sample) cut into `len(plan)` runs. A shard's ShardTask, with a PlannedSample per sample and the hash of its
    plan, is made only when `tasks()` hands it on, so only the shards in flight exist as Python objects: as a list
    of tasks made up front they cost about 180 bytes a sample for the whole write phase."""

    def __init__(self, split, sources, checks, order, num_shards, args, out, state):
        self.split, self.sources, self.checks, self.order = split, sources, checks, order
        self.num_shards, self.args, self.out, self.state = num_shards, args, out, state

    def __len__(self):
        return self.num_shards

    @property
    def num_samples(self):
        return len(self.order)

    def bounds(self, shard):
        """(first, end) positions of a shard's samples in the shuffled order."""
        n = len(self.order)
        return shard * n // self.num_shards, (shard + 1) * n // self.num_shards

    def name(self, shard):
        return shard_name(self.split, shard)

    def source_bytes(self, shard):
        first, end = self.bounds(shard)
        return int(self.sources.sizes[self.order[first:end]].sum())

    def task(self, shard):
        args, sources, checks = self.args, self.sources, self.checks
        first, end = self.bounds(shard)
        order = self.order[first:end]
        # Whole columns of the shard at once: numpy's element access costs more than the rest of a sample's work.
        reencode = (checks.status[order] == CHECK_STATUSES.index("fixed")).tolist()
        widths, heights = checks.width[order].tolist(), checks.height[order].tolist()
        labels, sizes = sources.labels[order].tolist(), sources.sizes[order].tolist()
        mtimes = sources.mtimes[order].tolist()
        samples = []
        for position, i, label, size, mtime_ns, width, height, fixed in zip(
                range(first, end), order.tolist(), labels, sizes, mtimes, widths, heights, reencode):
            relpath = sources.relpath(i)
            samples.append(PlannedSample(f"{self.split}_{position:08d}", relpath, sources.prefix + relpath,
                                         label, size, mtime_ns,
                                         fixed or target_side(width, height, args.max_side) is not None))
        name = self.name(shard)
        plan = {"format_version": FORMAT_VERSION, "quality": args.quality, "max_side": args.max_side,
                "samples": [(s.key, s.relpath, s.label, s.size, s.mtime_ns, s.reencode) for s in samples]}
        return ShardTask(self.out, name, os.path.join(self.state, f"{name}.json"), hash_json(plan), samples,
                         args.quality, args.max_side)

    def tasks(self):
        """Every shard's ShardTask in shard order, each made when it is asked for."""
        return (self.task(shard) for shard in range(self.num_shards))


def plan_shards(split, sources, checks, args, out, state):
    """Shuffles the good samples (of a SourceTable and its CheckTable) with the seeded permutation and cuts them
    into shards: a ShardPlan."""
    good = array("q", np.flatnonzero(checks.status != CHECK_STATUSES.index("skipped")).astype(np.int64).tobytes())
    # Seeding with a string is stable across Python versions and platforms (it is hashed with SHA-512). shuffle()
    # draws the same swaps for an array as for a list of the same length, so the permutation is the one a list
    # of indices got.
    random.Random(f"make_shards:{args.seed}:{split}").shuffle(good)
    order = np.frombuffer(good, np.int64) if good else np.zeros(0, np.int64)
    n = len(order)
    num_shards = count_shards(planned_sizes(sources, checks, order, args.max_side), args.max_count,
                              args.max_size) if n else 0
    return ShardPlan(split, sources, checks, order, num_shards, args, out, state)


def hash_json(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
