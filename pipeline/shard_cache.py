"""A bounded local copy of shards read from object storage (`--cache-dir`, `--cache-size`).

The first reader of a shard copies it whole to the cache folder in ranged chunks (shards/storage.py), hashing
as it goes; only a copy whose sha256 equals the manifest's is renamed into place, so whatever the cache holds was
verified once, and later epochs read it from local disk at local speed. Its index and member checksums are copied
beside it, kept only while they match the manifest's size and sha256 (shards/format.check_side_file).

Every rank and loader worker of a machine may share one folder: a shard is copied under an exclusive lock on its
own lock file, so it is downloaded once however many processes want it at the same time; the others wait and then
read the copy. After each new copy the least recently used shards (modification time, renewed at every use) are
deleted until the folder holds at most `max_bytes` of shards, skipping any whose lock another process holds; a
reader that already opened a deleted shard keeps reading it (the file lives until it is closed).
"""
import contextlib
import dataclasses
import fcntl
import hashlib
import os

from shards import storage
from shards.errors import ShardError
from shards.files import write_atomic
from shards.read import local_side_file_ok, read_side_file

LOCK_SUFFIX = ".lock"


class ShardCache:
    def __init__(self, folder, max_bytes):
        if max_bytes <= 0:
            raise ValueError(f"the cache size must be > 0 bytes, got {max_bytes}")
        self.folder = os.path.abspath(folder)
        self.max_bytes = int(max_bytes)
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise ShardError(f"cache folder {self.folder} cannot be created: {exc.strerror}") from exc

    def __repr__(self):
        return f"ShardCache({self.folder!r}, max_bytes={self.max_bytes})"

    def local_shard(self, shard):
        """`shard` with its files replaced by verified local copies (downloaded now if the cache lacks them)."""
        if shard.bytes > self.max_bytes:
            raise ShardError(f"shard {shard.path} ({shard.bytes:,} bytes) is larger than the whole cache "
                             f"({self.max_bytes:,} bytes): raise --cache-size")
        home = self._home(shard.path)
        local = os.path.join(home, storage.basename(shard.path))
        with _locked(local + LOCK_SUFFIX):
            if not _has_size(local, shard.bytes):
                self._download(shard, local)
            os.utime(local)  # most recently used
            sidecars = {}
            for kind in ("index", "checksums"):
                remote = getattr(shard, f"{kind}_path")
                if remote:
                    sidecars[f"{kind}_path"] = os.path.join(home, storage.basename(remote))
                    if not local_side_file_ok(shard, kind, sidecars[f"{kind}_path"]):
                        _write_atomically(sidecars[f"{kind}_path"], [read_side_file(shard, kind)])
        self._evict(keep=local)
        return dataclasses.replace(shard, path=local, **sidecars)

    def _home(self, url):
        """One sub-folder per remote folder, so that equal file names of different data sets never meet."""
        folder = url.rsplit("/", 1)[0]
        home = os.path.join(self.folder, hashlib.sha256(folder.encode()).hexdigest()[:16])
        os.makedirs(home, exist_ok=True)
        return home

    def _download(self, shard, local):
        digest = hashlib.sha256()

        def chunks():
            for chunk in storage.copy_chunks(shard.path, shard.bytes):
                digest.update(chunk)
                yield chunk
        self._evict(keep=None, room=shard.bytes)
        _write_atomically(local, chunks(), before_replace=lambda: self._check(shard, digest.hexdigest()))

    @staticmethod
    def _check(shard, digest):
        if shard.sha256 and digest != shard.sha256:
            raise ShardError(f"shard {shard.path} does not match the sha256 in its manifest: the object changed "
                             "after tools/make_shards.py wrote it; upload the shard folder again")

    def _evict(self, keep, room=0):
        """Deletes least recently used shards until the cache holds at most max_bytes - room bytes of them."""
        shards = []
        for root, _, names in os.walk(self.folder):
            for name in names:
                if name.endswith(".tar"):
                    path = os.path.join(root, name)
                    with contextlib.suppress(OSError):
                        status = os.stat(path)
                        shards.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in shards)
        for _, size, path in sorted(shards):
            if total + room <= self.max_bytes:
                return
            if path == keep or not _try_delete(path):
                continue
            total -= size


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_delete(path):
    """Deletes a cached shard and its side files unless another process holds its lock; True if deleted."""
    with open(path + LOCK_SUFFIX, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        stem = path[:-len(".tar")]
        for victim in (path, stem + ".idx", stem + ".crc32"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(victim)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def _has_size(path, size):
    try:
        return os.path.getsize(path) == size
    except OSError:
        return False


def _write_atomically(path, chunks, before_replace=None):
    """shards.files.write_atomic of the chunks, before_replace() before the rename; a failure to write (a disk
    that fills up) is a ShardError naming the folder."""
    try:
        write_atomic(path, chunks, durable=False, before_replace=before_replace, unique=True)
    except OSError as exc:
        raise ShardError(f"cache folder {os.path.dirname(path)}: cannot write {os.path.basename(path)}: "
                         f"{exc.strerror or exc}") from exc
