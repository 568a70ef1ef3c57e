"""One loader door, three backends: `build_loader(shard_dir, split, per_rank_batch, ...)`.

    loader = build_loader("shards/", "train", 256, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # images (B,3,S,S) normalised, channels_last, on device; labels int64
            ...

Backends (pipeline/backends.py, the registry): 'dali' (GPU decode and augmentation), 'dali-cpu' (the same DALI
graph on CPU operators), 'torch' (ROI JPEG decode + Pillow-SIMD in DataLoader workers; needs neither DALI nor a
GPU), 'auto' (= 'dali' when DALI imports, CUDA is available and DALI reads the location, else 'torch'). They
differ in speed, not in semantics: same split over ranks, same batch counts, same augmentation parameters
(pipeline/augment.py). Importing this package is cheap: torch, Pillow and DALI are imported only when a loader
is built.
"""
import logging

from shards import storage
from shards.errors import LoaderFailed, ShardError
from shards.manifest import load_split
from shards.workers import usable_cpus

from . import augment
from .backends import BACKENDS, Backend, BackendUnavailable, check_split
from .backends import CHOICES as BACKEND_CHOICES
from .backends import resolve as resolve_backend
from .verify import MODES as VERIFY_MODES
from .verify import default_record_dir

__all__ = ["BACKENDS", "BACKEND_CHOICES", "DEFAULT_CACHE_BYTES", "VERIFY_MODES", "Backend", "BackendUnavailable",
           "LoaderFailed", "ShardError", "build_loader", "default_record_dir", "default_workers", "resolve_backend"]

_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_CACHE_BYTES = 100 << 30  # ImageNet's shards are about 150 GB: most of them, on a typical local disk

log = logging.getLogger(__name__)


def default_workers():
    """Loader worker processes (torch) or threads (DALI): one per CPU this process may use, at most 8."""
    return min(8, usable_cpus())


def build_loader(shard_dir, split, per_rank_batch, *, backend="auto", rank=0, world_size=1, workers=None,
                 device=None, image_size=224, seed=0, dtype=None, verify="background", verify_dir=None,
                 cache_dir=None, cache_bytes=DEFAULT_CACHE_BYTES, auto_augment=None, reprob=0.0, manifest=None,
                 shuffle_block=None):
    """A loader over `split` of the shards in `shard_dir` (written by tools/make_shards.py).

    per_rank_batch: samples per batch on this rank (a global batch of B over N ranks is B // N here). workers:
    DataLoader worker processes (torch) or DALI threads; default_workers() = min(8, the CPUs this process may use);
    0 = read in the main process
    (torch). device: where batches are delivered; default cuda:<current> when CUDA is available, else cpu.
    image_size: output side S in pixels. seed: with the epoch (set_epoch), fixes the order and augmentation.
    dtype: torch.float32 (default), float16 or bfloat16. verify: 'background' (default) hashes the rank's shards
    against the manifest's sha256 while loading, 'before' waits for that at each epoch's start, 'off' skips it
    (see Loader and pipeline/verify.py); verify_dir: where shards found intact are recorded (default
    default_record_dir(); '' records nothing). shard_dir may be a URL (s3://bucket/prefix, http(s)://host/path,
    file://; shards/storage.py). cache_dir: where the torch backend keeps verified copies of remote shards, at
    most cache_bytes of them (None: remote shards are read with ranged requests every epoch); the DALI backends
    keep only their index files there. auto_augment: an augment.AutoAugmentPolicy (or its text, e.g.
    'rand-m9-mstd0.5') applied to train samples; reprob: the chance of a random-erasing box per train sample
    (pipeline/augment.py; both off by default). backend: a name of BACKEND_CHOICES, or the Backend that
    resolve_backend returned for this location. manifest: shard_dir's parsed manifest.json when the caller has
    read it (shards.manifest.read_manifest), so that a run reads it once. shuffle_block: the samples a train
    epoch's fresh order keeps together (pipeline/rank_plan.py epoch_order: 1 is a fresh permutation, 0 the storage
    order of every epoch; None: the backend's default for the location, Backend.shuffle_block).
    Raises ShardError for a missing/damaged manifest or shard, BackendUnavailable for a backend that cannot run
    here or cannot read shard_dir, ValueError for bad arguments. A train split too small for one batch per rank
    logs a warning and yields no batches (len 0), so that evaluation-only runs still work."""
    import torch

    device = _resolve_device(device)
    dtype = torch.float32 if dtype is None else dtype
    workers = default_workers() if workers is None else workers
    _check_arguments(per_rank_batch, rank, world_size, workers, image_size, dtype)
    if not 0.0 <= reprob <= 1.0:
        raise ValueError(f"reprob must be in [0, 1], got {reprob!r}")
    if isinstance(auto_augment, str):
        auto_augment = augment.parse_auto_augment(auto_augment)
    if shuffle_block is not None and not (isinstance(shuffle_block, int) and shuffle_block >= 0):
        raise ValueError(f"shuffle_block must be an int >= 0, got {shuffle_block!r}")
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    verify_dir = default_record_dir() if verify_dir is None else verify_dir
    backend = resolve_backend(backend, device, data=shard_dir)
    remote = storage.is_remote(shard_dir)
    data = load_split(shard_dir, split, manifest=manifest)  # the DALI backends check each index they read
    check_split(backend, device, data)
    if remote:  # before the workers fork, so that they know too; the note comes from rank 0 alone. A small file
        # whose size the manifest records, not the manifest itself: that is read once.
        first = data.shards[0]
        storage.probe_ranges(first.index_path or first.checksums_path or first.path, note=rank == 0)
    if data.is_train and data.num_samples < world_size * per_rank_batch:
        log.warning("split %r of %s has %d samples, fewer than world_size * per_rank_batch = %d: the train loader "
                    "yields no batches", split, data.shard_dir, data.num_samples, world_size * per_rank_batch)
    tars_remote = any(storage.is_remote(shard.path) for shard in data.shards)  # adopted remote tars: local side files
    return backend.make(data, cache_dir, cache_bytes, per_rank_batch=per_rank_batch, rank=rank,
                        world_size=world_size, workers=workers, device=device, image_size=image_size, seed=seed,
                        dtype=dtype, verify=verify, verify_dir=verify_dir, auto_augment=auto_augment, reprob=reprob,
                        shuffle_block=backend.shuffle_block(tars_remote) if shuffle_block is None else shuffle_block)


def _resolve_device(device):
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _check_arguments(per_rank_batch, rank, world_size, workers, image_size, dtype):
    import torch

    checks = [
        (isinstance(per_rank_batch, int) and per_rank_batch >= 1,
         f"per_rank_batch must be an int >= 1, got {per_rank_batch!r}"),
        (isinstance(world_size, int) and world_size >= 1, f"world_size must be an int >= 1, got {world_size!r}"),
        (isinstance(rank, int) and 0 <= rank < world_size, f"rank must be in [0, {world_size}), got {rank!r}"),
        (isinstance(workers, int) and workers >= 0, f"workers must be an int >= 0, got {workers!r}"),
        (isinstance(image_size, int) and image_size >= 8, f"image_size must be an int >= 8, got {image_size!r}"),
        (dtype in (torch.float32, torch.float16, torch.bfloat16),
         f"dtype must be one of torch.{', torch.'.join(_DTYPES)}, got {dtype!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
