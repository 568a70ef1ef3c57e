"""The loader object every backend returns: `iter`, `len`, `set_epoch` and a few read-only attributes."""
import contextlib

import torch

from .augment import Normalizer
from .transfer import DeviceCopier
from .shards import rank_plan


@contextlib.contextmanager
def host_work_threads():
    """Runs the loader's own host tensor work (normalising, resizing) on one intra-op thread, then restores
    the caller's setting.

    That work runs while the loader's workers or DALI threads keep every core busy decoding, so a second
    intra-op thread has no free core: it only contends and spin-waits. On the 2-core VM, the main process at the
    default 2 threads cost dali-cpu 2.4 ms of CPU per image instead of 1.65 (790 instead of 1,045 img/s) and
    torch 2.7 instead of 2.3 ms. The model's own ops outside this block keep the caller's thread count."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Loader:
    """Iterating yields (images, labels) on `device`; subclasses implement `_epoch_batches(plan)`.

    images: (B, 3, S, S), normalised, `dtype`, channels_last; labels: int64 (B,). `len(loader)` is the number of
    batches this rank yields this epoch (identical on every rank for train)."""

    backend = None  # resolved name, set by subclasses: 'dali' | 'dali-cpu' | 'torch'

    def __init__(self, split, *, batch_size, rank, world_size, workers, device, image_size, seed, dtype):
        self.split = split
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.device = device
        self.image_size = image_size
        self.seed = seed
        self.dtype = dtype
        self.epoch = 0
        # Backends deliver uint8 NHWC pixels; this one shared step makes them the contract's float batches.
        self._normalize = Normalizer(device, dtype)
        self._copier = DeviceCopier(device)  # host tensors to the device, off the training stream

    @property
    def num_samples(self):
        """Samples in the split (all ranks together), from the manifest."""
        return self.split.num_samples

    @property
    def train(self):
        return self.split.is_train

    def set_epoch(self, epoch):
        """Selects the epoch the next iteration reads. Its order and augmentation follow from (seed, epoch) for
        a given world size, batch size and worker count, so any epoch can be replayed (e.g. after a resume)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def plan(self):
        """This rank's RankPlan for the current epoch."""
        return rank_plan(self.split.num_samples, rank=self.rank, world_size=self.world_size,
                         batch_size=self.batch_size, epoch=self.epoch, train=self.train)

    def __len__(self):
        return self.plan().batches

    def __iter__(self):
        plan = self.plan()
        if plan.batches == 0:
            return
        produced = 0
        for images, labels in self._epoch_batches(plan):
            produced += 1
            yield images, labels
        if produced != plan.batches:
            # Shard counts are verified while reading, so this means a bug in the split logic, not bad data.
            raise RuntimeError(f"{self.backend} loader yielded {produced} batches, expected {plan.batches} "
                               f"(split {self.split.name!r}, rank {self.rank}/{self.world_size}, epoch {self.epoch})")

    def _epoch_batches(self, plan):
        raise NotImplementedError

    def __repr__(self):
        return (f"{type(self).__name__}(backend={self.backend!r}, split={self.split.name!r}, "
                f"samples={self.num_samples}, batch_size={self.batch_size}, rank={self.rank}/{self.world_size}, "
                f"batches={len(self)}, device={self.device}, image_size={self.image_size})")
