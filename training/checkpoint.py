"""Checkpoints in the CBAM authors' names, written atomically, loadable with torch.load(weights_only=True).

Everything is plain data: tensors, numbers, strings, lists and dicts (RNG states included), so a checkpoint
never needs unpickling of arbitrary objects.
"""
import io
import json
import os
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from model import load_original_checkpoint
from pipeline import ShardError

from . import config, distributed
from .ema import WeightAverage
from .stop import OTHER_RANK_DAMAGED


def checkpoint_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_checkpoint.pth.tar")


def best_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_model_best.pth.tar")


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


class CheckpointError(Exception):
    """A checkpoint could not be written; the message is one line naming the file, the folder and the bytes."""


TEMPORARY_MARK = ".tmp."  # the temporary name of a checkpoint being written: {final name}.tmp.{writer's pid}


def save_atomic(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename: never a torn checkpoint.

    The checkpoint is serialised in memory first, so its size is known before anything is written: a folder
    without that much free space is refused at once. On any write error the temporary file is removed (a full
    disk stays usable) and CheckpointError says which folder needs how many bytes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    free = shutil.disk_usage(folder).free
    if free < len(data):
        raise CheckpointError(f"cannot save checkpoint {path}: {len(data):,} bytes needed, {free:,} free in {folder}")
    tmp = f"{path}{TEMPORARY_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise CheckpointError(f"cannot save checkpoint {path}: {exc.strerror or exc}; {len(data):,} bytes needed, "
                              f"{shutil.disk_usage(folder).free:,} free in {folder}") from None


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def save(output_dir, prefix, state, is_best):
    path = checkpoint_path(output_dir, prefix)
    save_atomic(state, path)
    if is_best:
        best = best_path(output_dir, prefix)
        tmp = f"{best}{TEMPORARY_MARK}{os.getpid()}"
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, best)
        except OSError as exc:
            _remove_quietly(tmp)
            raise CheckpointError(f"cannot save checkpoint {best}: {exc.strerror or exc}; "
                                  f"{os.path.getsize(path):,} bytes needed, "
                                  f"{shutil.disk_usage(output_dir).free:,} free in {output_dir}") from None
    return path


def sweep_temporaries(output_dir, prefix):
    """Removes the temporary files of interrupted saves of this prefix (their writer is no longer running);
    returns their paths."""
    if not os.path.isdir(output_dir):
        return []
    finals = (os.path.basename(checkpoint_path(output_dir, prefix)), os.path.basename(best_path(output_dir, prefix)))
    removed = []
    for name in os.listdir(output_dir):
        final, mark, pid = name.rpartition(TEMPORARY_MARK)
        if not mark or final not in finals or not pid.isdigit() or _running(int(pid)):
            continue
        _remove_quietly(os.path.join(output_dir, name))
        removed.append(os.path.join(output_dir, name))
    return removed


def prepare_output_dir(run, log):
    """Rank 0: creates --output-dir, removes what interrupted saves left there, writes {prefix}_config.json."""
    if not run.world.is_main:
        return
    os.makedirs(run.output_dir, exist_ok=True)
    for path in sweep_temporaries(run.output_dir, run.prefix):
        log(f"removed {path}, left by an interrupted save")
    with open(os.path.join(run.output_dir, f"{run.prefix}_config.json"), "w") as f:
        json.dump(run.as_dict(), f, indent=1, sort_keys=True)


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def resolve_resume(resume, output_dir, prefix):
    """The checkpoint file for --resume ('' = none; 'auto' = the latest in output_dir, or none if absent)."""
    if not resume:
        return None
    if resume == "auto":
        path = checkpoint_path(output_dir, prefix)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise config.UsageError(f"--resume checkpoint not found: {resume}")
    return resume


def load(path):
    if os.path.getsize(path) == 0:
        raise config.UsageError(f"cannot load checkpoint {path}: the file is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: say which and why, in one line
        # Only the first line of torch's message: the rest advises weights_only=False, which would let the file
        # run arbitrary code; our checkpoints and the authors' never need it.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise config.UsageError(f"cannot load checkpoint {path}: not a checkpoint of plain tensors and numbers, or "
                                f"damaged ({type(exc).__name__}{': ' + first if first else ''})") from None


def is_original_format(ckpt):
    """True for a checkpoint saved by the CBAM authors' code (no 'model' key; 'state_dict' with their names)."""
    return "model" not in ckpt


def load_model_weights(model, ckpt, path, cfg=None):
    """Loads our checkpoint or, through the key mapping, one released with the authors' code. With the run's
    configuration `cfg`, a checkpoint of another architecture is named as such instead of listing its keys."""
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if cfg is not None and saved is not None:
        was = (saved.get("depth"), saved.get("att_type"))
        now = (cfg.get("depth"), cfg.get("att_type"))
        if None not in was and was != now:
            raise config.UsageError(f"checkpoint {path} is ResNet-{was[0]} {was[1]}, this run is ResNet-{now[0]} "
                                    f"{now[1]}: pass the same --depth and --att-type")
    try:
        if is_original_format(ckpt):
            load_original_checkpoint(model, ckpt)
        else:
            model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as exc:
        raise config.UsageError(f"checkpoint {path} does not fit this model: {exc}") from None


# Settings that decide which samples each batch of an epoch holds: a mid-epoch resume is exact only if they match.
DATA_ORDER_SETTINGS = ("world_size", "batch_size", "backend_resolved", "workers", "seed", "image_size")


def check_mid_epoch_resume(saved_cfg, cfg, path):
    """UsageError when a checkpoint saved mid-epoch is resumed with settings that change the epoch's data order
    (the skipped batches would then not be the ones already trained on)."""
    # Compared as text: older checkpoints hold image_size as a number, newer ones as its schedule ("224").
    changed = {k: (saved_cfg.get(k), cfg.get(k)) for k in DATA_ORDER_SETTINGS
               if str(saved_cfg.get(k)) != str(cfg.get(k))}
    if changed:
        raise config.UsageError(f"checkpoint {path} stopped mid-epoch; resume it with the same "
                    + ", ".join(f"{k} (saved {old}, now {new})" for k, (old, new) in changed.items()))


@dataclass(frozen=True)
class Position:
    """Where training goes on: the next epoch and batch, the global step done, the best val top-1 so far, and
    the wall-clock seconds trained until then (over all resumed runs)."""
    epoch: int
    batch: int = 0
    step: int = 0
    best_top1: float = 0.0
    elapsed_s: float = 0.0


def make_state(learner, position, run, classes=None):
    """The checkpoint at `position`: plain data only, so torch.load(weights_only=True) reads it. `classes`, the
    names of the labels in order (the shards' class list), lets a checkpoint be used without its shards."""
    cfg = run.as_dict()
    state = {"model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict(),
             "scaler": learner.scaler.state_dict(), "epoch": position.epoch, "batch": position.batch,
             "step": position.step, "best_prec1": position.best_top1, "elapsed_s": position.elapsed_s,
             "arch": f"resnet{cfg['depth']}", "rng": rng_state(), "config": cfg, "classes": list(classes or [])}
    if learner.ema is not None:
        state["ema"] = learner.ema.state_dict()
    return state


def restore(run, learner):
    """Loads --resume (if any) into the model and, unless only evaluating, the optimizer, scaler, weight
    average and RNGs; starts the weight average (--ema-decay) from the loaded weights when the checkpoint has
    none. Returns (the Position to go on from, the checkpoint's path or None)."""
    start = Position(run.start_epoch)
    path = resolve_resume(run.resume, run.output_dir, run.prefix)
    ckpt = load(path) if path else {}
    cfg = run.as_dict()
    if path:
        load_model_weights(learner.model, ckpt, path, cfg)
    if run.evaluate and run.eval_weights == "ema":
        if "ema" not in ckpt:
            raise config.UsageError(f"checkpoint {path} holds no weight average (it was trained without "
                                    "--ema-decay): use --eval-weights raw")
        learner.model.load_state_dict(ckpt["ema"])
    if run.ema_decay and not run.evaluate:
        learner.ema = WeightAverage(learner.model, run.ema_decay)
        if "ema" in ckpt:
            learner.ema.load_state_dict(ckpt["ema"])
    if not path or run.evaluate or is_original_format(ckpt):
        return start, path
    learner.optimizer.load_state_dict(ckpt["optimizer"])
    learner.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    if ckpt["batch"]:
        check_mid_epoch_resume(ckpt["config"], cfg, path)
    return Position(ckpt["epoch"], ckpt["batch"], ckpt["step"], ckpt["best_prec1"], ckpt.get("elapsed_s", 0.0)), path


class Saver:
    """The one checkpoint path of a run: rank 0 writes, every rank waits for it. `elapsed_s()` gives the
    wall-clock seconds trained so far, recorded with each checkpoint."""

    def __init__(self, run, learner, elapsed_s, classes=None):
        self.run, self.learner, self.elapsed_s, self.classes = run, learner, elapsed_s, classes

    def save(self, position, is_best=False):
        run, path = self.run, None
        if run.world.is_main:
            position = Position(position.epoch, position.batch, position.step, position.best_top1, self.elapsed_s())
            path = save(run.output_dir, run.prefix, make_state(self.learner, position, run, self.classes), is_best)
        distributed.barrier(run.world)
        return path

    def stop_for_damage(self, position, problem, log):
        """Saves, then raises the ShardError (the same on every rank) that ends the run."""
        path = self.save(position)
        log(f"=> a damaged shard: saved {path} at epoch {position.epoch}, batch {position.batch}; exiting")
        error = ShardError(distributed.first_message(self.run.world, problem) or OTHER_RANK_DAMAGED)
        error.same_on_every_rank = True
        raise error
