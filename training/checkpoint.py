"""Checkpoints in the CBAM authors' names, written atomically, loadable with torch.load(weights_only=True).

Everything is plain data: tensors, numbers, strings, lists and dicts (RNG states included), so a checkpoint
never needs unpickling of arbitrary objects. Each one carries the sha256 of its content, which loading checks:
torch.load reads a zip without checking its CRCs, so bytes changed inside a tensor would otherwise load as
weights. Writing a checkpoint keeps the one before it as {prefix}_checkpoint.prev.pth.tar, and `--resume auto`
goes on from the newest intact one. The authors' released checkpoints have no checksum and load unchecked.
"""
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import torch

from model import load_original_checkpoint

from . import distributed
from .errors import UsageError
from .stop import OTHER_RANK_DAMAGED, AgreedShardError


def checkpoint_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_checkpoint.pth.tar")


def previous_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_checkpoint.prev.pth.tar")


def best_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_model_best.pth.tar")


CHECKSUM_KEY = "sha256"


def content_sha256(state):
    """The sha256 of a checkpoint's content, every key but CHECKSUM_KEY: tensors by dtype, shape and bytes in
    their logical order, anything else by its repr, in the dicts' order (which torch.load keeps). It depends on
    what was saved, not on how torch.save laid it out, so it is computed the same way before saving and after
    loading."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def _feed(digest, value):
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"list {len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


EPOCH_INFIX = "_epoch"  # {prefix}_epoch{E}.pth.tar: the checkpoint at the end of 0-based epoch E (--keep-epochs)


def epoch_path(output_dir, prefix, epoch):
    return os.path.join(output_dir, f"{prefix}{EPOCH_INFIX}{epoch}.pth.tar")


def kept_epochs(output_dir, prefix):
    """{epoch: path} of the per-epoch checkpoints of `prefix` in output_dir."""
    head, tail = f"{prefix}{EPOCH_INFIX}", ".pth.tar"
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    return {int(name[len(head):-len(tail)]): os.path.join(output_dir, name) for name in names
            if name.startswith(head) and name.endswith(tail) and name[len(head):-len(tail)].isdigit()}


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


class DamagedCheckpoint(UsageError):
    """A checkpoint file that cannot be used as saved: empty, unreadable, or not matching its checksum."""


TEMPORARY_MARK = ".tmp."  # the temporary name of a checkpoint being written: {final name}.tmp.{writer's pid}


def save_atomic(obj, path, previous=None):
    """torch.save to a temporary file in the same folder, fsync, then rename: never a torn checkpoint. With
    `previous`, the file at `path` is first renamed to it (so a crash between the renames leaves that one).

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
        if previous and os.path.exists(path):
            os.replace(path, previous)
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


def save(output_dir, prefix, state, is_best, keep_epochs=0):
    """Writes {prefix}_checkpoint.pth.tar with its checksum, keeping the one before as .prev; copies it to
    {prefix}_model_best.pth.tar when `is_best`, and with keep_epochs K (at an epoch's end) to
    {prefix}_epoch{E}.pth.tar, deleting the per-epoch copies older than the last K; returns its path."""
    path = checkpoint_path(output_dir, prefix)
    save_atomic({**state, CHECKSUM_KEY: content_sha256(state)}, path, previous_path(output_dir, prefix))
    if is_best:
        _copy_atomic(path, best_path(output_dir, prefix), output_dir)
    if keep_epochs:
        epoch = state["epoch"] - 1  # the epoch just finished
        _copy_atomic(path, epoch_path(output_dir, prefix, epoch), output_dir)
        for old, old_path in kept_epochs(output_dir, prefix).items():
            if old <= epoch - keep_epochs:
                _remove_quietly(old_path)
    return path


def _copy_atomic(path, target, output_dir):
    tmp = f"{target}{TEMPORARY_MARK}{os.getpid()}"
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _remove_quietly(tmp)
        raise CheckpointError(f"cannot save checkpoint {target}: {exc.strerror or exc}; "
                              f"{os.path.getsize(path):,} bytes needed, "
                              f"{shutil.disk_usage(output_dir).free:,} free in {output_dir}") from None


def sweep_temporaries(output_dir, prefix):
    """Removes the temporary files of interrupted saves of this prefix (their writer is no longer running);
    returns their paths."""
    if not os.path.isdir(output_dir):
        return []
    finals = (os.path.basename(checkpoint_path(output_dir, prefix)), os.path.basename(best_path(output_dir, prefix)))
    removed = []
    for name in os.listdir(output_dir):
        final, mark, pid = name.rpartition(TEMPORARY_MARK)
        kept = final.startswith(f"{prefix}{EPOCH_INFIX}") and final.endswith(".pth.tar")
        if not mark or not (final in finals or kept) or not pid.isdigit() or _running(int(pid)):
            continue
        _remove_quietly(os.path.join(output_dir, name))
        removed.append(os.path.join(output_dir, name))
    return removed


def run_files(output_dir, prefix):
    """The files of a run of `prefix` in output_dir (those that exist), which a new run would replace."""
    paths = [checkpoint_path(output_dir, prefix), previous_path(output_dir, prefix), best_path(output_dir, prefix),
             os.path.join(output_dir, f"{prefix}_metrics.jsonl")]
    kept = [path for _, path in sorted(kept_epochs(output_dir, prefix).items())]  # --keep-epochs
    return [path for path in paths if os.path.exists(path)] + kept


def check_output_dir(args):
    """Before anything is built, for a training run: --output-dir must be a folder this process can write (made
    if missing), and one that holds a run of --prefix is refused unless --resume or --overwrite says what becomes
    of it. UsageError naming the folder."""
    if args.evaluate or args.benchmark:
        return
    folder = args.output_dir
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--output-dir {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{args.prefix}_write_test.")
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise UsageError(f"--output-dir {folder} cannot be written: {exc.strerror or exc}") from None
    held = run_files(folder, args.prefix)
    if held and not args.resume and not args.overwrite:
        raise UsageError(f"--output-dir {folder} already holds a run of prefix {args.prefix} ("
                                + ", ".join(os.path.basename(path) for path in held) + "): pass --resume auto to "
                                "continue it, --overwrite to replace it, or another --output-dir or --prefix")


def prepare_output_dir(run, log):
    """Rank 0: creates --output-dir, removes what interrupted saves left there (and with --overwrite, the
    previous run of the prefix), writes {prefix}_config.json."""
    if not run.world.is_main:
        return
    os.makedirs(run.output_dir, exist_ok=True)
    if run.overwrite:
        board = os.path.join(run.output_dir, f"{run.prefix}_tensorboard")
        for path in run_files(run.output_dir, run.prefix) + ([board] if os.path.isdir(board) else []):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            log(f"removed {path} (--overwrite)")
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


def load(path):
    """The checkpoint at `path`, its checksum checked when it has one; DamagedCheckpoint naming the file and
    what is wrong with it otherwise."""
    if os.path.getsize(path) == 0:
        raise DamagedCheckpoint(f"cannot load checkpoint {path}: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: say which and why, in one line
        # Only the first line of torch's message: the rest advises weights_only=False, which would let the file
        # run arbitrary code; our checkpoints and the authors' never need it.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DamagedCheckpoint(f"cannot load checkpoint {path}: not a checkpoint of plain tensors and numbers, "
                                f"or damaged ({type(exc).__name__}{': ' + first if first else ''})") from None
    if not isinstance(ckpt, dict):
        raise DamagedCheckpoint(f"cannot load checkpoint {path}: it holds a {type(ckpt).__name__}, not a dict")
    expected = ckpt.pop(CHECKSUM_KEY, None)
    if expected is not None and content_sha256(ckpt) != expected:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: its content does not match the sha256 it was "
                                "saved with")
    return ckpt


def load_for_resume(resume, output_dir, prefix, log):
    """(path, checkpoint) for --resume: none for '' (or 'auto' with no checkpoint of `prefix` in output_dir);
    PATH must load intact; 'auto' goes on from the newest intact checkpoint of the prefix, naming each one
    skipped and why."""
    if not resume:
        return None, {}
    if resume != "auto":
        if not os.path.isfile(resume):
            raise UsageError(f"--resume checkpoint not found: {resume}")
        return resume, load(resume)
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
        if path == latest:  # the newest by construction
            return path, ckpt
        intact.append((path, ckpt))
    if found and not intact:
        raise UsageError(f"--resume auto: no intact checkpoint of prefix {prefix} in {output_dir} (every one "
                                "of " + ", ".join(os.path.basename(p) for p in found) + " is damaged)")
    if not intact:
        return None, {}
    # The previous checkpoint or the best one, whichever is further on; at the same step, the validated one.
    path, ckpt = max(intact, key=lambda item: (item[1].get("step", 0), not item[1].get("val_owed", False)))
    log(f"=> resuming from {path}, the newest intact checkpoint")
    return path, ckpt


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
            raise UsageError(f"checkpoint {path} is ResNet-{was[0]} {was[1]}, this run is ResNet-{now[0]} "
                                    f"{now[1]}: pass the same --depth and --att-type")
    try:
        if is_original_format(ckpt):
            load_original_checkpoint(model, ckpt)
        else:
            model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"checkpoint {path} does not fit this model: {exc}") from None


# Settings that decide which samples each batch of an epoch holds: a mid-epoch resume is exact only if they match.
DATA_ORDER_SETTINGS = ("world_size", "batch_size", "backend_resolved", "workers", "seed", "image_size")


def check_mid_epoch_resume(saved_cfg, cfg, path):
    """UsageError when a checkpoint saved mid-epoch is resumed with settings that change the epoch's data order
    (the skipped batches would then not be the ones already trained on)."""
    # Compared as text: older checkpoints hold image_size as a number, newer ones as its schedule ("224").
    changed = {k: (saved_cfg.get(k), cfg.get(k)) for k in DATA_ORDER_SETTINGS
               if str(saved_cfg.get(k)) != str(cfg.get(k))}
    if changed:
        raise UsageError(f"checkpoint {path} stopped mid-epoch; resume it with the same "
                    + ", ".join(f"{k} (saved {old}, now {new})" for k, (old, new) in changed.items()))


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
             "arch": f"resnet{cfg['depth']}", "rng": rng_state(), "config": cfg, "classes": list(classes or [])}
    if learner.ema is not None:
        state["ema"] = learner.ema.state_dict()
    return state


def restore(run, learner, log=print):
    """Loads --resume (if any) into the model and, unless only evaluating, the optimizer, scaler, weight
    average and RNGs; starts the weight average (--ema-decay) from the loaded weights when the checkpoint has
    none. Returns (the Position to go on from, the checkpoint's path or None)."""
    start = Position(run.start_epoch)
    path, ckpt = load_for_resume(run.resume, run.output_dir, run.prefix, log)
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
    if ckpt["batch"]:
        check_mid_epoch_resume(ckpt["config"], cfg, path)
    return Position(ckpt["epoch"], ckpt["batch"], ckpt["step"], ckpt["best_prec1"], ckpt.get("elapsed_s", 0.0),
                    ckpt.get("val_owed", False)), path


class Saver:
    """The one checkpoint path of a run: rank 0 writes, every rank waits for it. `elapsed_s()` gives the
    wall-clock seconds trained so far, recorded with each checkpoint."""

    def __init__(self, run, learner, elapsed_s, classes=None):
        self.run, self.learner, self.elapsed_s, self.classes = run, learner, elapsed_s, classes

    def save(self, position, is_best=False, epoch_end=False):
        """epoch_end: the epoch's last save, which --keep-epochs also keeps as the epoch's own file."""
        run, path = self.run, None
        if run.world.is_main:
            position = replace(position, elapsed_s=self.elapsed_s())
            path = save(run.output_dir, run.prefix, make_state(self.learner, position, run, self.classes), is_best,
                        run.keep_epochs if epoch_end else 0)
        distributed.barrier(run.world)
        return path

    def stop_for_damage(self, position, problem, log, save=True):
        """Saves (unless `save` is false: nothing trained since the last save), then raises the ShardError (the
        same on every rank) that ends the run."""
        if save:
            path = self.save(position)
            log(f"=> a damaged shard: saved {path} at epoch {position.epoch}, batch {position.batch}; exiting")
        raise AgreedShardError(distributed.first_message(self.run.world, problem) or OTHER_RANK_DAMAGED)
