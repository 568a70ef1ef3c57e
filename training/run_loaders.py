"""The train and val loaders of a run (pipeline.build_loader with the RunConfig's settings)."""
import os

import torch

from pipeline import BackendUnavailable, ShardError, build_loader
from pipeline.folder import FolderLoader
from shards.format import MANIFEST
from shards.manifest import read_manifest
from shards.storage import is_remote, normalize

from .errors import UsageError


def build_loaders(run, trained=None, log=print):
    """(train loader, or None with --evaluate; val loader, or None without a val split). A shard folder that
    cannot be used is found here, before any training: a UsageError naming it; classes without samples are
    named through `log`. With --evaluate, `trained` is the checkpoint's training.load.Trained: DATA may be an
    image folder, and its classes must be the checkpoint's. The manifest is read once, here."""
    if run.evaluate and is_image_folder(run.data):
        return None, _folder_loader(run, trained)
    try:
        manifest = read_manifest(run.data)
    except ShardError as exc:
        raise UsageError(str(exc)) from None
    if run.evaluate:
        check_classes(trained, manifest["classes"], run.data)
    common = dict(rank=run.world.rank, world_size=run.world.size, workers=run.loader_workers,
                  device=run.world.device, seed=run.seed, dtype=run.amp_dtype or torch.float32, backend=run.backend,
                  verify=run.verify_shards, verify_dir="" if run.verify_record == "none" else run.verify_record,
                  cache_dir=run.cache_dir or None, cache_bytes=int(run.cache_size * 2**30), manifest=manifest)
    try:
        splits = manifest.get("splits") or {}
        train = None if run.evaluate else build_loader(run.data, "train", run.per_rank_batch,
                                                       image_size=run.image_size.at(run.start_epoch),
                                                       auto_augment=run.auto_augment, reprob=run.reprob,
                                                       shuffle_block=run.shuffle_block, **common)
        val = build_loader(run.data, "val", run.per_rank_batch, image_size=run.val_image_size,
                           **common) if "val" in splits else None
    except (ShardError, BackendUnavailable, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if val is None and run.evaluate:
        raise UsageError(f"{run.data} has no val split to evaluate on")
    if train is not None and len(train) == 0:
        raise UsageError(f"the train split has {train.num_samples} samples, fewer than one global batch of "
                         f"{run.global_batch}")
    warn_about_empty_classes(manifest, log)
    return train, val


def is_image_folder(data):
    """True for a local folder without manifest.json: --evaluate reads its images (pipeline/folder.py)."""
    location = normalize(data)
    return not is_remote(location) and not os.path.isfile(os.path.join(location, MANIFEST))


def _folder_loader(run, trained):
    try:
        loader = FolderLoader(normalize(run.data), run.per_rank_batch, classes=trained.classes,
                              rank=run.world.rank, world_size=run.world.size, workers=run.loader_workers,
                              device=run.world.device, image_size=run.val_image_size,
                              dtype=run.amp_dtype or torch.float32)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_classes(trained, loader.classes, run.data)
    return loader


def check_classes(trained, classes, data):
    """UsageError unless DATA's class list (shards) is the checkpoint's, or, for a checkpoint without one, has
    as many classes as its classifier."""
    if trained.classes is not None and tuple(classes) != tuple(trained.classes):
        differ = next((i for i, (a, b) in enumerate(zip(classes, trained.classes)) if a != b), None)
        where = f"class {differ} is {classes[differ]} there, {trained.classes[differ]} in the checkpoint" \
            if differ is not None else f"{len(classes)} classes there, {len(trained.classes)} in the checkpoint"
        raise UsageError(f"{data} has other classes than checkpoint {trained.path} was trained on: {where}")
    if trained.classes is None and len(classes) != trained.num_classes:
        raise UsageError(f"{data} has {len(classes)} classes, checkpoint {trained.path} {trained.num_classes} and no "
                         "class list to match them by name")


def warn_about_empty_classes(manifest, log):
    """Names the classes a split of `manifest` has no sample of (make_shards records per-class counts, and stores
    such a split only with --allow-empty-classes): a class without train samples cannot be learned."""
    for split, entry in manifest["splits"].items():
        empty = [name for name, count in zip(manifest["classes"], entry.get("class_counts") or []) if count == 0]
        if empty:
            shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            log(f"warning: the {split} split has no sample of {len(empty)} of {len(manifest['classes'])} classes: "
                f"{shown}")
