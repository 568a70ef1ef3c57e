"""Local files written so that no reader ever sees a torn one, and the user cache folder; used by the shard writer,
the conversion, the shard cache, the DALI index copy, training's checkpoints, metrics file and run configuration,
and training's compile cache.

write_atomic writes to a temporary file in the target's folder (fsynced with `durable`), renames it into place,
removes it on any failure, and raises OSError naming the target (a failed write of an open file names no file).
Its temporaries are named by temporary_name and read back by parse_temporary_name (to sweep those of killed
writers).
"""
import contextlib
import os
import re
import tempfile

CACHE_NAME = "cbam-imagenet"  # $XDG_CACHE_HOME/cbam-imagenet, else ~/.cache/cbam-imagenet


def user_cache_dir(*parts):
    """The user cache folder of this project (the XDG base directory rule), joined with `parts`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, CACHE_NAME, *parts)


def named(exc, path):
    """`exc` with `path` as its file name when it names none (a failed write or fsync of an open file names no
    file; a worker's error would reach the user as a bare `[Errno 28] No space left on device`)."""
    return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, path)


def fsync_path(path):
    """fsync of a file or a directory by name (a directory: makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        os.close(fd)


fsync_dir = fsync_path  # the name says why it is called: a rename is only on disk once its directory is synced


def temporary_name(path):
    """`path.<pid>.tmp`: the process id keeps two writers of the same file (a rerun and a straggler of a killed
    run) from writing into one temporary file; each renames a complete file, and both write the same bytes."""
    return f"{path}.{os.getpid()}.tmp"


_TEMPORARY_NAME = re.compile(r"(.+)\.(\d+)\.tmp")


def parse_temporary_name(name):
    """(final name, writer's pid) of a file name made by temporary_name; None for any other name."""
    match = _TEMPORARY_NAME.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else None


def write_atomic(path, data, durable=True, *, before_replace=None, unique=False):
    """Writes `data` (bytes, or an iterable of bytes chunks) to `path` via a temporary file and a rename, so
    readers never see a torn file; with `durable`, the data is fsynced before the rename (a crash then leaves the
    old file or the complete new one). before_replace(): called once the data is written, just before the rename
    (to check what was written, or to move the old file aside); what it raises is raised, the file is not
    renamed. The temporary is temporary_name(path), or with `unique` a fresh `.part-*` name in the same
    folder (for files that several threads of one process may write at once). A failure (full disk, quota,
    file-size limit) removes the temporary file and raises an OSError naming `path`."""
    if unique:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".part-")
        opened = os.fdopen(fd, "wb")
    else:
        tmp = temporary_name(path)
        opened = None
    try:
        with opened or open(tmp, "wb") as f:
            for chunk in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(chunk)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise named(exc, path) from None
        raise
