"""The loader object every backend returns: `iter`, `len`, `set_epoch` and a few read-only attributes."""
import contextlib

import torch

from shards.errors import ShardError

from .augment import AutoAugmenter, erase_batch
from .normalize import Normalizer
from .rank_plan import epoch_order, order_segments, rank_plan
from .transfer import DeviceCopier
from .verify import shared_verifier


@contextlib.contextmanager
def host_work_threads():
    """Runs the loader's own host tensor work (normalising, resizing) on one intra-op thread, then restores
    the caller's setting.

    That work runs while the loader's workers or DALI threads keep every core busy decoding, so a second intra-op
    thread has no free core: it only contends and spin-waits, which cost both CPU backends a quarter of their speed
    on 2 cores (BENCHMARKS.md, "Profiles behind the code"). The model's own ops outside this block keep the caller's
    thread count."""
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
    batches this rank yields this epoch (identical on every rank for train).

    Shard checksums (pipeline/verify.py): the shards of this rank's range are hashed in the background from the
    moment the loader exists. An epoch starts only if none of its shards is known to be damaged; a val epoch,
    or any epoch with verify='before', first waits until all of its shards are verified. During a train epoch
    the caller asks `shard_problem()` between steps (train.py does, and stops cleanly)."""

    backend = None  # resolved name, set by subclasses: 'dali' | 'dali-cpu' | 'torch'
    augments_in_workers = False  # True: the backend's workers apply --auto-augment, keyed by (worker, position)

    def __init__(self, split, *, per_rank_batch, rank, world_size, workers, device, image_size, seed, dtype,
                 verify="background", verify_dir="", auto_augment=None, reprob=0.0, shuffle_block=0):
        self.split = split
        # Train: samples the epoch's order keeps together (pipeline/rank_plan.py epoch_order; 0: storage order).
        self.shuffle_block = shuffle_block if self.train else 0
        self._order = (None, None)  # (epoch, its epoch_order), computed once per epoch
        self._shards_of = (None, None)  # ((epoch, start, stop), the shards those positions read)
        self.per_rank_batch = per_rank_batch
        self.rank = rank
        self.world_size = world_size
        self.workers = workers
        self.device = device
        self.image_size = image_size
        self.seed = seed
        self.dtype = dtype
        self.epoch = 0
        # Backends deliver uint8 NHWC pixels; this one shared step makes them the contract's float batches.
        self._normalizer = Normalizer(device, dtype)
        # Train only: automatic augmentation of the pixels and random erasing after normalisation (augment.py).
        self._augmenter = AutoAugmenter(auto_augment) if auto_augment is not None and self.train else None
        self._reprob = reprob if self.train else 0.0
        self._batches_normalized = 0  # batches of this epoch so far: where the next batch's samples stand
        self._copier = DeviceCopier(device)  # host tensors to the device, off the training stream
        self.verify = verify
        self._verifier = None if verify == "off" else shared_verifier(verify_dir)
        if self._verifier is not None:
            self._verifier.submit(self._plan_shards(self.plan()))

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

    def set_image_size(self, image_size):
        """Selects the crop side of the batches the next iteration yields (progressive resizing changes it
        between epochs; every backend applies it from the next epoch on, without other change)."""
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        self.image_size = image_size

    def plan(self):
        """This rank's RankPlan for the current epoch."""
        return rank_plan(self.split.num_samples, rank=self.rank, world_size=self.world_size,
                         batch_size=self.per_rank_batch, epoch=self.epoch, train=self.train)

    def __len__(self):
        return self.plan().batches

    def epoch_order(self):
        """The current epoch's sample ids in reading order (rank_plan.epoch_order), or None for storage order."""
        if self._order[0] != self.epoch:
            self._order = (self.epoch, epoch_order([shard.samples for shard in self.split.shards], seed=self.seed,
                                                   epoch=self.epoch, block=self.shuffle_block))
        return self._order[1]

    def segments(self, start, stop):
        """(shard, first, stop) runs that positions [start, stop) of the current epoch read, in reading order."""
        return order_segments(self.split.shards, self.epoch_order(), start, stop)

    def _plan_shards(self, plan):
        """The shards of the plan that the background check hashes (asked between steps: computed once)."""
        key = (self.epoch, plan.start, plan.stop)
        if self._shards_of[0] != key:
            shards = {id(shard): shard for shard, _, _ in self.segments(plan.start, plan.stop)}
            self._shards_of = (key, [shard for shard in shards.values() if not self._checked_while_reading(shard)])
        return self._shards_of[1]

    def _checked_while_reading(self, shard):
        """True where the backend itself checks every byte it reads of `shard`, so hashing it would only read
        it twice (for a shard in object storage: download it twice)."""
        return False

    def shard_problem(self, wait=False):
        """The one-line description of a damaged shard in this epoch's range, else None. Without `wait` it only
        reports what the background check has found so far; with it, it first waits for the whole range."""
        if self._verifier is None:
            return None
        shards = self._plan_shards(self.plan())
        return self._verifier.wait(shards) if wait else self._verifier.problem(shards)

    def __iter__(self):
        plan = self.plan()
        if plan.batches == 0:
            return
        if self._verifier is not None:
            shards = self._plan_shards(plan)
            if self.verify == "before" or not self.train:
                problem = self._verifier.wait(shards)
            else:
                self._verifier.submit(shards, urgent=True)
                problem = self._verifier.problem(shards)
            if problem:
                raise ShardError(problem)
        produced = 0
        self._batches_normalized = 0
        for images, labels in self._epoch_batches(plan):
            produced += 1
            yield images, labels
        if produced != plan.batches:
            # Shard counts are verified while reading, so this means a bug in the split logic, not bad data.
            raise RuntimeError(f"{self.backend} loader yielded {produced} batches, expected {plan.batches} "
                               f"(split {self.split.name!r}, rank {self.rank}/{self.world_size}, epoch {self.epoch})")

    def _epoch_batches(self, plan):
        raise NotImplementedError

    def close(self):
        """Ends what the loader keeps running from epoch to epoch (the torch backend's worker processes); an
        epoch after it starts them again. Also done by a `with` block, the loader's collection and at exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def augments(self):
        """True when batches must pass through _normalize (DALI's GPU graph then emits uint8 pixels)."""
        return self._augmenter is not None or bool(self._reprob)

    def _normalize(self, *parts):
        """One batch from uint8 NHWC parts (concatenated along N): augmented (unless the workers did it),
        normalised, erased. Each sample's draws are keyed by (seed, epoch, rank, its position in the rank's
        epoch)."""
        first = self._batches_normalized * self.per_rank_batch
        if self._augmenter is not None and not self.augments_in_workers:
            parts = [part.to(self.device, non_blocking=True) for part in parts]
            position = first
            for part in parts:
                self._augmenter(part, (self.seed, self.epoch, self.rank, position))
                position += part.shape[0]
        images = self._normalizer(*parts)
        if self._reprob:
            erase_batch(images, self._reprob, (self.seed, self.epoch, self.rank, first))
        self._batches_normalized += 1
        return images

    def __repr__(self):
        return (f"{type(self).__name__}(backend={self.backend!r}, split={self.split.name!r}, "
                f"samples={self.num_samples}, per_rank_batch={self.per_rank_batch}, rank={self.rank}/{self.world_size},"
                f" batches={len(self)}, device={self.device}, image_size={self.image_size})")
