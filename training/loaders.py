"""The train and val loaders of a run (pipeline.build_loader with the RunConfig's settings)."""
import torch

from pipeline import BackendUnavailable, ShardError, build_loader
from pipeline.shards import read_manifest

from .config import UsageError


def build_loaders(run):
    """(train loader, or None with --evaluate; val loader, or None without a val split). A shard folder that
    cannot be used is found here, before any training: a UsageError naming it."""
    common = dict(rank=run.world.rank, world_size=run.world.size, workers=run.loader_workers,
                  device=run.world.device, seed=run.seed, dtype=run.amp_dtype or torch.float32, backend=run.backend,
                  verify=run.verify_shards, verify_dir="" if run.verify_record == "none" else run.verify_record,
                  cache_dir=run.cache_dir or None, cache_bytes=int(run.cache_size * 2**30))
    try:
        splits = read_manifest(run.data)["splits"]
        train = None if run.evaluate else build_loader(run.data, "train", run.per_rank_batch,
                                                       image_size=run.image_size.at(run.start_epoch),
                                                       auto_augment=run.auto_augment, reprob=run.reprob, **common)
        val = build_loader(run.data, "val", run.per_rank_batch, image_size=run.val_image_size,
                           **common) if "val" in splits else None
    except (ShardError, BackendUnavailable, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if val is None and run.evaluate:
        raise UsageError(f"{run.data} has no val split to evaluate on")
    if train is not None and len(train) == 0:
        raise UsageError(f"the train split has {train.num_samples} samples, fewer than one global batch of "
                         f"{run.batch_size}")
    return train, val


def warn_about_empty_classes(data, log):
    """Names the classes a split has no sample of (make_shards records per-class counts, and stores such a split
    only with --allow-empty-classes): a class without train samples cannot be learned."""
    manifest = read_manifest(data)
    for split, entry in manifest["splits"].items():
        empty = [name for name, count in zip(manifest["classes"], entry.get("class_counts") or []) if count == 0]
        if empty:
            shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            log(f"warning: the {split} split has no sample of {len(empty)} of {len(manifest['classes'])} classes: "
                f"{shown}")
