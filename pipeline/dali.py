"""The `dali` (GPU) and `dali-cpu` backends: one DALI graph, built per epoch, mixed/GPU or CPU operators.

Per epoch the pipeline is rebuilt over exactly the samples this rank reads in that epoch, in the epoch's order
(pipeline/rank_plan.py): one reader entry per run of consecutive samples of a shard, the shard's .tar beside an
index file written for the epoch that lists the run's lines of the shard's .idx (DALI's reader seeks to the
offsets an index gives, in its order). So a rank opens only the shards it trains on and reads their indexes once
per epoch, where DALI given the whole split parsed every index of it three times per epoch and opened every tar
twice. The seed is derived from (seed, epoch, rank), so `set_epoch(e)` reproduces epoch e exactly, also after a
resume. Train shuffles through a buffer and we stop after the rank's batch quota (DALI's reader keeps epochs
apart in its buffer, so no sample repeats within the quota); val reads its part in order with pad_last_batch and
we cut the padding off the last batch using the known per-rank count.

Labels: `.cls` members arrive as ASCII bytes of varying length, which is not a dense tensor. The graph pads them
to a fixed width and folds the digits with arithmetic operators (Horner's rule, skipping the padding), and also
emits a per-sample validity flag, checked on the host (CPU data, no device sync) to name a damaged shard.

GPU ('dali'): decode (mixed, nvJPEG + hardware decoder), resize and fn.crop_mirror_normalize all on the GPU; the
graph writes the normalised batch in the requested dtype (float32/float16; bfloat16 is cast after) as HWC, which
torch sees as a channels_last NCHW view. CPU ('dali-cpu'): pixels leave the graph as uint8 and are normalised by
normalize.Normalizer, the step the torch backend uses too (faster on CPU than DALI's float output); for
train the graph stops after the ROI decode and torch resizes and flips the windows on the host, because DALI's
CPU resize cost as much as the decode (see _resize_windows). Only the batches the epoch takes are scheduled
(see _epoch_batches).

DALI is imported lazily so that `import pipeline` works where DALI is not installed.
"""
import atexit
import dataclasses
import hashlib
import os
import shutil
import tempfile

import numpy as np
import torch

from shards import storage
from shards.errors import ShardError
from shards.files import write_atomic
from shards.format import INDEX_VERSION
from shards.manifest import check_index_file, find_corrupt_shard
from shards.read import local_side_file_ok, read_side_file

from . import augment
from .loader import Loader, host_work_threads
from .rank_plan import SHUFFLE_BUFFER, epoch_seed

# Host/device buffer sizes for the GPU decoder, from NVIDIA's ResNet-50 example: large enough for nearly every
# ImageNet image, so nvJPEG does not reallocate mid-epoch.
_DEVICE_MEMORY_PADDING = 211025920
_HOST_MEMORY_PADDING = 140544512
# Share of JPEGs sent to the hardware JPEG decoder where the GPU has one (A100/H100); the rest use CUDA cores.
_HW_DECODER_LOAD = 0.65
# Batches DALI prepares ahead. With scheduling stopped at the epoch's quota, depths 1, 2 and 3 measured the same
# on CPU (BENCHMARKS.md, "Profiles behind the code"); 2 leaves slack for uneven batch times.
_PREFETCH_DEPTH = 2


def import_dali():
    """(fn, types, pipeline_def), or ImportError with the reason DALI cannot be used."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as exc:
        raise ImportError(f"NVIDIA DALI is not importable ({exc}); install the 'dali' extra "
                          "(pip install nvidia-dali-cuda130)") from exc
    return fn, types, pipeline_def


def label_digits(num_classes):
    """Width (in ASCII digits) the label graph pads `.cls` members to: enough for the largest class index."""
    return len(str(max(num_classes - 1, 0)))


def _labels_from_ascii(fn, types, cls, digits, num_classes):
    """(label int64, ok bool) per sample from `.cls` bytes, computed inside the graph.

    Right-pads the bytes with 0 to `digits`, then runs Horner's rule over the positions, multiplying the
    accumulator by 10 only at digit positions: label = ((d0 * 10 + d1) * 10 + d2)... ok is true when the member
    is not empty, every byte of it is a digit and the label is below num_classes."""
    padded = fn.pad(cls, axes=(0,), shape=(digits,), fill_value=0)
    label, digit_count = None, None
    for position in range(digits):
        byte = fn.cast(padded[position], dtype=types.INT64)
        is_digit = fn.cast((byte >= 48) & (byte <= 57), dtype=types.INT64)
        value = (byte - 48) * is_digit
        if label is None:
            label, digit_count = value, is_digit
        else:
            label = label * (1 + 9 * is_digit) + value
            digit_count = digit_count + is_digit
    length = cls.shape(dtype=types.INT64)[0]
    ok = (digit_count == length) & (length > 0) & (label < num_classes)
    return label, ok


def _graph(fn, types, *, paths, index_paths, train, image_size, gpu, shuffle_fill, digits, num_classes,
           resize_on_host, normalize_dtype):
    """The DALI graph: (images uint8 HWC, labels, label_ok), plus flips when resize_on_host.

    It ends in uint8 pixels: normalisation happens in torch (normalize.Normalizer, shared with the torch backend).
    On CPU that replaced crop_mirror_normalize's float output by a flip plus a vectorised multiply-add, several
    times cheaper (BENCHMARKS.md, "Profiles behind the code"). With resize_on_host (train on CPU) the graph stops
    after the ROI decode and emits each window at its own size with its flip flag: see _resize_windows.
    With normalize_dtype (the GPU graph), fn.crop_mirror_normalize ends the graph instead: flip, normalisation
    and the cast to the requested dtype in one fused GPU pass, HWC (a channels_last view for torch)."""
    jpegs, cls = fn.readers.webdataset(
        paths=paths, index_paths=index_paths, ext=["jpg", "cls"], missing_component_behavior="error",
        random_shuffle=train,
        initial_fill=shuffle_fill, pad_last_batch=not train, name="reader")
    labels, ok = _labels_from_ascii(fn, types, cls, digits, num_classes)
    decoder = dict(device="mixed" if gpu else "cpu", output_type=types.RGB,
                   # EXIF orientation is ignored, like Pillow and torchvision do, so backends agree.
                   adjust_orientation=False)
    if gpu:
        decoder.update(device_memory_padding=_DEVICE_MEMORY_PADDING, host_memory_padding=_HOST_MEMORY_PADDING,
                       hw_decoder_load=_HW_DECODER_LOAD)
    if train:
        # ROI decoding: only the randomly chosen window is decoded.
        images = fn.decoders.image_random_crop(
            jpegs, random_area=list(augment.CROP_AREA), random_aspect_ratio=list(augment.CROP_RATIO),
            num_attempts=augment.CROP_ATTEMPTS, **decoder)
        flips = fn.random.coin_flip(probability=augment.FLIP_PROBABILITY)
        if resize_on_host:
            return images, labels, ok, flips
        images = fn.resize(images, resize_x=image_size, resize_y=image_size,
                           interp_type=types.INTERP_LINEAR, antialias=True)
        if normalize_dtype is None:
            images = fn.flip(images, horizontal=flips)
    else:
        flips = 0
        start, end = _val_window(fn, types, jpegs, image_size)
        if gpu:
            # nvJPEG's default chroma upsampling differs from libjpeg-turbo's; val must match the CPU backends.
            decoder["jpeg_fancy_upsampling"] = True
        images = fn.decoders.image(jpegs, **decoder)
        images = fn.resize(images, size=(image_size, image_size), roi_start=start, roi_end=end,
                           interp_type=types.INTERP_LINEAR, antialias=True)
    if normalize_dtype is not None:
        mean = [255.0 * m for m in augment.IMAGENET_MEAN]
        std = [255.0 * s for s in augment.IMAGENET_STD]
        images = fn.crop_mirror_normalize(images, mirror=flips, mean=mean, std=std, dtype=normalize_dtype,
                                          output_layout="HWC")
    return images, labels, ok


def _val_window(fn, types, jpegs, image_size):
    """augment.val_crop_box computed in the graph from the JPEG header: (roi_start, roi_end) as (y, x)."""
    from nvidia.dali import math as dmath

    shape = fn.peek_image_shape(jpegs, adjust_orientation=False, dtype=types.FLOAT)
    height, width = shape[0], shape[1]
    side = dmath.min(height, width) * (image_size / augment.val_resize_size(image_size))
    top, left = (height - side) * 0.5, (width - side) * 0.5
    return fn.stack(top, left), fn.stack(top + side, left + side)


class DaliLoader(Loader):
    """Backend 'dali' (gpu=True: mixed decoder, GPU operators) or 'dali-cpu' (CPU operators)."""

    def __init__(self, split, *, gpu, normalize_in_graph=None, resize_on_host=None, index_dir=None, **kwargs):
        """normalize_in_graph and resize_on_host choose where those steps run (None: the faster place for the
        device); build_loader leaves both to the default, tests compare the places. index_dir: where copies of
        remote index files go (index_folder)."""
        super().__init__(split, **kwargs)
        self.gpu = gpu
        self.index_dir = index_dir
        # GPU: DALI's fused crop_mirror_normalize. CPU: uint8 out, the shared host Normalizer (faster there).
        # With --auto-augment/--reprob, uint8 out on both: the shared policy runs on the pixels (augment.py).
        if normalize_in_graph and self.augments:
            raise ValueError("normalize_in_graph leaves no uint8 pixels to augment")
        self.normalize_in_graph = gpu and not self.augments if normalize_in_graph is None else normalize_in_graph
        if resize_on_host and (gpu or self.normalize_in_graph):
            raise ValueError("resize_on_host needs the CPU graph with normalisation on the host")
        # Train on CPU: DALI decodes the random window, torch resizes it (see _resize_windows).
        self.resize_on_host = not gpu and not self.normalize_in_graph if resize_on_host is None else resize_on_host
        self.backend = "dali" if gpu else "dali-cpu"
        self._fn, self._types, self._pipeline_def = import_dali()
        self._staging = None  # uint8 batch the train windows are resized into (CPU); see _resize_windows

    def _build(self, plan, folder):
        paths, index_paths = self._reader_entries(plan, folder)
        pipe = self._pipeline_def(_graph)(
            fn=self._fn, types=self._types, paths=paths, index_paths=index_paths, train=plan.train,
            image_size=self.image_size, gpu=self.gpu,
            shuffle_fill=max(1, min(SHUFFLE_BUFFER, plan.samples)),
            digits=label_digits(len(self.split.classes)), num_classes=len(self.split.classes),
            resize_on_host=self._resize_on_host(plan), normalize_dtype=self._graph_dtype(),
            # workers=0 still needs one DALI thread: DALI has no in-process mode.
            batch_size=self.per_rank_batch, num_threads=max(1, self.workers),
            device_id=self.device.index if self.device.type == "cuda" else None,
            seed=epoch_seed(self.seed, self.epoch, self.rank), prefetch_queue_depth=_PREFETCH_DEPTH,
            exec_dynamic=True)
        pipe.build()
        return pipe

    def _reader_entries(self, plan, folder):
        """(tar paths, index paths): the reader's entries for this rank's epoch, one per run of consecutive
        samples of a shard, in reading order; each run's index, written into `folder`, holds the run's lines of
        the shard's .idx (read once, checked against the manifest and its tar: manifest.check_index_file)."""
        runs = self.segments(plan.start, plan.stop)
        by_shard = {}
        for entry, (shard, first, stop) in enumerate(runs):
            by_shard.setdefault(id(shard), (shard, []))[1].append((entry, first, stop))
        index_paths = [None] * len(runs)
        for shard, entries in by_shard.values():  # one shard's lines in memory at a time
            lines = check_index_file(local_index(shard, self.index_dir)).split(b"\n")
            for entry, first, stop in entries:
                index_paths[entry] = os.path.join(folder, f"{entry}.idx")
                with open(index_paths[entry], "wb") as handle:
                    handle.write(b"%s %d\n%s\n" % (INDEX_VERSION.encode(), stop - first,
                                                     b"\n".join(lines[1 + first:1 + stop])))
        return [shard.path for shard, _, _ in runs], index_paths

    def _resize_on_host(self, plan):
        return plan.train and self.resize_on_host

    def _graph_dtype(self):
        """DALI dtype crop_mirror_normalize writes (None: uint8 out). DALI has no bfloat16: float32, cast later."""
        if not self.normalize_in_graph:
            return None
        return self._types.FLOAT16 if self.dtype == torch.float16 else self._types.FLOAT

    def _epoch_batches(self, plan):
        folder = tempfile.mkdtemp(prefix="cbam-dali-epoch-")
        try:
            pipe = self._build(plan, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            for step in range(plan.batches):
                count = plan.last_batch_size() if step == plan.batches - 1 else self.per_rank_batch
                # The first schedule_run fills DALI's queue (_PREFETCH_DEPTH batches); later ones add one batch,
                # only while the epoch still needs it. pipe.run() keeps the queue full instead, so it computed
                # _PREFETCH_DEPTH - 1 batches past the quota every epoch (1 of 8 on a 448-image epoch of batch 64),
                # CPU time spent on images nobody reads.
                schedule = step == 0 or step + _PREFETCH_DEPTH <= plan.batches
                with host_work_threads():
                    batch, problem = self._next_batch(pipe, plan, count, schedule)
                if problem is not None:
                    raise ShardError(problem)
                yield batch
        finally:
            # Dropping the last reference stops and joins the pipeline's threads now, in this process. Errors are
            # raised without DALI objects in their tracebacks for the same reason: a pipeline kept alive by a
            # traceback could be finalised later inside a forked DataLoader worker, where its shutdown deadlocks.
            del pipe
            shutil.rmtree(folder, ignore_errors=True)

    def _next_batch(self, pipe, plan, count, schedule):
        """((images, labels), None) for the next batch, or (None, message naming the damaged shard)."""
        try:
            if schedule:
                pipe.schedule_run()
            images, labels, ok, *flips = pipe.outputs()
        except RuntimeError as exc:
            return None, self._run_failure(plan, exc)
        flags = np.asarray(ok.as_tensor())[:count]
        if not flags.all():
            # source_info is "<tar path>:<offset>:<member name>", set by the reader.
            path, _, member = labels[int(np.flatnonzero(~flags)[0])].source_info().rsplit(":", 2)
            return None, (f"shard {path}: member {member} is not a class index below {len(self.split.classes)}: "
                          "the shard is damaged; re-run tools/make_shards.py")
        label_values = torch.from_numpy(np.array(labels.as_tensor())[:count])
        labels_out = self._copier.copy([label_values])[0]
        if self.normalize_in_graph:
            # HWC -> NCHW view: channels_last strides, no copy.
            batch = self._images_to_torch(images, count).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            return (batch if batch.dtype == self.dtype else batch.to(self.dtype), labels_out), None
        pixels = self._resize_windows(images, flips[0], count) if flips else self._images_to_torch(images, count)
        if pixels.device.type == "cpu" and self.device.type != "cpu":  # dali-cpu feeding a GPU
            pixels = self._copier.copy([pixels])[0]  # the staging buffer may be refilled once this returns
        return (self._normalize(pixels), labels_out), None

    def _resize_windows(self, windows, flips, count):
        """The ROI-decoded train windows (each its own size, HWC uint8) -> (count, S, S, 3) uint8, flipped where
        the graph's coin says so.

        Why outside DALI: DALI's CPU fn.resize (linear, antialias) took as long as the ROI decode itself, torch's
        uint8 antialiased bilinear (the AVX2 kernel torchvision uses, the same triangle filter) a tenth of that
        (BENCHMARKS.md, "Profiles behind the code"). On the same windows the two agree within 1 level inside,
        0.1-0.16 levels on average; only the 2-pixel border differs more (the filter is clamped at the window edge
        differently). This is plain tensor code on the main thread, overlapping DALI's threads decoding the next
        batches, not a callback inside DALI."""
        size = self.image_size
        shape = (count, size, size, 3)
        if self._staging is None or self._staging.shape != shape:
            # Reused every batch: the normaliser copies out of it before the next batch is resized.
            self._staging = torch.empty(shape, dtype=torch.uint8)
        flip_flags = np.asarray(flips.as_tensor())[:count]
        for i in range(count):
            # (1, H, W, 3) -> (1, 3, H, W) view: unambiguously channels_last, so interpolate takes its fast
            # channels_last uint8 kernel and returns channels_last (faster, and the copy into the NHWC batch
            # below is then a plain memcpy instead of a transpose).
            window = torch.from_dlpack(windows[i]).unsqueeze(0).permute(0, 3, 1, 2)
            resized = torch.nn.functional.interpolate(window, size=(size, size), mode="bilinear", antialias=True)
            if flip_flags[i]:
                resized = resized.flip(3)
            self._staging[i] = resized[0].permute(1, 2, 0)
        return self._staging

    def _images_to_torch(self, images, count):
        # Zero copy through DLPack: DALI's dynamic executor never reuses an output buffer that is still
        # referenced, and the DLPack handshake orders the GPU work on torch's current stream.
        if self.gpu:
            with torch.cuda.device(self.device):
                batch = torch.from_dlpack(images.as_tensor())
        else:
            batch = torch.from_dlpack(images.as_tensor())
        return batch[:count]

    def _run_failure(self, plan, exc):
        """DALI's decoder errors do not say which sample failed: find the shard that differs from the manifest."""
        reason = _dali_reason(exc)
        candidates = list({id(shard): shard for shard, _, _ in self.segments(plan.start, plan.stop)}.values())
        # Hashing shards in object storage would download the rank's whole range: their sizes only, there.
        bad = find_corrupt_shard(candidates, hash_remote=False)
        if bad is not None:
            return (f"shard {bad.path} differs from its manifest entry (size or sha256): damaged; "
                    f"re-run tools/make_shards.py (DALI: {reason})")
        names = ", ".join(storage.basename(s.path) for s in candidates)
        return (f"DALI failed reading shards {names} in {self.split.shard_dir} "
                f"(all match their manifest checksums): {reason}")


def index_folder(split, cache_dir):
    """Where the DALI backends keep local copies of the split's remote index files (None: the indexes are local):
    DALI reads s3:// shards itself (its readers accept s3:// paths since NVIDIA/DALI#5415) but index files from
    local paths. In cache_dir, else a temporary folder removed at exit."""
    if not any(storage.is_remote(shard.index_path) for shard in split.shards):
        return None
    return _index_folder(cache_dir, split.shard_dir)


def local_index(shard, folder):
    """`shard` with its index at a local path: its remote index copied into `folder` unless a copy there matches
    the manifest (one that no longer does, the folder having been made again, is fetched again)."""
    if folder is None or not storage.is_remote(shard.index_path):
        return shard
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder, storage.basename(shard.index_path))
    if not local_side_file_ok(shard, "index", local):
        write_atomic(local, read_side_file(shard, "index"), durable=False)
    return dataclasses.replace(shard, index_path=local)


def _index_folder(cache_dir, location):
    if cache_dir:
        return os.path.join(cache_dir, "dali-index", hashlib.sha256(location.encode()).hexdigest()[:16])
    if location not in _index_folders:
        folder = tempfile.mkdtemp(prefix="cbam-dali-index-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _index_folders[location] = folder
    return _index_folders[location]


_index_folders = {}  # remote location -> its temporary index folder, for the life of the process


def _dali_reason(exc):
    """The informative line of a DALI error (the one after 'encountered:'), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("encountered") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__

