"""The `torch` backend: DataLoader worker processes read shards, decode crop windows and fill batch slots.

A train loader's worker processes are started once and serve every epoch (a _WorkerPool; started again only
when the batch geometry changes, e.g. progressive resizing): each epoch's plan and order are functions of the
epoch number (_EpochPlans), which reaches the running workers through shared memory with the epoch's sample
order (computed once, by the main process). A val loader's workers end
with each pass (see TorchLoader._end_epoch).

Each worker reads only its contiguous share of the rank's sample range (shards.worker_plans) through
pipeline/shard_read.py, shuffles raw JPEG bytes through a seeded buffer (train), decodes and resizes only the
crop window (pipeline/jpeg_decode.py) and writes uint8 HWC batches into shared-memory slots
(pipeline/batch_slots.py; DataLoader batch_size=None; train batches in halves, see _PIECES_PER_BATCH). The main
process moves the pieces to the device and converts, normalises, joins and lays them out there in one step
(pipeline/normalize.py, shared with the DALI backends), then hands the slots back.

A damaged shard makes the worker yield a _Failure naming the file, which the main process raises as a
ShardError: one clear line instead of a worker traceback. Any other exception in a worker (out of memory, a cache
folder it cannot write) becomes a LoaderFailed naming the worker, the exception and where it was raised; and
an epoch that ends in an error ends its workers with it (see _end_workers). An epoch left early (a break, a stop
between steps) closes its batch slots, so the workers stop filling them and wait for the next epoch. The
workers end with the loader: close(), its garbage collection, or the interpreter's exit.
"""
import atexit
import dataclasses
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401 - its exit hook is registered before _end_live_pools
import os
import signal
import time
import traceback
import weakref

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils import signal_handling

from shards.errors import LoaderFailed, ShardError
from shards.format import parse_label
from shards.storage import is_remote

from .batch_slots import BatchSlots, EpochClosed
from .jpeg_decode import DECODE_ERRORS, decode_train, decode_val, window_decoder
from .loader import Loader, host_work_threads
from .rank_plan import SHUFFLE_BUFFER, epoch_seed, order_segments, rank_plan, worker_plans
from .sample_index import SampleIndex
from .shard_read import read_samples

# Train batches travel from the workers in this many equal pieces, joined by the main process while it normalises
# (no extra copy). A worker's share is then counted in half batches, so the workers finish an epoch together
# (with whole batches, a small epoch of 7 batches splits 4 + 3 over 2 workers and one core idles for the last
# batch). It also halves the wait for the first batch.
_PIECES_PER_BATCH = 2
_PREFETCH = 2  # items each worker may have ready ahead (DataLoader's prefetch_factor, its default)
log = logging.getLogger(__name__)
ORDER_STREAM = 1  # epoch_seed's stream of the shuffle buffer's draws (the crops draw from the worker's own stream)


class _Failure:
    """Sent from a worker instead of a batch: a shard is unusable (`damaged`, the message names the shard), or
    the worker failed otherwise (the message names the worker, the exception and where it was raised)."""

    def __init__(self, message, damaged=True):
        self.message, self.damaged = message, damaged

    def error(self):
        return ShardError(self.message) if self.damaged else LoaderFailed(self.message)


_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _failure_of(exc, worker):
    """A _Failure for an unexpected exception in `worker`: one line, with the innermost frame of this project's
    code that it passed through (else the innermost one), which is what a traceback would have been read for."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames  # "<frozen os>" and the like are no files, wherever the process runs
            if not frame.filename.startswith("<") and os.path.abspath(frame.filename).startswith(_PROJECT + os.sep)]
    frame = (ours or frames or [None])[-1]
    where = f" at {os.path.relpath(frame.filename, _PROJECT) if ours else frame.filename}:{frame.lineno}" \
        if frame else ""
    text = " ".join(str(exc).split())[:300]
    return _Failure(f"torch loader worker {worker} (pid {os.getpid()}) failed: {type(exc).__name__}"
                    f"{': ' + text if text else ''}{where}", damaged=False)


@dataclasses.dataclass(frozen=True)
class _EpochPlans:
    """What a worker needs to work out any epoch's plan by itself: it is a function of the epoch number
    (pipeline/rank_plan.py), so a worker started once serves every epoch."""
    num_samples: int
    rank: int
    world_size: int
    batch_size: int          # per rank
    train: bool
    pieces: int              # a batch travels from the workers in this many pieces
    seed: int

    def plan(self, epoch):
        """The rank's plan of `epoch` counted in pieces: each piece is a batch for the workers."""
        plan = rank_plan(self.num_samples, rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
                         epoch=epoch, train=self.train)
        return dataclasses.replace(plan, batch_size=plan.batch_size // self.pieces,
                                   batches=plan.batches * self.pieces)


class ShardStream(IterableDataset):
    """The per-worker reader: yields (uint8 images NHWC, int64 labels) batches, or a _Failure, for the epoch that
    `epoch_state[0]` names when its iteration starts, in the sample order `order_state` holds then."""

    def __init__(self, split, plans, epoch_state, order_state=None, *, image_size, rank, num_workers, slots=None,
                 cache=None, augmenter=None, index=None):
        self.split, self.plans, self.cache = split, plans, cache
        self.epoch_state = epoch_state  # shared int64 tensor: the epoch the next iteration reads
        self.order_state = order_state  # shared int64 tensor: that epoch's sample ids in reading order, or None
        self.index = index  # the SampleIndex that reads samples in that order (None: storage order)
        self.augmenter = augmenter  # augment.AutoAugmenter for train pixels, run here in the worker, or None
        self.image_size, self.seed, self.rank = image_size, plans.seed, rank
        self.num_workers = max(1, num_workers)
        self.slots = slots  # BatchSlots shared with the main process, or None: a new tensor per batch
        self.epoch, self.plan, self.order = None, None, None  # of the iteration under way

    def __iter__(self):
        info = get_worker_info()
        if info is not None:
            # Pre-emption: launchers and schedulers (torchrun, SLURM) signal the whole process group. The rank, not
            # its loader workers, acts on it: it finishes its step, saves and then closes the epoch, which ends
            # these workers' epoch (EpochClosed below). A worker killed by the signal would crash the rank instead.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker = info.id if info is not None else 0
        self.epoch = int(self.epoch_state[0])
        self.plan = self.plans.plan(self.epoch)
        # The epoch's sample ids in reading order (None: storage order), read through self.index.
        self.order = self.order_state.numpy() if self.order_state is not None else None
        if self.slots is not None and info is not None:
            self.slots.begin_epoch(worker)
        share = worker_plans(self.plan, self.num_workers)[worker]
        if share.stop <= share.start:
            return
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, self.rank, worker))
        windows = window_decoder()  # per worker: the native decoder keeps its own buffer
        try:
            yield from self._batches(share, rng, windows, worker if info is not None else None)
        except ShardError as exc:
            yield _Failure(str(exc))
        except EpochClosed:
            return  # nobody reads this epoch any more
        except Exception as exc:  # noqa: BLE001 - any other failure: one line in the main process, not a traceback
            yield _failure_of(exc, worker)

    def _batches(self, share, rng, windows, worker):
        # The buffer draws from a stream of its own, apart from the crops': the order is then a function of the
        # plan alone (benchmarks/order_quality.py replays it sample for sample), whatever the pictures' sizes.
        order_rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, self.rank, worker or 0, ORDER_STREAM))
        samples = self._samples(share, order_rng)
        remaining = share.batches * self.plan.batch_size if self.plan.train else share.stop - share.start
        decoded = 0
        while remaining > 0:
            count = min(self.plan.batch_size, remaining)
            yield self._decode_batch(samples, count, rng, windows, worker, decoded)
            remaining -= count
            decoded += count
        for _ in samples:  # read the rest of the share (the dropped remainder) so its shards get counted
            pass

    def _samples(self, share, rng):
        """Raw samples of the share: in order for val, through a seeded shuffle buffer for train."""
        stream = ((shard, key, jpeg, cls)
                  for shard, first, stop in order_segments(self.split.shards, self.order, share.start, share.stop)
                  for key, jpeg, cls in self._read(shard, first, stop))
        if not self.plan.train:
            yield from stream
            return
        capacity = max(self.plan.batch_size, SHUFFLE_BUFFER // self.num_workers)
        buffer = []
        for sample in stream:
            buffer.append(sample)
            if len(buffer) >= capacity:
                yield _pop_random(buffer, rng)
        while buffer:
            yield _pop_random(buffer, rng)

    def _read(self, shard, first, stop):
        if self.index is None:  # storage order: long runs, read with the shard's own index
            return read_samples(shard, first, stop, per_request=self.plan.batch_size, cache=self.cache)
        copy = self.cache.local_shard(shard) if self.cache is not None and is_remote(shard.path) else None
        return self.index.read_run(shard, first, stop, copy)

    def _decode_batch(self, samples, count, rng, windows, worker, decoded):
        """(images, labels): images is a uint8 NHWC tensor, or (worker, slot, count) naming the BatchSlots slot
        that holds them when running in a worker process; labels is an int64 numpy array (sent by value).
        `decoded`: samples this worker has decoded this epoch, which with the worker keys the augmentation."""
        size = self.image_size
        if worker is None or self.slots is None:
            images = handle = torch.empty((count, size, size, 3), dtype=torch.uint8)
        else:
            slot = self.slots.take(worker)
            images, handle = self.slots.images[worker, slot, :count], (worker, slot, count)
        label_values = np.empty(count, dtype=np.int64)
        pixels = images.numpy()
        for i in range(count):
            shard, key, jpeg, cls = next(samples)
            try:
                label_values[i] = parse_label(cls, len(self.split.classes))
                pixels[i] = (decode_train(jpeg, size, rng, windows) if self.plan.train
                             else decode_val(jpeg, size, windows))
            except DECODE_ERRORS as exc:
                raise ShardError(f"shard {shard.path}: sample {key!r}: {exc}") from exc
        if self.augmenter is not None:  # in the workers, in parallel, rather than in the main process
            self.augmenter(images, (self.seed, self.epoch, self.rank, worker or 0, decoded))
        return handle, label_values


def _worker_items(batches):
    """The DataLoader's items; a worker that died (killed by the system, e.g. for memory) is a LoaderFailed."""
    while True:
        try:
            item = next(batches)
        except StopIteration:
            return
        except RuntimeError as exc:
            raise _worker_death(exc) from exc
        except (ConnectionError, EOFError) as exc:
            # A worker killed while the main process received what it sent (a tensor passed by file descriptor
            # from the worker's resource sharer): the DataLoader has not noticed the death yet.
            dead = _dead_workers(batches)
            if not dead:
                raise
            raise LoaderFailed(f"torch loader: DataLoader worker (pid {dead[0]}) exited unexpectedly while handing "
                               f"over a batch ({type(exc).__name__}: {exc})") from exc
        yield item


def _worker_death(exc):
    """The LoaderFailed for the DataLoader's RuntimeError about a dead worker; any other RuntimeError as it is."""
    if "DataLoader worker" not in str(exc):
        return exc
    return LoaderFailed(f"torch loader: {' '.join(str(exc).split())[:300]}")


def _dead_workers(batches, wait_s=1.0):
    """The pids of the DataLoader's workers that have exited, looked for during up to `wait_s` (a process whose
    socket the main process saw close is about to be, if not yet, reaped)."""
    deadline = time.monotonic() + wait_s
    while True:
        dead = [worker.pid for worker in getattr(batches, "_workers", ()) if not worker.is_alive()]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


_END_GRACE_S = 10.0  # how long ended workers may take to exit before they are killed


def _end_workers(batches):
    """Ends the DataLoader iterator's worker processes now, whatever they are doing. Dropping the iterator is not
    enough: an exception raised inside the DataLoader keeps it alive in its traceback until the interpreter exits,
    and the workers ignore SIGTERM (see ShardStream.__iter__), so multiprocessing's own shutdown at exit (terminate,
    then join) would wait for them forever. Workers that do not exit within _END_GRACE_S of the DataLoader's
    shutdown request are killed."""
    workers = list(getattr(batches, "_workers", ()))
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        try:
            shutdown()  # asks them to stop and joins them (up to 5 s each)
        except RuntimeError:  # a worker's death, noticed only now: the epoch is over and its error told already
            pass
    deadline = time.monotonic() + _END_GRACE_S
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()


def _indexed(shard):
    return bool(shard.index_path) and (is_remote(shard.index_path) or os.path.exists(shard.index_path))


def _pop_random(buffer, rng):
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


class TorchLoader(Loader):
    """cache: a ShardCache for shards in object storage, or None to read them with ranged requests."""
    backend = "torch"
    augments_in_workers = True

    def __init__(self, *args, cache=None, **kwargs):
        self.cache = cache
        super().__init__(*args, **kwargs)
        if self.shuffle_block and not all(_indexed(shard) for shard in self.split.shards):
            # Reads at offsets need every shard's .idx; shards written without them stream in storage order.
            log.warning("split %r of %s: not every shard has its DALI index (.idx), so train epochs read the "
                        "storage order, the same every epoch; tools/make_shards.py writes the indexes",
                        self.split.name, self.split.shard_dir)
            self.shuffle_block = 0
            self._order = self._shards_of = (None, None)  # computed for the block asked
        self._pool = None  # _WorkerPool: the worker processes, started by the first epoch run with workers
        self._index = None  # SampleIndex of the split, made for the first epoch in a fresh order

    def _checked_while_reading(self, shard):
        # Remote shards: every member is compared with its checksum as read, or the cached copy with the sha256.
        return is_remote(shard.path) and (self.cache is not None or bool(shard.checksums_path))

    def _epoch_batches(self, plan):
        pieces = _PIECES_PER_BATCH if plan.train and self.workers > 1 and plan.batch_size % _PIECES_PER_BATCH == 0 \
            else 1
        shards = self.split.shards
        plans = _EpochPlans(self.split.num_samples, self.rank, self.world_size, self.per_rank_batch, plan.train,
                            pieces, self.seed)
        order = self.epoch_order()
        if self.shuffle_block and self._index is None:  # before the workers fork: they share its pages
            remote = is_remote(shards[0].path)
            self._index = SampleIndex(shards, checked=remote and self.cache is None)
        dataset_options = dict(image_size=self.image_size, rank=self.rank, num_workers=self.workers,
                               cache=self.cache, augmenter=self._augmenter, index=self._index)
        pool = None if self.workers == 0 else self._worker_pool(plans, dataset_options)
        slots = pool.slots if pool is not None else None
        pending = []
        try:
            if pool is None:
                batches = iter(ShardStream(self.split, plans, torch.tensor([self.epoch]),
                                           None if order is None else torch.from_numpy(order), **dataset_options))
            else:
                batches = pool.start_epoch(self.epoch, order)
            for item in _worker_items(batches):
                if isinstance(item, _Failure):
                    raise item.error()
                pending.append(item)
                if len(pending) < pieces:
                    continue
                views = [handle if isinstance(handle, torch.Tensor) else slots.view(handle) for handle, _ in pending]
                labels = torch.from_numpy(np.concatenate([labels for _, labels in pending]))
                if self.device.type != "cpu":  # the slots are released below: copy() makes that safe
                    *views, labels = self._copier.copy([*views, labels])
                with host_work_threads():
                    images = self._normalize(*views)
                for handle, _ in pending:
                    if not isinstance(handle, torch.Tensor):
                        slots.release(handle)
                pending = []
                yield images, labels
        except GeneratorExit:  # left early (a break, a stop between steps): the workers wait for the next epoch
            if pool is not None:
                pool.slots.close_epoch()
                self._end_epoch(pool)
            raise
        except BaseException:  # a failure (here or in a worker): the epoch's workers end with it
            self.close()
            raise
        if pool is not None:
            self._end_epoch(pool)

    def _end_epoch(self, pool):
        """Train workers wait for the next epoch. Val workers end: a val pass comes once per train epoch, so
        starting them again costs a second or two per ImageNet epoch, while keeping them would hold a second set
        of idle processes (and their memory) through every train epoch."""
        if self.train:
            pool.end_epoch()
        else:
            self.close()

    def _worker_pool(self, plans, dataset_options):
        """The running _WorkerPool for this epoch's batch geometry: the last one, or a new one in its place."""
        key = (plans, self.image_size)
        if self._pool is not None and self._pool.key != key:
            self.close()  # another crop size (progressive resizing) or batch: new slots, new workers
        if self._pool is None:
            piece_size = plans.batch_size // plans.pieces
            # The DataLoader starts its workers with the default start method; the semaphores must match it.
            # Progress needs more slots per worker than the pieces the main process holds while it assembles a
            # batch (_PIECES_PER_BATCH - 1); the prefetched items on top keep the workers from waiting.
            slots = BatchSlots(self.workers, _PREFETCH + _PIECES_PER_BATCH, piece_size, self.image_size,
                               multiprocessing.get_context())
            epoch_state = torch.zeros(1, dtype=torch.int64).share_memory_()
            order_state = torch.empty(self.split.num_samples, dtype=torch.int64).share_memory_() \
                if self.shuffle_block else None
            dataset = ShardStream(self.split, plans, epoch_state, order_state, slots=slots, **dataset_options)
            self._pool = _WorkerPool(key, dataset, self.workers, slots, epoch_state, order_state)
        return self._pool

    def close(self):
        """Ends the loader's worker processes now (they also end when the loader is collected, or at exit);
        the next epoch starts new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.end()


class _WorkerPool:
    """One DataLoader's worker processes, kept from epoch to epoch (persistent_workers): each iteration resumes
    the same processes, which read the new epoch's number from `epoch_state` and its sample order from
    `order_state` (shared memory) when they start it.
    No pin_memory: images arrive in BatchSlots, which the Normalizer copies to the device itself."""

    def __init__(self, key, dataset, workers, slots, epoch_state, order_state):
        self.key, self.slots, self.epoch_state, self.order_state = key, slots, epoch_state, order_state
        # collate_fn: items travel as they are made. The DataLoader's default turns the labels' numpy array into
        # a tensor, which then crosses as a shared-memory file passed over a socket of its own: 2 ms of the main
        # process per item, against microseconds for the pickled array.
        self.loader = DataLoader(dataset, batch_size=None, collate_fn=_as_made, num_workers=workers,
                                 prefetch_factor=_PREFETCH, persistent_workers=True)
        self.batches = None  # the DataLoader's iterator, made by the first epoch (which forks the workers)
        _live_pools.add(self)
        # Ends the workers when the pool is collected without end(): its loader dropped, never closed.
        self._finalizer = weakref.finalize(self, _end_iterator, slots, self.loader)

    def start_epoch(self, epoch, order):
        """The DataLoader's iterator, resumed for `epoch`, read in `order` (its sample ids, or None for storage
        order; its first call starts the workers); LoaderFailed when a worker died while they waited for it."""
        if self.batches is not None:
            dead = [worker.pid for worker in self.batches._workers if not worker.is_alive()]
            if dead:
                raise LoaderFailed(f"torch loader: DataLoader worker (pid {dead[0]}) exited unexpectedly while the "
                                   "workers waited for the next epoch (killed by the system?)")
            _watch_deaths(self.batches, True)
        self.epoch_state[0] = epoch
        if order is not None:
            self.order_state.copy_(torch.from_numpy(order))
        try:
            self.batches = iter(self.loader)  # the same iterator, reset: its workers start `epoch` at their next item
        except RuntimeError as exc:
            raise _worker_death(exc) from exc
        return self.batches

    def end_epoch(self):
        """Between epochs a worker's death is found when the next one starts (start_epoch), not at once."""
        _watch_deaths(self.batches, False)

    def end(self):
        _live_pools.discard(self)
        self._finalizer()


def _watch_deaths(iterator, watch):
    """Registers the iterator's workers with torch's SIGCHLD handler (`watch`), or takes them off it. The handler
    raises a worker's death in the main thread wherever that thread is: during an epoch that is the loader's
    own wait for a batch (a LoaderFailed, see _worker_items); between epochs it would be anywhere in the training
    step or validation, as a RuntimeError traceback. torch registers them when it starts them and takes them off
    at shutdown (its _worker_pids_set flag says which); the same two calls are used here."""
    registered = getattr(iterator, "_worker_pids_set", None)
    if registered is None or registered == watch:  # another torch, or already so
        return
    if watch:
        signal_handling._set_worker_pids(id(iterator), tuple(worker.pid for worker in iterator._workers))
    else:
        signal_handling._remove_worker_pids(id(iterator))
    iterator._worker_pids_set = watch


def _as_made(item):
    return item


def _end_iterator(slots, loader):
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        slots.close_epoch()  # a worker waiting for a slot stops waiting
        _end_workers(iterator)
        loader._iterator = None


_live_pools = weakref.WeakSet()


def _end_live_pools():
    """At exit, before multiprocessing's own exit hook (hooks run last-registered first, and multiprocessing.util,
    imported above, registered its hook on import): that one would terminate the workers, which ignore SIGTERM,
    and then join them forever."""
    for pool in list(_live_pools):
        pool.end()


atexit.register(_end_live_pools)
