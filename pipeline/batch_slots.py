"""Shared-memory batch slots: the `torch` backend's workers write uint8 batches here, the main process reads them.

A slot is a fixed place in one shared tensor; a handle (worker, slot, count) travels instead of the pixels, and
the main process releases the slot once it has read it.
"""
import math
import os

import torch


class EpochClosed(Exception):
    """Raised in a worker waiting for a slot when the main process has stopped reading the epoch."""


class BatchSlots:
    """Shared-memory uint8 batch buffers, allocated once per worker pool, that the workers fill and the main
    process reads in turn.

    Otherwise every worker batch is a fresh shared-memory segment whose handle travels over a socket and whose
    pages fault in twice, on the worker's writes and on the main process's first read (three times the time to
    normalise a part, BENCHMARKS.md). Here a worker fills slot k only after the main process has released it:
    one semaphore per worker counts its free slots, and both sides go round the slots in the same order, because
    the DataLoader delivers each worker's items in the order they were made and the main process releases them
    in that order.

    The workers serve many epochs. An epoch the main process leaves early leaves slots unreleased and workers
    waiting for them: close_epoch() moves a shared generation counter on, which ends every wait of that epoch
    (EpochClosed), and each worker starts its next epoch with begin_epoch(), which gives it all its slots back.
    The semaphores and the counter are made before the workers fork (`context`: the start method they use)."""

    def __init__(self, workers, slots, batch_size, image_size, context):
        self.count = slots
        shape = (workers, slots, batch_size, image_size, image_size, 3)
        check_shared_memory(math.prod(shape), workers, slots)
        self.images = torch.empty(shape, dtype=torch.uint8)
        self.images.share_memory_()
        self._main_pid = os.getpid()
        self._free = [context.Semaphore(slots) for _ in range(workers)]
        self._generation = torch.zeros(1, dtype=torch.int64).share_memory_()  # moved on by close_epoch()
        self._epoch_generation = 0  # the generation the worker's current epoch began in (its own copy)
        self._next = [0] * workers  # the next slot each worker fills (each worker process has its own copy)

    def begin_epoch(self, worker):
        """Worker side, before its first take() of an epoch: every slot of `worker` is free again (the main
        process releases none of an epoch it has left, and a new epoch starts only once it has left the last)."""
        self._epoch_generation = int(self._generation[0])
        self._next[worker] = 0
        free = self._free[worker]
        while free.acquire(block=False):
            pass
        for _ in range(self.count):
            free.release()

    def close_epoch(self):
        """Main side, when it stops reading an epoch before its end: a worker waiting for a slot (or about to)
        stops the epoch now instead of holding up the next one."""
        self._generation += 1

    def take(self, worker):
        """Worker side: waits for the next slot of `worker` to be free and returns its index; EpochClosed when
        the main process has stopped reading this epoch."""
        while True:
            if int(self._generation[0]) != self._epoch_generation:
                raise EpochClosed()
            if self._free[worker].acquire(timeout=0.05):
                break
            if os.getpid() != self._main_pid != os.getppid():  # a worker whose main process is gone
                raise RuntimeError("the loader's main process exited")
        slot = self._next[worker]
        self._next[worker] = (slot + 1) % self.count
        return slot

    def view(self, handle):
        worker, slot, count = handle
        return self.images[worker, slot, :count]

    def release(self, handle):
        """Main side: the slot's pixels have been read (normalised or copied to the device)."""
        self._free[handle[0]].release()


def check_shared_memory(needed, workers, slots, folder="/dev/shm"):
    """ValueError when `folder` (Linux's shared memory) has less than `needed` bytes free: touching shared memory
    beyond the limit kills the process with SIGBUS, with no message. Containers often have 64 MB there."""
    try:
        stats = os.statvfs(folder)
    except OSError:  # no such folder (not Linux): nothing to check
        return
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise ValueError(f"the torch backend needs {needed / 2**20:.0f} MiB of shared memory ({workers} workers x "
                         f"{slots} batch slots) but {folder} has {free / 2**20:.0f} MiB free: use fewer --workers or "
                         f"a smaller batch, or enlarge {folder} (docker run --shm-size=...)")


