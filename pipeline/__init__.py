"""One loader door, three backends: `build_loader(shard_dir, split, batch_size, ...)`.

    loader = build_loader("shards/", "train", 256, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # images (B,3,S,S) normalised, channels_last, on device; labels int64
            ...

Backends: 'dali' (GPU decode and augmentation), 'dali-cpu' (the same DALI graph on CPU operators), 'torch'
(ROI JPEG decode + Pillow-SIMD in DataLoader workers; needs neither DALI nor a GPU), 'auto' (= 'dali' when
DALI imports and CUDA is available, else 'torch'). They differ in speed, not in semantics: same split over
ranks, same batch counts, same augmentation parameters (pipeline/augment.py). Importing this package is cheap:
torch, Pillow and DALI are imported only when a loader is built.
"""
import atexit
import hashlib
import logging
import os
import shutil
import tempfile

from shards import storage
from shards.errors import ShardError
from shards.manifest import check_index_file, load_split

from . import augment
from .shard_cache import ShardCache
from .verify import MODES as VERIFY_MODES
from .verify import default_record_dir

__all__ = ["BACKENDS", "DEFAULT_CACHE_BYTES", "VERIFY_MODES", "BackendUnavailable", "ShardError", "build_loader",
           "default_record_dir", "default_workers", "resolve_backend"]

BACKENDS = ("auto", "dali", "dali-cpu", "torch")
_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_CACHE_BYTES = 100 << 30  # ImageNet's shards are about 150 GB: most of them, on a typical local disk

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


def default_workers():
    """Loader worker processes (torch) or threads (DALI): one per CPU core, at most 8."""
    return min(8, os.cpu_count() or 1)


def resolve_backend(backend, device, data=None):
    """The concrete backend name for `backend` on `device` reading `data` (a shard folder or URL), or
    BackendUnavailable naming the reason."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return backend
    if backend == "auto" and storage.scheme_of(data or "") not in ("", "s3"):
        log.info("loader backend auto -> torch (DALI reads neither http:// nor https://)")
        return "torch"
    if backend == "auto":
        reason = _dali_gpu_problem(device)
        chosen = "torch" if reason else "dali"
        log.info("loader backend auto -> %s%s", chosen, f" ({reason})" if reason else "")
        return chosen
    dali_error = _dali_import_problem()
    if dali_error:
        raise BackendUnavailable(f"backend {backend!r} cannot run: {dali_error}")
    if backend == "dali":
        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'dali' needs a CUDA GPU and none is available "
                                     "(use backend 'dali-cpu' or 'torch')")
        if device.type != "cuda":
            raise BackendUnavailable(f"backend 'dali' delivers batches on the GPU; device {device} is not a CUDA "
                                     "device (use backend 'dali-cpu' or 'torch' for CPU)")
    return backend


def _dali_import_problem():
    from .dali import import_dali
    try:
        import_dali()
    except ImportError as exc:
        return str(exc)
    return None


def _dali_gpu_problem(device):
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    if device.type != "cuda":
        return f"device {device} is not a CUDA device"
    return _dali_import_problem()


def build_loader(shard_dir, split, batch_size, *, backend="auto", rank=0, world_size=1, workers=None,
                 device=None, image_size=224, seed=0, dtype=None, verify="background", verify_dir=None,
                 cache_dir=None, cache_bytes=DEFAULT_CACHE_BYTES, auto_augment=None, reprob=0.0):
    """A loader over `split` of the shards in `shard_dir` (written by tools/make_shards.py).

    batch_size: samples per batch on this rank. workers: DataLoader worker processes (torch) or DALI threads;
    default min(8, CPU count); 0 = read in the main process (torch). device: where batches are delivered;
    default cuda:<current> when CUDA is available, else cpu. image_size: output side S in pixels. seed: with
    the epoch (set_epoch), fixes the order and augmentation. dtype: torch.float32 (default), float16 or
    bfloat16. verify: 'background' (default) hashes the rank's shards against the manifest's sha256 while
    loading, 'before' waits for that at each epoch's start, 'off' skips it (see Loader and pipeline/verify.py);
    verify_dir: where shards found intact are recorded (default default_record_dir(); '' records nothing).
    shard_dir may be a URL (s3://bucket/prefix, http(s)://host/path, file://; shards/storage.py). cache_dir:
    where the torch backend keeps verified copies of remote shards, at most cache_bytes of them (None: remote
    shards are read with ranged requests every epoch); the DALI backends keep only their index files there.
    auto_augment: an augment.AutoAugmentPolicy (or its text, e.g. 'rand-m9-mstd0.5') applied to train samples;
    reprob: the chance of a random-erasing box per train sample (pipeline/augment.py; both off by default).
    Raises ShardError for a missing/damaged manifest or shard, BackendUnavailable for a backend that
    cannot run here, ValueError for bad arguments. A train split too small for one batch per rank logs a
    warning and yields no batches (len 0), so that evaluation-only runs still work."""
    import torch

    device = _resolve_device(device)
    dtype = torch.float32 if dtype is None else dtype
    workers = default_workers() if workers is None else workers
    _check_arguments(batch_size, rank, world_size, workers, image_size, dtype)
    if not 0.0 <= reprob <= 1.0:
        raise ValueError(f"reprob must be in [0, 1], got {reprob!r}")
    if isinstance(auto_augment, str):
        auto_augment = augment.parse_auto_augment(auto_augment)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    verify_dir = default_record_dir() if verify_dir is None else verify_dir
    name = resolve_backend(backend, device, data=shard_dir)
    scheme = storage.scheme_of(shard_dir)
    if name != "torch" and scheme not in ("", "s3"):
        raise BackendUnavailable(f"backend {name!r} cannot read {scheme}:// ({shard_dir}): DALI reads local files "
                                 "and s3:// only; use backend 'torch', which reads every scheme")
    remote = scheme != ""
    data = load_split(shard_dir, split, need_index=name != "torch" and not remote)
    if remote:  # before the workers fork, so that they know too; the note comes from rank 0 alone
        storage.probe_ranges(storage.join(data.shard_dir, "manifest.json"), note=rank == 0)
    if data.is_train and data.num_samples < world_size * batch_size:
        log.warning("split %r of %s has %d samples, fewer than world_size * batch_size = %d: the train loader "
                    "yields no batches", split, data.shard_dir, data.num_samples, world_size * batch_size)
    common = dict(batch_size=batch_size, rank=rank, world_size=world_size, workers=workers, device=device,
                  image_size=image_size, seed=seed, dtype=dtype, verify=verify, verify_dir=verify_dir,
                  auto_augment=auto_augment, reprob=reprob)
    if name == "torch":
        from .torch_backend import TorchLoader
        cache = ShardCache(cache_dir, cache_bytes) if cache_dir and remote else None
        return TorchLoader(data, cache=cache, **common)
    from .dali import DaliLoader, with_local_indexes
    if remote:
        data = with_local_indexes(data, _index_folder(cache_dir, data.shard_dir))
        for shard in data.shards:
            check_index_file(shard)
    return DaliLoader(data, gpu=name == "dali", **common)


def _index_folder(cache_dir, location):
    """Where the DALI backends keep the index files of remote shards: in the cache folder, else in a temporary
    folder removed at exit."""
    if cache_dir:
        return os.path.join(cache_dir, "dali-index", hashlib.sha256(location.encode()).hexdigest()[:16])
    if location not in _index_folders:
        folder = tempfile.mkdtemp(prefix="cbam-dali-index-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _index_folders[location] = folder
    return _index_folders[location]


_index_folders = {}


def _resolve_device(device):
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _check_arguments(batch_size, rank, world_size, workers, image_size, dtype):
    import torch

    checks = [
        (isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be an int >= 1, got {batch_size!r}"),
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
