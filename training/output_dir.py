"""The output folder of a training run: checked before anything is built, prepared by rank 0.

Which files in it make up a run of a prefix, the check of --output-dir against --resume and --overwrite, and the
preparation (--overwrite's removals, the sweep of interrupted saves, {prefix}_config.json). A module of its own,
not part of training/checkpoint.py: the folder holds more than checkpoints (the metrics file, the run's
configuration, TensorBoard's folder), and its checks are about the command line, not about what a checkpoint
file is.
"""
import json
import os
import shutil
import tempfile

from shards.files import write_atomic

from .checkpoint import best_path, checkpoint_path, kept_epochs, previous_path, sweep_temporaries
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
