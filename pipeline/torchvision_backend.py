"""The `torch` backend: shard reading, ROI JPEG decoding and Pillow(-SIMD) resizing in DataLoader worker processes.

Each worker reads only its contiguous share of the rank's sample range (see shards.worker_plans): member bytes at
the offsets of the shard's DALI index, each behind an intact tar header (or, for shards without an index, a stock
webdataset tar stream, counting samples against the manifest). It shuffles raw JPEG bytes through a seeded buffer
(train), decodes only the crop window with the native libjpeg-turbo ROI decoder (pipeline/roi_jpeg.py; Pillow
decodes the whole image where that library is not built), downscaled in the DCT domain whenever the crop allows,
resizes it with Pillow(-SIMD), and writes uint8 HWC batches into shared-memory slots (BatchSlots; DataLoader
batch_size=None; train batches in halves, see _PARTS_PER_BATCH). The main process moves the parts to the device
and converts, normalises, joins and lays them out there in one step (augment.Normalizer, shared with the DALI
backends), then hands the slots back.

A damaged shard makes the worker yield a _Failure naming the file, which the main process raises as a
ShardError: one clear line instead of a worker traceback.
"""
import dataclasses
import io
import math
import multiprocessing
import os
import signal
import tarfile

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tar_file_iterator

from . import augment, roi_jpeg
from .loader import Loader, host_work_threads
from .shard_format import SAMPLE_MEMBERS, ShardError, parse_label, read_index, read_member
from .shards import SHUFFLE_BUFFER, epoch_seed, shard_segments, worker_plans

WANTED = SAMPLE_MEMBERS  # the only members ever decoded; anything else in a shard is skipped unread
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_READ_BUFFER = 1 << 20  # tarfile's stream mode reads 10 kB at a time; a large buffer saves system calls
# Train batches travel from the workers in this many equal parts, joined by the main process while it normalises
# (no extra copy). A worker's share is then counted in half batches, so the workers finish an epoch together:
# with whole batches the 448-image benchmark epoch splits 4 + 3 over 2 workers and one core idles for the last
# batch (~100 ms of a ~600 ms epoch on the 2-core VM). It also halves the wait for the first batch.
_PARTS_PER_BATCH = 2
_PREFETCH = 2  # items each worker may have ready ahead (DataLoader's prefetch_factor, its default)


class _Failure:
    """Sent from a worker instead of a batch when a shard is unusable; `message` names the shard."""

    def __init__(self, message):
        self.message = message


def decode_train(jpeg, image_size, rng, windows=None):
    """JPEG bytes -> RandomResizedCrop'd, maybe flipped, image_size x image_size RGB uint8 array (HWC)."""
    windows = windows or window_decoder()
    handle, (width, height) = windows.open(jpeg)
    left, top, crop_w, crop_h = augment.random_resized_crop_box(width, height, rng)
    box = (left, top, left + crop_w, top + crop_h)
    flip = rng.random() < augment.FLIP_PROBABILITY
    return windows.resize(handle, (width, height), box, image_size, allow_draft=True, flip=flip)


def decode_val(jpeg, image_size, windows=None):
    """JPEG bytes -> shorter side resized to image_size/0.875, centre image_size crop, RGB uint8 array (HWC).

    Full resolution, no DCT-domain downscale: val is the yardstick, so it matches the DALI backends pixel for
    pixel (within resampler rounding) rather than trading exactness for speed."""
    windows = windows or window_decoder()
    handle, (width, height) = windows.open(jpeg)
    box = augment.val_crop_box(width, height, image_size)
    return windows.resize(handle, (width, height), box, image_size, allow_draft=False)


def window_decoder():
    """The fastest window decoder this machine has: RoiWindows when the native library is built, else
    PillowWindows (same output within one grey level, see tests)."""
    return RoiWindows() if roi_jpeg.available()[0] else PillowWindows()


class PillowWindows:
    """Decodes the whole image with Pillow (DCT-downscaled with Image.draft where the window allows), then crops
    and resizes the window in one Pillow call."""

    def open(self, jpeg):
        image = Image.open(io.BytesIO(jpeg))
        return image, image.size

    def resize(self, image, size, box, image_size, allow_draft=True, flip=False):
        width, height = size
        factor = augment.draft_factor(box[2] - box[0], box[3] - box[1], image_size) if allow_draft else 1
        if factor > 1 and image.format == "JPEG":
            # Requesting (W//f, H//f) makes Pillow pick the DCT scale 1/f exactly; the result is ceil(W/f) wide.
            image.draft("RGB", (width // factor, height // factor))
            scale_x, scale_y = image.size[0] / width, image.size[1] / height
            box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return _resize(image, box, image_size, flip)


class RoiWindows:
    """Decodes only the window (plus the resampler's margin) with the native libjpeg-turbo ROI decoder
    (pipeline/roi_jpeg.py), DCT-downscaled like Image.draft where the window allows, then resizes it with
    Pillow exactly as PillowWindows does. On the shared ImageNet photographs a train window costs ~1.07 ms
    instead of ~1.50 ms (2-core VM, benchmarks/loader.py measures the loader as a whole)."""

    def __init__(self):
        self.decoder = roi_jpeg.RoiDecoder()
        self.pillow = PillowWindows()

    def open(self, jpeg):
        """(handle, (width, height)); the handle says who decodes: this decoder, or Pillow for data that is not
        a JPEG at all (Pillow reads it or raises a clear error)."""
        if not roi_jpeg.is_jpeg(jpeg):
            image, size = self.pillow.open(jpeg)
            return (self.pillow, image), size
        return (self, jpeg), self.decoder.size(jpeg)

    def resize(self, handle, size, box, image_size, allow_draft=True, flip=False):
        owner, jpeg = handle
        if owner is self.pillow:
            return self.pillow.resize(jpeg, size, box, image_size, allow_draft, flip)
        width, height = size
        factor = augment.draft_factor(box[2] - box[0], box[3] - box[1], image_size) if allow_draft else 1
        scaled_w, scaled_h = roi_jpeg.scaled_size(width, height, factor)
        scale_x, scale_y = scaled_w / width, scaled_h / height
        scaled_box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        # Pillow's resampler reads up to its filter support (1 px, times the downscale) beyond the box; decoding
        # that margin too keeps the result identical to resizing the box out of the whole image.
        support = max(1.0, (scaled_box[2] - scaled_box[0]) / image_size, (scaled_box[3] - scaled_box[1]) / image_size)
        try:
            pixels, window_box = self.decoder.decode(jpeg, scaled_box, factor, margin=math.ceil(support) + 1)
        except roi_jpeg.UnsupportedJpeg:  # CMYK/YCCK (make_shards converts them; other shards may not): Pillow
            image, _ = self.pillow.open(jpeg)
            return self.pillow.resize(image, size, box, image_size, allow_draft, flip)
        image = Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGB", 0, 1)
        return _resize(image, window_box, image_size, flip)


def _resize(image, box, image_size, flip):
    # One Pillow call crops and resamples (antialiased bilinear, like torchvision's RandomResizedCrop on PIL).
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    if flip:
        # Pillow mirrors the small output in ~0.01 ms; copying a reversed numpy view (HWC, negative stride)
        # into the batch cost ~0.1 ms per image (profile of _decode_batch).
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def read_samples(shard, first, stop):
    """Yields (key, jpg_bytes, cls_bytes) for samples first..stop-1 of `shard`: through its DALI .idx when the
    manifest names one that exists (make_shards always writes it; only the DALI backends need it), else by
    streaming the tar with webdataset."""
    if shard.index_path and os.path.exists(shard.index_path):
        return read_indexed_samples(shard, first, stop)
    return read_streamed_samples(shard, first, stop)


def read_indexed_samples(shard, first, stop):
    """Reads each wanted member's bytes at the offset the .idx gives: no tar parsing in Python, which cost ~0.15 ms
    per sample on the 2-core VM (a tenth of the loader's CPU). Every member's own tar header is read too and must
    be intact (checksum) and agree with the index on the size, so a shard overwritten in place, which keeps its
    size, still fails naming the file."""
    records = read_index(shard)
    try:
        with open(shard.path, "rb", buffering=0) as stream:
            fd = stream.fileno()
            for number in range(first, stop):
                parts = {}
                for ext in WANTED:
                    if ext not in records[number]:
                        raise ShardError(f"shard {shard.path}: sample {number} has no .{ext} member in "
                                         f"{shard.index_path}")
                    offset, size, name = records[number][ext]
                    parts[ext] = read_member(shard, fd, offset, size)
                yield name.rsplit(".", 1)[0], parts["jpg"], parts["cls"]
    except OSError as exc:
        raise ShardError(f"shard {shard.path} is unreadable: {exc}") from exc


def read_streamed_samples(shard, first, stop):
    """Yields (key, jpg_bytes, cls_bytes) for samples first..stop-1 of `shard` by streaming the tar, counting
    every sample.

    ShardError naming the file when the tar is unreadable, a sample lacks .jpg or .cls, or the shard holds fewer
    samples than the manifest says (a tar cut short or zero-filled reads as a clean end of archive), or more
    (checked when the range reaches the shard's end)."""
    count, key, parts = 0, None, {}
    must_reach_end = stop == shard.samples
    try:
        with open(shard.path, "rb", buffering=_READ_BUFFER) as stream:
            for member in tar_file_iterator(stream, select_files=_wanted_member):
                member_key, ext = member["fname"].split(".", 1)
                if member_key == key:
                    parts[ext] = member["data"]
                    continue
                if key is not None:
                    if first <= count < stop:
                        yield _complete(shard, key, parts)
                    count += 1
                    if count >= stop and not must_reach_end:
                        return
                key, parts = member_key, {ext: member["data"]}
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise ShardError(f"shard {shard.path} is unreadable after {count} samples: {exc}") from exc
    if key is not None:
        if first <= count < stop:
            yield _complete(shard, key, parts)
        count += 1
    if count != shard.samples:
        raise ShardError(f"shard {shard.path} holds {count} samples but the manifest says {shard.samples}: "
                         "the file is damaged (cut short or overwritten); re-run tools/make_shards.py")


def _wanted_member(fname):
    return "." in fname and fname.split(".", 1)[1] in WANTED


def _complete(shard, key, parts):
    missing = [ext for ext in WANTED if ext not in parts]
    if missing:
        raise ShardError(f"shard {shard.path}: sample {key!r} has no .{missing[0]} member")
    return key, parts["jpg"], parts["cls"]


class ShardStream(IterableDataset):
    """The per-worker reader: yields (uint8 images NHWC, int64 labels) batches, or a _Failure."""

    def __init__(self, split, plan, *, image_size, seed, epoch, rank, num_workers, slots=None):
        self.split, self.plan = split, plan
        self.image_size, self.seed, self.epoch, self.rank = image_size, seed, epoch, rank
        self.num_workers = max(1, num_workers)
        self.slots = slots  # BatchSlots shared with the main process, or None: a new tensor per batch

    def __iter__(self):
        info = get_worker_info()
        if info is not None:
            # Pre-emption: launchers and schedulers (torchrun, SLURM) signal the whole process group. The rank, not
            # its loader workers, acts on it: it finishes its step, saves and then closes the epoch, which ends
            # these workers (EpochClosed below). A worker killed by the signal would crash the rank instead.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker = info.id if info is not None else 0
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

    def _batches(self, share, rng, windows, worker):
        samples = self._samples(share, rng)
        remaining = share.batches * self.plan.batch_size if self.plan.train else share.stop - share.start
        while remaining > 0:
            count = min(self.plan.batch_size, remaining)
            yield self._decode_batch(samples, count, rng, windows, worker)
            remaining -= count
        for _ in samples:  # read the rest of the share (the dropped remainder) so its shards get counted
            pass

    def _samples(self, share, rng):
        """Raw samples of the share: in order for val, through a seeded shuffle buffer for train."""
        stream = ((shard, key, jpeg, cls)
                  for shard, first, stop in shard_segments(self.split.shards, share.start, share.stop)
                  for key, jpeg, cls in read_samples(shard, first, stop))
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

    def _decode_batch(self, samples, count, rng, windows, worker):
        """(images, labels): images is a uint8 NHWC tensor, or (worker, slot, count) naming the BatchSlots slot
        that holds them when running in a worker process; labels is an int64 numpy array (sent by value)."""
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
            except _DECODE_ERRORS as exc:
                raise ShardError(f"shard {shard.path}: sample {key!r}: {exc}") from exc
        return handle, label_values


class EpochClosed(Exception):
    """Raised in a worker waiting for a slot when the main process has stopped reading the epoch."""


class BatchSlots:
    """Shared-memory uint8 batch buffers, allocated once per loader, that the workers fill and the main process
    reads in turn.

    Otherwise every worker batch is a fresh shared-memory segment whose handle travels over a socket and whose
    pages fault in twice, on the worker's writes and on the main process's first read: the main process took
    3.9 ms to normalise a 32-image part from a fresh segment and ~1.2 ms from memory it had read before (cProfile,
    2-core VM). Here a worker fills slot k only after the main process has released it: one semaphore per worker
    counts its free slots, and both sides go round the slots in the same order, because the DataLoader delivers
    each worker's items in the order they were made and the main process releases them in that order."""

    def __init__(self, workers, slots, batch_size, image_size):
        self.count = slots
        shape = (workers, slots, batch_size, image_size, image_size, 3)
        _check_shared_memory(math.prod(shape), workers, slots)
        self.images = torch.empty(shape, dtype=torch.uint8)
        self.images.share_memory_()
        self._main_pid = os.getpid()
        self._free = []
        self._closed = None
        self._next = [0] * workers  # the next slot each worker fills (each worker process has its own copy)

    def new_epoch(self, context):
        """Fresh counters for a new set of worker processes (an epoch left early leaves slots unreleased)."""
        self._free = [context.Semaphore(self.count) for _ in range(len(self._next))]
        self._closed = context.Event()
        self._next = [0] * len(self._next)

    def close_epoch(self):
        """Main side, when the epoch's iteration ends (also early): a worker waiting for a slot stops now instead
        of holding up the DataLoader's shutdown, which would wait 5 s for it and then kill it."""
        self._closed.set()

    def take(self, worker):
        """Worker side: waits for the next slot of `worker` to be free and returns its index; EpochClosed when
        the main process has stopped reading this epoch."""
        while not self._free[worker].acquire(timeout=0.05):
            if self._closed.is_set():
                raise EpochClosed()
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


def _pop_random(buffer, rng):
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


def _check_shared_memory(needed, workers, slots, folder="/dev/shm"):
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


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = None  # BatchSlots, made for the first epoch run with worker processes

    def _epoch_batches(self, plan):
        parts = _PARTS_PER_BATCH if plan.train and self.workers > 1 and plan.batch_size % _PARTS_PER_BATCH == 0 else 1
        worker_plan = dataclasses.replace(plan, batch_size=plan.batch_size // parts, batches=plan.batches * parts)
        slots = self._batch_slots(worker_plan.batch_size)
        dataset = ShardStream(self.split, worker_plan, image_size=self.image_size, seed=self.seed, epoch=self.epoch,
                              rank=self.rank, num_workers=self.workers, slots=slots)
        # Fresh workers every epoch: they fork with this epoch's plan and seed (persistent workers would not).
        # No pin_memory: images arrive in BatchSlots, which the Normalizer copies to the device itself.
        loader = DataLoader(dataset, batch_size=None, num_workers=self.workers,
                            prefetch_factor=_PREFETCH if self.workers else None, persistent_workers=False)
        batches = iter(loader)
        pending = []
        try:
            for item in batches:
                if isinstance(item, _Failure):
                    raise ShardError(item.message)
                pending.append(item)
                if len(pending) < parts:
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
        finally:
            if slots is not None:
                slots.close_epoch()
            # Dropping the iterator joins the worker processes now, also on an early break or an error
            # (an exception's traceback would otherwise keep them alive).
            del batches

    def _batch_slots(self, part_size):
        """This loader's BatchSlots (None without worker processes), renewed for the epoch."""
        if self.workers == 0:
            return None
        if self._slots is None or self._slots.images.shape[2] != part_size:
            # Progress needs more slots per worker than the parts the main process holds while it assembles a
            # batch (_PARTS_PER_BATCH - 1); the prefetched items on top keep the workers from waiting.
            self._slots = BatchSlots(self.workers, _PREFETCH + _PARTS_PER_BATCH, part_size, self.image_size)
        # The DataLoader starts its workers with the default start method; the semaphores must match it.
        self._slots.new_epoch(multiprocessing.get_context())
        return self._slots
