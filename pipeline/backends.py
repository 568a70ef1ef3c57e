"""The loader backends, by name: what each one reads, whether it can run here, and how it is built.

A backend is one `Backend` entry in BACKENDS. Its contract:
- `name`: what `--backend` and `build_loader(backend=)` call it; `Loader.backend` of what it builds.
- `schemes`: the shard locations it reads, as shards.storage.scheme_of names them ('' = a local folder, file://
  included).
- `problem(device)`: None when it can deliver batches on `device` on this machine, else the reason in words.
  It imports nothing heavy unless it must (a CPU machine never imports DALI to learn that 'dali' cannot run).
- `reads_label_files`: it reads splits whose labels are `.labels` side files (adopted tars with labels in .json
  members, shards/format.py); DALI's reader takes labels from tar members only.
- `shuffle_block(remote)`: the samples a train epoch's fresh order keeps together by default, for local shards
  or shards in object storage (pipeline/rank_plan.py epoch_order).
- `make(split, cache_dir, cache_bytes, **common)`: the pipeline.loader.Loader over `split` (a
  shards.manifest.Split), where `common` is what build_loader passes every backend (per-rank batch, rank,
  device, ...) and cache_dir/cache_bytes say where and how much it may keep of remote shards (cache_dir None:
  nothing kept across runs).
Adding a backend is one entry here and its Loader subclass; the flags, `auto` and build_loader follow.

`resolve(choice, device, data)` turns a choice ('auto' or a name) into the Backend, once: train.py resolves it in
training/config.py and passes the Backend down to build_loader. 'auto' takes the first of AUTO_ORDER that reads
`data` and can run on `device`.
"""
import logging
from dataclasses import dataclass
from typing import Callable

from shards import storage

from .rank_plan import DALI_BLOCK, REQUEST_BLOCK, SAMPLE_BLOCK

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine or read this data; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str                    # one line for --help and documentation
    schemes: tuple                  # shards.storage.scheme_of values it reads
    problem: Callable               # problem(device) -> None, or why it cannot run on `device` here
    make: Callable                  # make(split, cache_dir, cache_bytes, **common) -> pipeline.loader.Loader
    shuffle_block: Callable = lambda remote: REQUEST_BLOCK if remote else SAMPLE_BLOCK
    reads_label_files: bool = False

    def reads(self, data):
        return storage.scheme_of(data or "") in self.schemes

    def __str__(self):
        return self.name


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
        return "it needs a CUDA GPU and none is available"
    if device.type != "cuda":
        return f"it delivers batches on the GPU; device {device} is not a CUDA device"
    return _dali_import_problem()


def _make_torch(split, cache_dir, cache_bytes, **common):
    from .shard_cache import ShardCache
    from .torch_backend import TorchLoader
    remote = any(storage.is_remote(shard.path) for shard in split.shards)  # adopted tars: maybe not the manifest's
    return TorchLoader(split, cache=ShardCache(cache_dir, cache_bytes) if cache_dir and remote else None, **common)


def _make_dali(gpu):
    def make(split, cache_dir, cache_bytes, **common):
        from .dali import DaliLoader, index_folder
        return DaliLoader(split, gpu=gpu, index_dir=index_folder(split, cache_dir), **common)
    return make


_LOCAL_AND_S3 = ("", "s3")  # DALI's readers take local paths and s3:// (NVIDIA/DALI#5415), not http(s)://

BACKENDS = {backend.name: backend for backend in (
    Backend("dali", "DALI: JPEG decode and augmentation on the GPU", _LOCAL_AND_S3, _dali_gpu_problem,
            _make_dali(gpu=True), shuffle_block=lambda remote: DALI_BLOCK),
    Backend("dali-cpu", "the same DALI graph on CPU operators", _LOCAL_AND_S3, lambda device: _dali_import_problem(),
            _make_dali(gpu=False), shuffle_block=lambda remote: DALI_BLOCK),
    Backend("torch", "ROI JPEG decode and Pillow-SIMD in DataLoader workers; needs neither DALI nor a GPU",
            ("", *storage.REMOTE_SCHEMES), lambda device: None, _make_torch, reads_label_files=True),
)}
AUTO = "auto"
CHOICES = (AUTO, *BACKENDS)
AUTO_ORDER = ("dali", "torch")  # the fastest first; 'torch' runs everywhere and reads every scheme


def resolve(choice, device, data=None):
    """The Backend that `choice` ('auto' or a name of BACKENDS) means on `device` for shards at `data` (a folder or
    URL; None: a local folder). BackendUnavailable naming the reason when a named backend cannot run here or
    cannot read `data`; ValueError for an unknown name."""
    if isinstance(choice, Backend):  # resolved before: only where it reads is checked again (cheap)
        _check_reads(choice, device, data)
        return choice
    if choice == AUTO:
        return _resolve_auto(device, data)
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(CHOICES)}, got {choice!r}")
    backend = BACKENDS[choice]
    _check_reads(backend, device, data)
    problem = backend.problem(device)
    if problem:
        raise BackendUnavailable(f"backend {choice!r} cannot run: {problem}{_instead(device, data)}")
    return backend


def check_split(backend, device, split):
    """BackendUnavailable naming the reason when `backend` cannot read the loaded `split`: tars elsewhere than its
    manifest (adopted tars in object storage) in a scheme it does not read, or labels in .labels files."""
    _check_reads(backend, device, split.shards[0].path)
    if split.label_files and not backend.reads_label_files:
        raise BackendUnavailable(f"backend {backend.name!r} cannot read split {split.name!r} of {split.shard_dir}: "
                                 "its labels are a field of the tars' .json members (adopted, in .labels files), "
                                 "and DALI's reader takes labels from tar members only; use --backend torch")


def _check_reads(backend, device, data):
    if not backend.reads(data):
        raise BackendUnavailable(f"backend {backend.name!r} cannot read {storage.scheme_of(data)}:// ({data}): it "
                                 f"reads {_scheme_names(backend.schemes)} only{_instead(device, data)}")


def _instead(device, data):
    """'; use backend ...' naming the backends that read `data` and run on `device` (only said on a failure: it may
    import DALI)."""
    usable = [name for name, backend in BACKENDS.items() if backend.reads(data) and not backend.problem(device)]
    return "; use backend " + " or ".join(repr(name) for name in usable) if usable else ""


def _resolve_auto(device, data):
    reasons = []
    for name in AUTO_ORDER:
        backend = BACKENDS[name]
        problem = None if backend.reads(data) else f"{name} cannot read {storage.scheme_of(data)}://"
        problem = problem or backend.problem(device)
        if not problem:
            log.info("loader backend auto -> %s%s", name, f" ({'; '.join(reasons)})" if reasons else "")
            return backend
        reasons.append(f"{name}: {problem}")
    raise BackendUnavailable("no loader backend can run here: " + "; ".join(reasons))


def _scheme_names(schemes):
    return ", ".join("local folders" if scheme == "" else f"{scheme}://" for scheme in schemes)
