"""The worker processes of a conversion and its progress bars; how many CPUs this process may use."""
import ctypes
import multiprocessing
import os
import signal
import sys
import time


def usable_cpus():
    """The CPUs this process may run on (taskset and container CPU sets count), not all CPUs of the machine: the
    one base of every default worker count (make_shards' --workers, the loaders' workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Progress:
    """tqdm bar in images with the source MB/s alongside."""

    def __init__(self, desc, total):
        from tqdm import tqdm  # here, so that importing usable_cpus costs nothing
        self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        self.bytes = 0
        self.start = time.monotonic()

    def update(self, images, nbytes):
        self.bytes += nbytes
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.bytes / 1e6 / elapsed:.1f} MB/s", refresh=False)
        self.bar.update(images)

    def close(self):
        self.bar.close()


def die_with_parent(parent_pid):
    """Pool initializer. Pool workers of a SIGKILLed tool would otherwise live on, blocked forever, and may still
    be finishing a shard when the tool is run again; the kernel kills them with their parent instead."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1  # from <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class Workers:
    """`--workers` processes; with one worker everything runs in this process (no pickling, plain tracebacks)."""

    def __init__(self, count):
        self.count = count
        self.pool = None
        if count > 1:
            self.pool = multiprocessing.Pool(count, initializer=die_with_parent, initargs=(os.getpid(),))

    def imap(self, function, items, ordered=True, count=None):
        """function(item) for each of `items`, a sequence or (with `count`, its length) any iterable, which is
        read as the workers take items, never as a whole list."""
        if self.pool is None:
            return map(function, items)
        if ordered:
            # Each chunk costs the parent about a millisecond of hand-offs, which on a machine with as many workers
            # as cores is taken from the workers; chunks of up to 64 images (a few per worker on small inputs, for
            # balance) keep that under 2% and cost at most a chunk of imbalance at the end.
            count = len(items) if count is None else count
            return self.pool.imap(function, items, max(1, min(64, count // (self.count * 4))))
        return self.pool.imap_unordered(function, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
