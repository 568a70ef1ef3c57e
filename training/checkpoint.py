"""Checkpoint files: what one is and how it is written, read and checked.

Their names in the CBAM authors' style ({prefix}_checkpoint.pth.tar, _model_best, the per-epoch copies), the
sha256 of their content, the atomic write through shards.files.write_atomic (free space checked first, the one
before kept as {prefix}_checkpoint.prev.pth.tar), the sweep of temporaries left by killed saves, and loading with
torch.load(weights_only=True). What a run puts into a checkpoint and how it goes on from one: training/resume.py;
the run's output folder: training/output_dir.py.

Everything is plain data: tensors, numbers, strings, lists and dicts (RNG states included), so a checkpoint
never needs unpickling of arbitrary objects. Each one carries the sha256 of its content, which loading checks:
torch.load reads a zip without checking its CRCs, so bytes changed inside a tensor would otherwise load as
weights, and `--resume auto` goes on from the newest intact checkpoint. The authors' released checkpoints have no
checksum and load unchecked.
"""
import hashlib
import io
import os
import re
import shutil

import torch

from shards.files import parse_temporary_name, write_atomic

from .errors import UsageError


def checkpoint_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_checkpoint.pth.tar")


def name_after_prefix(path_of):
    """What follows the prefix in the file name `path_of(output_dir, prefix)` gives: "_checkpoint.pth.tar" for
    checkpoint_path. The names are stated once, in their functions; matching a folder's files goes by this."""
    return os.path.basename(path_of("", "\0"))[1:]


def latest_checkpoints(output_dir):
    """The latest checkpoint (checkpoint_path) of every run in output_dir, sorted."""
    suffix = name_after_prefix(checkpoint_path)
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    return [os.path.join(output_dir, name) for name in sorted(names)
            if name.endswith(suffix) and len(name) > len(suffix)]


def previous_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_checkpoint.prev.pth.tar")


def best_path(output_dir, prefix):
    return os.path.join(output_dir, f"{prefix}_model_best.pth.tar")


EPOCH_INFIX = "_epoch"  # {prefix}_epoch{E}.pth.tar: the checkpoint at the end of 0-based epoch E (--keep-epochs)


def epoch_path(output_dir, prefix, epoch):
    return os.path.join(output_dir, f"{prefix}{EPOCH_INFIX}{epoch}.pth.tar")


_EPOCH_NAME = re.compile(rf"(.+){EPOCH_INFIX}(\d+)\.pth\.tar$")


def parse_epoch_name(name):
    """(prefix, epoch) of a per-epoch checkpoint's file name, or None."""
    match = _EPOCH_NAME.match(os.path.basename(name))
    return (match.group(1), int(match.group(2))) if match else None


def kept_epochs(output_dir, prefix):
    """{epoch: path} of the per-epoch checkpoints of `prefix` in output_dir."""
    head, tail = f"{prefix}{EPOCH_INFIX}", ".pth.tar"
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    return {int(name[len(head):-len(tail)]): os.path.join(output_dir, name) for name in names
            if name.startswith(head) and name.endswith(tail) and name[len(head):-len(tail)].isdigit()}


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


def non_finite_tensor(state):
    """The name of the first floating-point tensor of a state dict holding NaN or inf, or None."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def check_finite_weights(state, path, key="model"):
    """DamagedCheckpoint when the weights `state` of checkpoint `path` hold a NaN or inf: a model built from them
    predicts NaN, and training from them diverges at its first step."""
    name = non_finite_tensor(state)
    if name is not None:
        raise DamagedCheckpoint(f"checkpoint {path}: {key}[{name!r}] holds non-finite values (NaN or inf): these "
                                "weights cannot be used")


class CheckpointError(Exception):
    """A checkpoint could not be written; the message is one line naming the file, the folder and the bytes."""


class DamagedCheckpoint(UsageError):
    """A checkpoint file that cannot be used as saved: empty, unreadable, or not matching its checksum."""


def save_atomic(obj, path, previous=None):
    """torch.save through shards.files.write_atomic (a temporary file in the same folder, fsync, rename): never a
    torn checkpoint. With `previous`, the file at `path` is renamed to it once the new one is written, just
    before the new one takes its place (so a crash between the renames leaves that one).

    The checkpoint is serialised in memory first, so its size is known before anything is written: a folder
    without that much free space is refused at once. On any write error the temporary file is removed (a full
    disk stays usable), the file at `path` is left as it was, and CheckpointError says which folder needs how many
    bytes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    free = shutil.disk_usage(folder).free
    if free < len(data):
        raise CheckpointError(f"cannot save checkpoint {path}: {len(data):,} bytes needed, {free:,} free in {folder}")

    def keep_previous():
        if os.path.exists(path):
            os.replace(path, previous)
    try:
        write_atomic(path, data, before_replace=keep_previous if previous else None)
    except OSError as exc:
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


COPY_CHUNK = 16 << 20  # bytes read at a time by _copy_atomic


def _copy_atomic(path, target, output_dir):
    """A copy of the checkpoint at `path` as `target`, through write_atomic (not fsynced: `path` itself is)."""
    try:
        with open(path, "rb") as source:
            write_atomic(target, iter(lambda: source.read(COPY_CHUNK), b""), durable=False)
    except OSError as exc:
        raise CheckpointError(f"cannot save checkpoint {target}: {exc.strerror or exc}; "
                              f"{os.path.getsize(path):,} bytes needed, "
                              f"{shutil.disk_usage(output_dir).free:,} free in {output_dir}") from None


def sweep_temporaries(output_dir, prefix, others=()):
    """Removes the temporary files (shards.files.temporary_name) of interrupted saves of this prefix's
    checkpoints, and of the files named in `others`, whose writer is no longer running; returns their paths."""
    if not os.path.isdir(output_dir):
        return []
    finals = {os.path.basename(checkpoint_path(output_dir, prefix)), os.path.basename(best_path(output_dir, prefix)),
              *others}
    removed = []
    for name in os.listdir(output_dir):
        parsed = parse_temporary_name(name)
        if parsed is None:
            continue
        final, pid = parsed
        kept = final.startswith(f"{prefix}{EPOCH_INFIX}") and final.endswith(".pth.tar")
        if not (final in finals or kept) or _running(pid):
            continue
        _remove_quietly(os.path.join(output_dir, name))
        removed.append(os.path.join(output_dir, name))
    return removed


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
