"""Phase 2 of a conversion, planning: the good samples of a split shuffled with the seeded permutation and cut
into shard tasks whose sample counts differ by at most one and that respect --max-count and --max-size."""
import hashlib
import itertools
import json
import math
import os
import random

from .format import BLOCK, FORMAT_VERSION, RECORD, shard_name
from .imagecheck import target_side
from .writer import PlannedSample, ShardTask

SAMPLE_OVERHEAD = 3 * BLOCK  # tar headers of .jpg and .cls plus the one data block of .cls


def needs_downscale(check, max_side):
    return target_side(check.width, check.height, max_side) is not None


def planned_bytes(source, check, max_side):
    """Tar bytes a sample will take; re-encoded images are estimated from the source size (scaled by area when
    downscaled), the rest is exact."""
    data = source.size
    side = target_side(check.width, check.height, max_side)
    if side:
        data = max(1, int(data * (side / max(check.width, check.height)) ** 2))
    return SAMPLE_OVERHEAD + data + (-data % BLOCK)


def count_shards(sample_bytes, max_count, max_size):
    """Fewest shards such that equal-count shards (counts differ by at most one) respect both limits; a single
    sample larger than --max-size gets a shard to itself. Found by bisection, so for sizes that do not grow
    evenly with the count the answer may be a few shards above the minimum, never over the limits."""
    n = len(sample_bytes)
    fewest = math.ceil(n / max_count)
    if max_size is None:
        return fewest
    prefix = list(itertools.accumulate(sample_bytes, initial=0))
    budget = max_size - 2 * BLOCK - RECORD  # the end-of-archive blocks and record padding come on top

    def fits(shards):
        bounds = [j * n // shards for j in range(shards + 1)]
        return all(prefix[end] - prefix[start] <= budget or end - start == 1
                   for start, end in zip(bounds, bounds[1:]))

    low = max(fewest, math.ceil(prefix[-1] / max(budget, 1)))
    if low >= n or fits(low):
        return min(low, n)
    high = n  # one sample per shard always fits
    while high - low > 1:  # invariant: `low` does not fit, `high` does
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def plan_shards(split, sources, checks, args, out, state):
    """Shuffles the good samples with the seeded permutation and cuts them into shard tasks."""
    good = [i for i, check in enumerate(checks) if check.status != "skipped"]
    # Seeding with a string is stable across Python versions and platforms (it is hashed with SHA-512).
    random.Random(f"make_shards:{args.seed}:{split}").shuffle(good)
    sizes = [planned_bytes(sources[i], checks[i], args.max_side) for i in good]
    n = len(good)
    num_shards = count_shards(sizes, args.max_count, args.max_size) if n else 0
    tasks = []
    for shard in range(num_shards):
        samples = []
        for position in range(shard * n // num_shards, (shard + 1) * n // num_shards):
            source, check = sources[good[position]], checks[good[position]]
            reencode = check.status == "fixed" or needs_downscale(check, args.max_side)
            samples.append(PlannedSample(f"{split}_{position:08d}", source.relpath, source.path, source.label,
                                         source.size, source.mtime_ns, reencode))
        name = shard_name(split, shard)
        plan = {"format_version": FORMAT_VERSION, "quality": args.quality, "max_side": args.max_side,
                "samples": [(s.key, s.relpath, s.label, s.size, s.mtime_ns, s.reencode) for s in samples]}
        tasks.append(ShardTask(out, name, os.path.join(state, f"{name}.json"), hash_json(plan), samples,
                               args.quality, args.max_side))
    return tasks


def hash_json(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
