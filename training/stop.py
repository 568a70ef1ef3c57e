"""Why the ranks stop before the end: a signal (pre-emption, Ctrl-C) or a shard found damaged in the background.

Every rank checks between steps and they agree (the largest reason wins), so all save the same step and stop."""
import signal

from . import distributed

SIGNAL, DAMAGED_SHARD = 1, 2
OTHER_RANK_DAMAGED = "another rank found a damaged shard (its error names it); the checkpoint is saved"


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, writes a checkpoint and exits 0."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def shard_problem(loaders, wait=False):
    """The first damaged shard this rank's loaders know of (with `wait`, the first one waits for its range)."""
    for i, loader in enumerate(loaders):
        problem = loader.shard_problem(wait=wait and i == 0)
        if problem:
            return problem
    return None


def agreed_reason(world, stop, problem):
    """0 (go on), SIGNAL or DAMAGED_SHARD, the same on every rank (a host-side all-reduce)."""
    return distributed.max_over_ranks(world, DAMAGED_SHARD if problem else SIGNAL if stop.requested else 0)
