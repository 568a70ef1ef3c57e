"""The output folder of a training run: checked before anything is built, prepared by rank 0.

Which files in it make up a run of a prefix, the check of --output-dir against --resume and --overwrite, and the
preparation (--overwrite's removals, the sweep of interrupted saves, {prefix}_config.json). A module of its own,
not part of training/checkpoint.py: the folder holds more than checkpoints (the metrics file, the run's
configuration, TensorBoard's folder), and its checks are about the command line, not about what a checkpoint
file is.
"""
import atexit
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time

from shards.files import write_atomic

from .checkpoint import (
    best_path,
    checkpoint_path,
    kept_epochs,
    name_after_prefix,
    parse_epoch_name,
    previous_path,
    sweep_temporaries,
)
from .errors import UsageError


def metrics_name(prefix):
    return f"{prefix}_metrics.jsonl"


def config_name(prefix):
    return f"{prefix}_config.json"


def metrics_path(output_dir, prefix):
    return os.path.join(output_dir, metrics_name(prefix))


def tensorboard_path(output_dir, prefix):
    """The TensorBoard folder of a run (--tensorboard)."""
    return os.path.join(output_dir, f"{prefix}_tensorboard")


def run_files(output_dir, prefix):
    """The files of a run of `prefix` in output_dir (those that exist), which a new run would replace."""
    paths = [checkpoint_path(output_dir, prefix), previous_path(output_dir, prefix), best_path(output_dir, prefix),
             metrics_path(output_dir, prefix)]
    kept = [path for _, path in sorted(kept_epochs(output_dir, prefix).items())]  # --keep-epochs
    return [path for path in paths if os.path.exists(path)] + kept


def _run_file_suffixes():
    """What follows the prefix in the name of each file a run writes (checkpoint, .prev, best, metrics, config)."""
    def config_path(folder, prefix):
        return os.path.join(folder, config_name(prefix))
    return tuple(name_after_prefix(path) for path in (checkpoint_path, previous_path, best_path, metrics_path,
                                                       config_path))


def run_file_prefix(path):
    """The prefix of the training run whose file `path` would be (by its name), or None."""
    name = os.path.basename(path)
    for suffix in _run_file_suffixes():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    epoch_file = parse_epoch_name(name)
    return epoch_file[0] if epoch_file else None


def refuse_run_file(path, flag):
    """UsageError when a tool's output `path` would replace (or pose as) a file of a training run: a run's
    checkpoints are what resuming goes on from, and its metrics and configuration what it is checked against."""
    prefix = run_file_prefix(path)
    if prefix is not None:
        raise UsageError(f"{flag} {path}: that name belongs to the files of training run {prefix!r} (checkpoints, "
                         "metrics, configuration), which no tool replaces: write to another name")


LOCK_SUFFIX = ".lock"  # .{prefix}.lock: held by the run of that prefix while it lives


def lock_path(output_dir, prefix):
    return os.path.join(output_dir, f".{prefix}{LOCK_SUFFIX}")


def hold_run(output_dir, prefix):
    """Holds `prefix`'s lock in output_dir until this process ends, or raises UsageError naming the live run that
    holds it. A POSIX record lock (fcntl.lockf): the kernel releases it when its process ends however it ends, so
    a killed run never keeps it; it is not inherited by forked children (a dead rank's loader workers do not keep
    it), and it works on NFS, where the nodes of a multi-node run share --output-dir. The file goes when the
    process exits; one left by a killed run is simply locked again."""
    path = lock_path(output_dir, prefix)
    while True:
        try:
            handle = open(path, "a+")
        except OSError as exc:
            raise UsageError(f"--output-dir {output_dir}: cannot open the run's lock file {path}: "
                             f"{exc.strerror or exc}") from None
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = " ".join(handle.read(300).split())
            handle.close()
            raise UsageError(f"--output-dir {output_dir} prefix {prefix} is in use by a live run "
                             f"({holder or 'its process is starting'}; lock file {path}): wait for it to end, or "
                             "pass another --output-dir or --prefix") from None
        if _same_file(handle, path):
            break
        handle.close()  # its holder removed it between our open and our lock: lock the file now at `path`
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    atexit.register(_release, handle, path)
    return path


def _same_file(handle, path):
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _release(handle, path):
    # Removed while still locked, then unlocked by closing: a process that opened the old file meanwhile finds it
    # gone once it holds the lock (_same_file) and locks a new one.
    try:
        os.remove(path)
    except OSError:
        pass
    handle.close()


def check_output_dir(args, writer):
    """Before anything is built, for a training run: --output-dir must be a folder this process can write (made
    if missing); the `writer` (the process that will be rank 0) holds the prefix's lock there from now on, so a
    second run of the prefix is refused while this one lives; and a folder that holds a run of --prefix is refused
    unless --resume or --overwrite says what becomes of it. UsageError naming the folder."""
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
    if writer:  # before the check below: two runs started together must not both pass it
        hold_run(folder, args.prefix)
    held = run_files(folder, args.prefix)
    if held and not args.resume and not args.overwrite:
        raise UsageError(f"--output-dir {folder} already holds a run of prefix {args.prefix} ("
                         + ", ".join(os.path.basename(path) for path in held) + "): pass --resume auto to "
                         "continue it, --overwrite to replace it, or another --output-dir or --prefix")


def prepare_output_dir(run, log):
    """Rank 0: creates --output-dir, removes what interrupted saves left there (and with --overwrite, the
    previous run of the prefix), writes {prefix}_config.json (atomically: never a torn one)."""
    if not run.world.is_main:
        return
    os.makedirs(run.output_dir, exist_ok=True)
    if run.overwrite:
        board = tensorboard_path(run.output_dir, run.prefix)
        for path in run_files(run.output_dir, run.prefix) + ([board] if os.path.isdir(board) else []):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            log(f"removed {path} (--overwrite)")
    for path in sweep_temporaries(run.output_dir, run.prefix, (config_name(run.prefix), metrics_name(run.prefix))):
        log(f"removed {path}, left by an interrupted save")
    write_atomic(os.path.join(run.output_dir, config_name(run.prefix)),
                 json.dumps(run.as_dict(), indent=1, sort_keys=True).encode())
