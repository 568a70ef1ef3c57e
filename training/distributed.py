"""Distributed set-up from torchrun's environment variables; `--ngpu N` relaunches through torch.distributed.run.

Every collective of a run goes through the helpers here, so that one that times out (a stuck rank) or loses a peer
(a dead rank) ends the rank with one line naming it (CollectiveFailed) for the launcher to restart the run."""
import contextlib
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
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
    launcher_pid: int = None   # the torchrun agent (or --ngpu launcher) that started this rank
    timeout_s: float = 0.0     # --collective-timeout
    where: str = "start-up"    # what the rank is doing, for the line of a failed collective

    @property
    def is_main(self):
        return self.rank == 0

    def launcher_gone(self):
        """True when the agent that started this rank has died (the rank was handed to init): an orphan that
        would otherwise train on beside a restarted run."""
        return self.launcher_pid is not None and os.getppid() != self.launcher_pid


class CollectiveFailed(Exception):
    """A collective that timed out (another rank stuck) or lost a peer (another rank dead): the rank ends with one
    line naming it (exit 1), and the launcher restarts the run from its last checkpoint."""


def _communication_error(exc):
    """True for an error of the process group's transport (gloo, NCCL), not of the computation."""
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        marker in text for marker in ("gloo", "Gloo", "NCCL", "Connection", "connection", "Timed out", "timed out"))


@contextlib.contextmanager
def collective(world, what):
    """Runs the collective(s) inside; a transport error becomes CollectiveFailed naming `what` and where."""
    if world.size == 1:
        yield
        return
    start = time.monotonic()
    try:
        yield
    except RuntimeError as exc:
        if not _communication_error(exc):
            raise
        waited = time.monotonic() - start
        text = str(exc)
        if "imed out" in text or "imeout" in text or waited >= world.timeout_s > 0:
            cause = (f"no answer within --collective-timeout {world.timeout_s:g} s: another rank is stuck "
                     "(stopped, or waiting on a hung file system)")
        else:
            cause = "another rank is gone (its connection closed)"
        raise CollectiveFailed(f"rank {world.rank}: {what} ({world.where}) failed after {waited:.0f} s: {cause}; "
                               "ending this rank so that the launcher can restart the run from its last "
                               "checkpoint") from None


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_from_environment():
    """This process's global rank as its launcher set it (0 when started alone), before the process group exists."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def world_size_from_environment(ngpu=1):
    """The number of ranks the run will have, before the process group exists: torchrun's, else --ngpu's."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else ngpu


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


def setup(timeout_s=900.0):
    """Initialises the process group (NCCL on GPU, gloo on CPU) when launched by torchrun; else one process.
    timeout_s bounds every collective and the start-up (--collective-timeout)."""
    if not launched_by_torchrun():
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return World(0, 0, 1, 1, device, timeout_s=timeout_s)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    world = World(rank, local_rank, size, local_size, torch.device("cpu"), launcher_pid=os.getppid(),
                  timeout_s=timeout_s)
    timeout = datetime.timedelta(seconds=timeout_s)
    with collective(world, "the start-up of the process group"):
        store = incarnation_store(rank, size, timeout)
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise UsageError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs visible "
                                 "on this node")
            world.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(world.device)
            dist.init_process_group("nccl", store=store, rank=rank, world_size=size, timeout=timeout,
                                    device_id=world.device)
            world.stop_group = dist.new_group(backend="gloo", timeout=timeout)
        else:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=timeout)
            # stop_group stays None: the default group is already gloo on the host
    return world


INCARNATION_KEYS = "cbam-incarnation"


def incarnation_store(rank, size, timeout):
    """The store this incarnation of the worker group initialises its process group on.

    torchrun's agent keeps one store for all the worker groups it starts (TORCHELASTIC_USE_AGENT_STORE), and the
    keys the process group writes there outlive a crashed group: a restarted rank can read the address of a peer
    of the dead incarnation and fail with "Connection refused" (pytorch/pytorch#135712; TORCHELASTIC_RESTART_COUNT
    cannot tell the incarnations apart, as each agent counts its own restarts). So the ranks first agree on a fresh
    token, and every key of this incarnation lives under it. Rank 0 draws the token and publishes it with the
    nonce each rank drew for itself; a rank takes the token only when it finds its own fresh nonce beside it (a
    stale token carries stale nonces), and acknowledges it; rank 0 republishes until every rank has."""
    store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=timeout))
    store.set_timeout(timeout)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or size == 1:
        return store  # rank 0 hosts a new store for every incarnation
    deadline = time.monotonic() + timeout.total_seconds()
    hello = [f"{INCARNATION_KEYS}/hello/{r}" for r in range(size)]
    ack = [f"{INCARNATION_KEYS}/ack/{r}" for r in range(size)]
    token_key = f"{INCARNATION_KEYS}/token"
    if rank == 0:
        token = uuid.uuid4().hex
        while True:
            nonces = [store.get(key).decode() if store.check([key]) else "" for key in hello]
            store.set(token_key, json.dumps({"token": token, "nonces": nonces}))
            if all(store.check([key]) and store.get(key).decode() == token for key in ack[1:]):
                break
            _wait_or_time_out(deadline, "the other ranks of this start")
    else:
        nonce = uuid.uuid4().hex
        store.set(hello[rank], nonce)
        while True:
            published = json.loads(store.get(token_key)) if store.check([token_key]) else {}
            if published.get("nonces", [])[rank:rank + 1] == [nonce]:
                token = published["token"]
                store.set(ack[rank], token)
                break
            _wait_or_time_out(deadline, "rank 0 of this start")
    return dist.PrefixStore(f"{INCARNATION_KEYS}/{token}", store)


def _wait_or_time_out(deadline, whom):
    if time.monotonic() > deadline:
        raise RuntimeError(f"Timed out waiting for {whom} to agree on the process group's keys")
    time.sleep(0.05)


def barrier(world, what="the wait for rank 0's checkpoint write"):
    if world.size > 1:
        with collective(world, what):
            dist.barrier()


def all_reduce_sum(world, tensor, what="the sum of the metrics over ranks"):
    """Sums `tensor` over ranks in place (a no-op in one process)."""
    if world.size > 1:
        with collective(world, what):
            dist.all_reduce(tensor)
    return tensor


def broadcast(world, tensors, what):
    """Rank 0's values of `tensors` on every rank (in place)."""
    if world.size > 1:
        with collective(world, what):
            for tensor in tensors:
                dist.broadcast(tensor, 0)


def max_over_ranks(world, value, what="the ranks' agreement"):
    """The largest of the ranks' int `value`s, on every rank. Host-only: uses a gloo group, never syncs the GPU."""
    if world.size == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int32)
    with collective(world, what):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=world.stop_group)
    return int(t.item())


def first_message(world, message, what="the exchange of the ranks' error messages"):
    """The first rank's non-empty `message` (str or None), on every rank (host-only, like max_over_ranks)."""
    return next((m for m in gather_objects(world, message, what) if m), None)


def gather_objects(world, value, what):
    """Every rank's picklable `value`, in rank order, on every rank (host-only, like max_over_ranks)."""
    if world.size == 1:
        return [value]
    values = [None] * world.size
    with collective(world, what):
        dist.all_gather_object(values, value, group=world.stop_group)
    return values


def any_rank(world, flag, what="the ranks' agreement"):
    """True on every rank when `flag` is true on any rank (host-only, like max_over_ranks)."""
    return max_over_ranks(world, 1 if flag else 0, what) > 0


def cleanup(world):
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
