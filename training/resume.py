"""Resuming: what a run saves and how it goes on from it.

The state a checkpoint holds (weights, optimizer, scaler, weight average, RNGs, the position in training, the
run's configuration, the class names), the choice of the checkpoint `--resume` goes on from (`auto`: the newest
intact one), and its loading back, checked against the run's settings. The checkpoint files themselves (names,
checksum, atomic writes, loading): training/checkpoint.py.
"""
import os
import random
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from model import Network, load_original_checkpoint

from . import distributed
from .checkpoint import DamagedCheckpoint, best_path, check_finite_weights, checkpoint_path, load, previous_path
from .checkpoint import save as save_checkpoint
from .errors import UsageError
from .stop import OTHER_RANK_DAMAGED, AgreedShardError


def rng_state():
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# What make_state() writes and restore() reads back to go on training: a file without them (an average of
# checkpoints, an export) holds weights alone.
TRAINING_STATE = ("model", "optimizer", "scaler", "epoch", "batch", "step", "best_prec1", "rng", "config")


def training_state_problem(ckpt, path):
    """Why the checkpoint cannot be trained on from where it stopped (None when it can): our format without the
    whole training state. The authors' checkpoints (weights alone) are resumed from their weights."""
    if is_original_format(ckpt):
        return None
    missing = [key for key in TRAINING_STATE if key not in ckpt]
    if not missing:
        return None
    return (f"checkpoint {path} holds no training state ({', '.join(missing)} missing"
            + ("; an average of checkpoints" if "averaged_from" in ckpt else "") + ")")


RESUME_ADVICE = ("train.py goes on only from the checkpoints it saves; start from these weights with --pretrained, or "
                 "evaluate them with --evaluate --resume")


def load_for_resume(resume, output_dir, prefix, log, training=True):
    """(path, checkpoint) for --resume: none for '' (or 'auto' with no checkpoint of `prefix` in output_dir);
    PATH must load intact and, for `training`, hold the training state; 'auto' goes on from the newest intact
    checkpoint of the prefix that holds it, naming each one skipped and why."""
    if not resume:
        return None, {}
    if resume != "auto":
        if not os.path.isfile(resume):
            raise UsageError(f"--resume checkpoint not found: {resume}")
        ckpt = load(resume)
        problem = training and training_state_problem(ckpt, resume)
        if problem:
            raise UsageError(f"--resume {problem}: {RESUME_ADVICE}")
        return resume, ckpt
    latest = checkpoint_path(output_dir, prefix)
    others = [previous_path(output_dir, prefix), best_path(output_dir, prefix)]
    found = [path for path in [latest, *others] if os.path.isfile(path)]
    intact = []
    for path in found:
        try:
            ckpt = load(path)
        except DamagedCheckpoint as exc:
            log(f"=> skipped: {exc}")
            continue
        problem = training_state_problem(ckpt, path)
        if problem:
            log(f"=> skipped: {problem}")
            continue
        if path == latest:  # the newest by construction
            return path, ckpt
        intact.append((path, ckpt))
    if found and not intact:
        raise UsageError(f"--resume auto: no intact checkpoint of prefix {prefix} in {output_dir} (every one "
                         "of " + ", ".join(os.path.basename(p) for p in found) + " is damaged or holds no training "
                         "state)")
    if not intact:
        return None, {}
    # The previous checkpoint or the best one, whichever is further on; at the same step, the validated one.
    path, ckpt = max(intact, key=lambda item: (item[1].get("step", 0), not item[1].get("val_owed", False)))
    log(f"=> resuming from {path}, the newest intact checkpoint")
    return path, ckpt


def check_same_start(world, chosen):
    """UsageError on every rank unless every rank resumes from the same point: each loads the checkpoint from
    --output-dir, which the nodes of a run must share (rank 0 alone writes it)."""
    path, ckpt = chosen
    found = distributed.gather_objects(world, ckpt.get("step") if path else None, "the check of the resume point")
    if len(set(found)) > 1:
        starts = ", ".join(f"rank {rank}: {'step ' + str(step) if step is not None else 'no checkpoint'}"
                           for rank, step in enumerate(found))
        raise UsageError(f"the ranks would start from different points ({starts}): --output-dir must be one folder "
                         "that every node sees, where rank 0 writes the checkpoints")


def is_original_format(ckpt):
    """True for a checkpoint saved by the CBAM authors' code (no 'model' key; 'state_dict' with their names)."""
    return "model" not in ckpt


def load_model_weights(model, ckpt, path, cfg=None):
    """Loads our checkpoint or, through the key mapping, one released with the authors' code. With the run's
    configuration `cfg`, a checkpoint of another architecture is named as such instead of listing its keys."""
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if cfg is not None and saved is not None and saved.get("att_type") and ("depth" in saved or "arch" in saved):
        try:
            was = (Network.from_config(saved), saved["att_type"])
        except ValueError:  # a network this code does not build: the weights will not fit, as the load says
            was = None
        now = (Network.from_config(cfg), cfg.get("att_type"))
        if was is not None and was != now:
            raise UsageError(f"checkpoint {path} is {was[0].name} {was[1]}, this run is {now[0].name} {now[1]}: "
                             "pass the same --arch, --depth, --widen, --width-mult and --att-type")
    weights = ckpt.get("state_dict", ckpt) if is_original_format(ckpt) else ckpt["model"]
    if isinstance(weights, dict):
        check_finite_weights(weights, path, "state_dict" if is_original_format(ckpt) else "model")
    try:
        if is_original_format(ckpt):
            load_original_checkpoint(model, ckpt)
        else:
            model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"checkpoint {path} does not fit this model: {exc}") from None


# Settings that decide which samples each batch of an epoch holds: a mid-epoch resume is exact only if they match.
DATA_ORDER_SETTINGS = ("world_size", "batch_size", "batch_size_resolved", "backend_resolved", "workers",
                       "workers_per_rank", "seed", "image_size", "shuffle_block_resolved")
# What a setting was in checkpoints written before it was recorded: every epoch then read the storage order.
_BEFORE_RECORDED = {"shuffle_block_resolved": 0}


def check_mid_epoch_resume(saved_cfg, cfg, path):
    """UsageError when a checkpoint saved mid-epoch is resumed with settings that change the epoch's data order
    (the skipped batches would then not be the ones already trained on)."""
    # Compared as text: older checkpoints hold image_size as a number, newer ones as its schedule ("224").
    saved_cfg = {**{k: v for k, v in _BEFORE_RECORDED.items() if k in cfg}, **saved_cfg}
    changed = {k: (saved_cfg.get(k), cfg.get(k)) for k in DATA_ORDER_SETTINGS
               if k in saved_cfg and str(saved_cfg.get(k)) != str(cfg.get(k))}
    if changed:
        raise UsageError(f"checkpoint {path} stopped mid-epoch; resume it with the same "
                         + ", ".join(f"{_FLAG_OF.get(k, k)} (saved {old}, now {new})"
                                     for k, (old, new) in changed.items()))


_FLAG_OF = {"shuffle_block_resolved": "--shuffle-block"}  # the flag to pass, where a setting is not one


@dataclass(frozen=True)
class Position:
    """Where training goes on: the next epoch and batch, the global step done, the best val top-1 so far, the
    wall-clock seconds trained until then (over all resumed runs), and whether the epoch before still has to
    be validated (its checkpoint is written before validation too)."""
    epoch: int
    batch: int = 0
    step: int = 0
    best_top1: float = 0.0
    elapsed_s: float = 0.0
    val_owed: bool = False


def make_state(learner, position, run, classes=None):
    """The checkpoint at `position`: plain data only, so torch.load(weights_only=True) reads it. `classes`, the
    names of the labels in order (the shards' class list), lets a checkpoint be used without its shards."""
    cfg = run.as_dict()
    state = {"model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict(),
             "scaler": learner.scaler.state_dict(), "epoch": position.epoch, "batch": position.batch,
             "step": position.step, "best_prec1": position.best_top1, "elapsed_s": position.elapsed_s,
             "val_owed": position.val_owed,
             "arch": run.network.tag, "rng": rng_state(), "config": cfg, "classes": list(classes or [])}
    if learner.ema is not None:
        state["ema"] = learner.ema.state_dict()
    return state


def restore(run, learner, log=print, chosen=None):
    """Loads --resume (if any; `chosen`: the (path, checkpoint) load_for_resume gave already) into the model and,
    unless only evaluating, the optimizer, scaler, weight average and RNGs; starts the weight average
    (--ema-decay) from the loaded weights when the checkpoint has none. Returns (the Position to go on from, the
    checkpoint's path or None)."""
    start = Position(run.start_epoch)
    path, ckpt = chosen or load_for_resume(run.resume, run.output_dir, run.prefix, log, training=not run.evaluate)
    cfg = run.as_dict()
    if path:
        load_model_weights(learner.model, ckpt, path, cfg)
    if run.evaluate and run.eval_weights == "ema":
        if "ema" not in ckpt:
            raise UsageError(f"checkpoint {path} holds no weight average (it was trained without "
                             "--ema-decay): use --eval-weights raw")
        learner.model.load_state_dict(ckpt["ema"])
    if learner.ema is not None:
        if "ema" in ckpt:
            learner.ema.load_state_dict(ckpt["ema"])
        else:  # the average starts from the weights just loaded
            learner.ema.restart()
    if not path or run.evaluate or is_original_format(ckpt):
        return start, path
    learner.optimizer.load_state_dict(ckpt["optimizer"])
    learner.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    position = Position(ckpt["epoch"], ckpt["batch"], ckpt["step"], ckpt["best_prec1"], ckpt.get("elapsed_s", 0.0),
                        ckpt.get("val_owed", False))
    if ckpt["batch"] and ckpt["config"].get("world_size", cfg["world_size"]) != cfg["world_size"]:
        return epoch_again(position, ckpt["config"]["world_size"], cfg["world_size"], log), path
    if ckpt["batch"]:
        check_mid_epoch_resume(ckpt["config"], cfg, path)
    return position, path


def epoch_again(position, was_world, world, log):
    """The Position of a mid-epoch checkpoint resumed by a world of another size: its epoch goes on from the start.
    The batches of an epoch are a function of the world size (pipeline/rank_plan.py cuts the split by rank, and
    BatchNorm normalises each rank's share on its own), so no order of the rest of the epoch on the new world
    trains what the old one would have: the epoch's samples are read again, with the trained weights."""
    log(f"=> world size {world}, the checkpoint's {was_world}: the order of epoch {position.epoch} depends on it, so "
        f"the epoch goes on from its start, redoing the {position.batch} steps of it already trained")
    return replace(position, batch=0, step=position.step - position.batch)


class Saver:
    """The one checkpoint path of a run: rank 0 writes, every rank waits for it. `elapsed_s()` gives the
    wall-clock seconds trained so far, recorded with each checkpoint. `due()` says when --save-every minutes have
    passed since the last save (or the start)."""

    def __init__(self, run, learner, elapsed_s, classes=None):
        self.run, self.learner, self.elapsed_s, self.classes = run, learner, elapsed_s, classes
        self.last_save = time.monotonic()
        self.best_top1 = 0.0  # the best val top-1 so far, which a mid-epoch save records

    def due(self):
        return self.run.save_every > 0 and time.monotonic() - self.last_save >= self.run.save_every * 60

    def save(self, position, is_best=False, epoch_end=False):
        """epoch_end: the epoch's last save, which --keep-epochs also keeps as the epoch's own file."""
        run, path = self.run, None
        if run.world.is_main:
            position = replace(position, elapsed_s=self.elapsed_s())
            path = save_checkpoint(run.output_dir, run.prefix, make_state(self.learner, position, run, self.classes),
                                   is_best, run.keep_epochs if epoch_end else 0)
        distributed.barrier(run.world)
        self.last_save = time.monotonic()
        return path

    def stop_for_damage(self, position, problem, log, save=True):
        """Saves (unless `save` is false: nothing trained since the last save), then raises the ShardError (the
        same on every rank) that ends the run."""
        if save:
            path = self.save(position)
            log(f"=> a damaged shard: saved {path} at epoch {position.epoch}, batch {position.batch}; exiting")
        raise AgreedShardError(distributed.first_message(self.run.world, problem) or OTHER_RANK_DAMAGED)
