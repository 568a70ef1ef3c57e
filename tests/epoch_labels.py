"""Launched by torchrun from the object-storage tests: each rank reads one train and one val epoch of DATA with
BACKEND; rank 0 writes every rank's batch count and labels per split (gathered over gloo) to OUT as JSON. Every
location is read in the same order (one shuffle block), so that their epochs can be compared.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/epoch_labels.py DATA BACKEND OUT [CACHE]
"""
import json
import sys

import torch.distributed as dist

from pipeline import build_loader

SHUFFLE_BLOCK = 5  # runs of several samples, fewer than a shard holds: blocks of different shards interleave


def main():
    data, backend, out = sys.argv[1:4]
    cache = sys.argv[4] if len(sys.argv) > 4 else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {}
    for split in ("train", "val"):
        loader = build_loader(data, split, 4, backend=backend, rank=rank, world_size=world, workers=2,
                              device="cpu", image_size=32, seed=5, verify="background", verify_dir="",
                              cache_dir=cache, shuffle_block=SHUFFLE_BLOCK)
        loader.set_epoch(1)
        labels = [[int(label) for label in batch_labels] for _, batch_labels in loader]
        mine[split] = {"batches": len(labels), "labels": labels}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(gathered, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
