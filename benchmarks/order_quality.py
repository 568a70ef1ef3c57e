"""How different one epoch's sample order is from the next, at the user's scale: this trainer's order rules against
torch's DistributedSampler, in the same run.

    python benchmarks/order_quality.py [--samples 1281167] [--world 8] [--batch 256] [--workers 8] [--record]

Each order is a global sequence of sample ids per epoch (global batch after global batch, each the ranks' batches
in rank order), produced by replaying the rules of the loaders rather than by reading shards, so ImageNet's 1.28 M
samples take seconds:
- torch: pipeline/rank_plan.py's rank ranges (rotated each epoch) and worker shares, each worker's shuffle buffer
  (its share of SHUFFLE_BUFFER, popped at random from the worker's order stream), the DataLoader's round-robin
  over workers, half batches joined (pipeline/torch_backend.py): sample for sample the real loader's order
  (tests/test_order_quality.py compares them).
- dali: the same rank ranges, each read through one shuffle buffer of SHUFFLE_BUFFER (DALI's initial_fill); DALI
  draws from its own generator, so this is its rule with numpy's draws: the same in distribution.
- DistributedSampler(shuffle=True): torch's own sampler (the real one), with its per-epoch permutation.
- fresh permutation: a new random order every epoch, the yardstick.

Two measures between epoch 0 and epoch 1:
- Spearman: the rank correlation of each sample's position in the two epochs (1: the same order, 0: unrelated).
- re-meeting: the pairs of samples that share a global batch in epoch 0 and again in epoch 1, as a multiple of
  what a fresh permutation gives (1x: as random as a permutation; the same neighbours every epoch is large).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import markdown_table, record  # noqa: E402
from pipeline.rank_plan import SHUFFLE_BUFFER, epoch_order, epoch_seed, rank_plan, worker_plans  # noqa: E402
from pipeline.torch_backend import _PIECES_PER_BATCH, ORDER_STREAM  # noqa: E402


def buffered(ids, capacity, rng):
    """`ids` through a shuffle buffer of `capacity`, popped at random (pipeline/torch_backend.py _samples)."""
    out = np.empty(len(ids), dtype=np.int64)
    buffer, n = [], 0
    for sample in ids:
        buffer.append(sample)
        if len(buffer) >= capacity:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            out[n] = buffer.pop()
            n += 1
    while buffer:
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        out[n] = buffer.pop()
        n += 1
    return out


def shard_sizes(samples, shard_size):
    """Samples per shard: make_shards cuts a split into shards whose counts differ by at most one."""
    shards = max(1, -(-samples // shard_size))
    return [samples * (k + 1) // shards - samples * k // shards for k in range(shards)]


def ids_of(samples, order, start, stop):
    return np.arange(start, stop) if order is None else order[start:stop]


def torch_rank_batches(samples, rank, world, batch, workers, epoch, seed, block=0, sizes=None):
    """The rank's batches (a list of id arrays) under the torch backend's rules (sizes: samples per shard)."""
    plan = rank_plan(samples, rank=rank, world_size=world, batch_size=batch, epoch=epoch, train=True)
    order = epoch_order(sizes or [samples], seed=seed, epoch=epoch, block=block)
    pieces = _PIECES_PER_BATCH if workers > 1 and batch % _PIECES_PER_BATCH == 0 else 1
    piece = batch // pieces
    from dataclasses import replace
    worker_plan = replace(plan, batch_size=piece, batches=plan.batches * pieces)
    items = []  # per worker, its items in order
    for w, share in enumerate(worker_plans(worker_plan, max(1, workers))):
        rng = np.random.default_rng(epoch_seed(seed, epoch, rank, w, ORDER_STREAM))
        capacity = max(piece, SHUFFLE_BUFFER // max(1, workers))
        reads = buffered(ids_of(samples, order, share.start, share.stop), capacity, rng)
        items.append([reads[k * piece:(k + 1) * piece] for k in range(share.batches)])
    sequence, k = [], 0  # the DataLoader's round-robin over the workers that still have items
    while any(k < len(worker_items) for worker_items in items):
        sequence += [worker_items[k] for worker_items in items if k < len(worker_items)]
        k += 1
    return [np.concatenate(sequence[i:i + pieces]) for i in range(0, len(sequence), pieces)]


def dali_rank_batches(samples, rank, world, batch, epoch, seed, block=0, sizes=None):
    """The rank's batches under the DALI backends' rules: its range through one shuffle buffer of SHUFFLE_BUFFER."""
    plan = rank_plan(samples, rank=rank, world_size=world, batch_size=batch, epoch=epoch, train=True)
    order = epoch_order(sizes or [samples], seed=seed, epoch=epoch, block=block)
    rng = np.random.default_rng(epoch_seed(seed, epoch, rank))
    reads = buffered(ids_of(samples, order, plan.start, plan.stop), max(1, min(SHUFFLE_BUFFER, plan.samples)), rng)
    return [reads[k * batch:(k + 1) * batch] for k in range(plan.batches)]


def global_order(rank_batches):
    """Global batches (step by step, ranks in order) -> (flat id order, global batch of each position)."""
    steps = len(rank_batches[0])
    batches = [np.concatenate([ranks[s] for ranks in rank_batches]) for s in range(steps)]
    return np.concatenate(batches), np.repeat(np.arange(steps), [len(b) for b in batches])


def torch_order(samples, world, batch, workers, epoch, seed, block=0, sizes=None):
    return global_order([torch_rank_batches(samples, r, world, batch // world, workers, epoch, seed, block, sizes)
                         for r in range(world)])


def dali_order(samples, world, batch, epoch, seed, block=0, sizes=None):
    return global_order([dali_rank_batches(samples, r, world, batch // world, epoch, seed, block, sizes)
                         for r in range(world)])


def sampler_order(samples, world, batch, epoch, seed):
    """torch.utils.data.DistributedSampler(shuffle=True, drop_last=True) on every rank, batched per rank."""
    from torch.utils.data import DistributedSampler
    per_rank = batch // world
    ranks = []
    for r in range(world):
        sampler = DistributedSampler(range(samples), num_replicas=world, rank=r, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        ids = np.fromiter(iter(sampler), dtype=np.int64)
        ranks.append([ids[k * per_rank:(k + 1) * per_rank] for k in range(len(ids) // per_rank)])
    steps = min(len(r) for r in ranks)
    return global_order([r[:steps] for r in ranks])


def permutation_order(samples, world, batch, epoch, seed):
    ids = np.random.default_rng([seed, epoch]).permutation(samples)
    steps = samples // batch
    return ids[:steps * batch], np.repeat(np.arange(steps), batch)


def spearman(order_a, order_b):
    """Rank correlation of the positions of the samples both orders hold."""
    common = np.intersect1d(order_a, order_b)
    pos_a, pos_b = np.empty(order_a.max() + 1, np.int64), np.empty(order_b.max() + 1, np.int64)
    pos_a[order_a], pos_b[order_b] = np.arange(len(order_a)), np.arange(len(order_b))
    ra = np.argsort(np.argsort(pos_a[common])).astype(np.float64)
    rb = np.argsort(np.argsort(pos_b[common])).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def re_meetings(epoch_a, epoch_b, samples):
    """Pairs that share a global batch in both epochs; and what a fresh permutation gives on average."""
    (order_a, batch_a), (order_b, batch_b) = epoch_a, epoch_b
    first = np.full(samples, -1, dtype=np.int64)
    first[order_a] = batch_a
    together = first[order_b]
    keep = together >= 0
    keys = batch_b[keep] * (int(batch_a.max()) + 1) + together[keep]  # (batch in b, batch in a)
    _, counts = np.unique(keys, return_counts=True)
    pairs = int((counts * (counts - 1) // 2).sum())
    size = np.bincount(batch_a)
    pairs_a = float((size * (size - 1) / 2).sum())
    # A fresh permutation puts a given pair of epoch a's batches into one of epoch b's batches with probability
    # sum over b's batches of C(size, 2) / C(N, 2).
    size_b = np.bincount(batch_b)
    expected = pairs_a * float((size_b * (size_b - 1)).sum()) / (samples * (samples - 1))
    return pairs, expected


def orders(args):
    """{row name: order(args, epoch)}: each backend at each --blocks value, then the two yardsticks."""
    named = {}
    for block in args.blocks:
        what = "storage order" if block == 0 else f"block {block}"
        named[f"torch, {what}"] = lambda a, e, b=block: torch_order(a.samples, a.world, a.batch, a.workers, e,
                                                                     a.seed, b, shard_sizes(a.samples, a.shard_size))
        named[f"dali, dali-cpu, {what}"] = lambda a, e, b=block: dali_order(a.samples, a.world, a.batch, e, a.seed,
                                                                             b, shard_sizes(a.samples, a.shard_size))
    named["DistributedSampler(shuffle=True)"] = lambda a, e: sampler_order(a.samples, a.world, a.batch, e, a.seed)
    named["fresh permutation"] = lambda a, e: permutation_order(a.samples, a.world, a.batch, e, a.seed)
    return named


def measure(args):
    rows = []
    for name, order in orders(args).items():
        epochs = [order(args, e) for e in (0, 1)]
        pairs, expected = re_meetings(*epochs, args.samples)
        row = {"order": name, "spearman": round(spearman(epochs[0][0], epochs[1][0]), 5),
               "re_meeting_pairs": pairs, "re_meeting_ratio": round(pairs / expected, 1) if expected else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1281167, help="N (ImageNet's train split by default)")
    p.add_argument("--world", type=int, default=8, help="ranks W")
    p.add_argument("--batch", type=int, default=256, help="global batch B (divides by W)")
    p.add_argument("--workers", type=int, default=8, help="torch backend loader workers per rank")
    p.add_argument("--seed", type=int, default=1234, help="train.py's --seed")
    p.add_argument("--shard-size", type=int, default=1251,
                   help="samples per shard (make_shards' --max-count; ImageNet's train split in 1,024 shards: 1,251)")
    p.add_argument("--blocks", type=lambda text: [int(b) for b in text.split(",")], default=[0, 1, 64, 1251],
                   help="comma-separated --shuffle-block values to measure (0: storage order)")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.batch % args.world or args.samples < args.batch:
        p.error(f"--batch {args.batch} must divide by --world {args.world} and be at most --samples {args.samples}")
    rows = measure(args)
    table = markdown_table(["order between epochs 0 and 1", "Spearman of positions",
                            "pairs sharing a global batch again", "x a fresh permutation"],
                           [[r["order"], r["spearman"], r["re_meeting_pairs"], r["re_meeting_ratio"]] for r in rows])
    title = f"Order quality: N={args.samples}, W={args.world}, B={args.batch}, {args.workers} workers per rank"
    print(title)
    print(table)
    if args.record:
        record(title, table, "Command: python benchmarks/order_quality.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
