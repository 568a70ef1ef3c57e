"""Distributed set-up from torchrun's environment variables; `--ngpu N` relaunches through torch.distributed.run."""
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass
class World:
    rank: int
    local_rank: int
    size: int
    local_size: int
    device: torch.device
    stop_group: object = None  # a gloo group for host-side flags, so checking them never syncs the GPU

    @property
    def is_main(self):
        return self.rank == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


STATUS_DIR_ENV = "CBAM_RANK_STATUS_DIR"  # set by the --ngpu launcher: where each rank records its exit status


def relaunch_with_torchrun(nproc):
    """Runs this script again in `nproc` processes under PyTorch's elastic launcher; returns the exit status.

    The status is the workers': a worker's own exit code when one failed (2 for a user error). When a
    SIGTERM/SIGINT reaches this launcher, torchrun forwards it to the workers (they save a checkpoint, or have
    nothing to save yet, and exit 128 + the signal's number; it gives them 30 s before SIGKILL) and reports none of
    their exit codes, so each worker records its own in a file (record_exit_status): 128 + the signal's number when
    every rank stopped cleanly (0 when every rank had finished), else 1."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main
    status_dir = tempfile.mkdtemp(prefix="cbam-rank-status-")
    os.environ[STATUS_DIR_ENV] = status_dir  # inherited by the workers torchrun starts
    try:
        torchrun_main(["--standalone", f"--nproc-per-node={nproc}", sys.argv[0], *sys.argv[1:]])
    except ChildFailedError as exc:  # torchrun has printed the failed workers' report
        codes = [failure.exitcode for failure in exc.failures.values() if failure.exitcode > 0]
        return codes[0] if codes else 1
    except SignalException as exc:
        if exc.sigval not in (signal.SIGTERM, signal.SIGINT):
            return 1
        return _recorded_status(status_dir, nproc, exc.sigval)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        shutil.rmtree(status_dir, ignore_errors=True)
    return 0


def _recorded_status(status_dir, nproc, signum):
    """After signal `signum`: 0 when every rank recorded 0 (finished), 128 + signum when each recorded 0 or a stop
    by a signal (128 + SIGTERM or SIGINT); else 1, after one line naming the ranks that did not."""
    clean = {"0", f"{128 + signal.SIGTERM}", f"{128 + signal.SIGINT}"}
    codes, failed = [], []
    for rank in range(nproc):
        try:
            with open(os.path.join(status_dir, f"rank{rank}")) as f:
                code = f.read().strip()
        except FileNotFoundError:
            code = "none (killed)"
        codes.append(code)
        if code not in clean:
            failed.append(f"rank {rank}: {code}")
    if failed:
        sys.stderr.write(f"train.py: error: stopped by a signal, but not every rank saved and exited cleanly "
                         f"({'; '.join(failed)})\n")
        return 1
    return 0 if set(codes) == {"0"} else 128 + signum


def record_exit_status(code):
    """Under the --ngpu launcher, records this rank's exit status for it (see relaunch_with_torchrun)."""
    folder = os.environ.get(STATUS_DIR_ENV)
    if folder and "RANK" in os.environ and os.path.isdir(folder):
        with open(os.path.join(folder, f"rank{os.environ['RANK']}"), "w") as f:
            f.write(f"{code}\n")


def setup():
    """Initialises the process group (NCCL on GPU, gloo on CPU) when launched by torchrun; else one process."""
    if not launched_by_torchrun():
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return World(0, 0, 1, 1, device)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs visible "
                                    "on this node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        stop_group = dist.new_group(backend="gloo")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        stop_group = None  # the default group is already gloo on the host
    return World(rank, local_rank, size, local_size, device, stop_group)


def barrier(world):
    if world.size > 1:
        dist.barrier()


def all_reduce_sum(world, tensor):
    """Sums `tensor` over ranks in place (a no-op in one process)."""
    if world.size > 1:
        dist.all_reduce(tensor)
    return tensor


def max_over_ranks(world, value):
    """The largest of the ranks' int `value`s, on every rank. Host-only: uses a gloo group, never syncs the GPU."""
    if world.size == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=world.stop_group)
    return int(t.item())


def first_message(world, message):
    """The first rank's non-empty `message` (str or None), on every rank (host-only, like max_over_ranks)."""
    if world.size == 1:
        return message
    messages = [None] * world.size
    dist.all_gather_object(messages, message, group=world.stop_group)
    return next((m for m in messages if m), None)


def any_rank(world, flag):
    """True on every rank when `flag` is true on any rank (host-only, like max_over_ranks)."""
    return max_over_ranks(world, 1 if flag else 0) > 0


def cleanup(world):
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
