"""Writes one WebDataset shard: the tar, its DALI index and its member checksums (shards/format.py) in a
single pass, under temporary names that are renamed only once all are complete; or reuses the shard an earlier run
completed.

We write the tar ourselves (headers from `tarfile.TarInfo`, data and padding by hand) so that we know the data
offset of every member as it is written; the DALI index then needs no second pass and no GNU tar.
"""
import contextlib
import ctypes
import hashlib
import json
import os
import re
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

from .files import fsync_dir, fsync_path, named, temporary_name, write_atomic
from .format import BLOCK, RECORD, checksums_text, index_text, member_checksum, member_header, sha256_file
from .imagecheck import encode_jpeg

WRITEBACK_STEP = 8 << 20  # bytes between two start_writeback calls while a shard is written
# Member names are `<key>.<ext>`. The .idx and .crc32 are lines of space-separated fields, webdataset splits the
# key from the extension at the first dot, and a ustar header holds a 100-byte name without a folder: so plain
# ASCII without dots, slashes or white space, and at most 100 characters.
MEMBER_PART = re.compile(r"[A-Za-z0-9_-]+")
MEMBER_NAME_MAX = 100

# One sample of a shard plan: its key, its source file (relpath for people, path to read, size and mtime_ns as
# checked), its label, and whether its bytes must be re-encoded (converted or downscaled) instead of copied.
PlannedSample = namedtuple("PlannedSample", "key relpath path label size mtime_ns reencode")
# One shard to write: OUT folder, base name ("train-000000"), completion record path, hash of everything that
# decides its bytes, its PlannedSamples, and the re-encoding options.
ShardTask = namedtuple("ShardTask", "out name record plan_hash samples quality max_side")


class ShardWriter:
    """Appends samples to an open binary file as tar members and keeps what the index and checksums need.

    Use `add_sample(key, {"jpg": bytes, "cls": bytes})`, then `finish()`; `index_text()` and `checksums_text()`
    give the side files and `sha256` / `size` describe the tar bytes written."""

    def __init__(self, fileobj):
        self._file = fileobj
        self._hash = hashlib.sha256()
        self.size = 0
        self._written_back = 0
        self._samples = []  # per sample: [(ext, data offset, size, member name), ...]
        self._checksums = []  # per member: (member name, crc32)

    def _write(self, data):
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        if self.size - self._written_back >= WRITEBACK_STEP:
            # Hand what is written so far to the disk now, while the next samples are prepared, so that the fsync
            # before the manifest finds little left to flush (the flushes of all workers share one disk).
            self._file.flush()
            start_writeback(self._file.fileno(), self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def _add_member(self, name, data):
        self._write(member_header(name, len(data)))
        offset = self.size
        self._write(data)
        self._write(bytes(-len(data) % BLOCK))
        self._checksums.append((name, member_checksum(data)))
        return offset

    def add_sample(self, key, components):
        """Writes `<key>.<ext>` members in the given order; key and ext: MEMBER_PART characters only."""
        entries = []
        for ext, data in components.items():
            name = f"{key}.{ext}"
            if not (MEMBER_PART.fullmatch(key) and MEMBER_PART.fullmatch(ext)) or len(name) > MEMBER_NAME_MAX:
                raise ValueError(f"member name {name!r}: key and extension must be ASCII letters, digits, '_' or "
                                 f"'-', at most {MEMBER_NAME_MAX} characters in all")
            entries.append((ext, self._add_member(name, data), len(data), name))
        self._samples.append(entries)

    def finish(self):
        """Writes the end-of-archive marker (two zero blocks) and pads to a whole tar record."""
        self._write(bytes(2 * BLOCK))
        self._write(bytes(-self.size % RECORD))

    @property
    def sha256(self):
        return self._hash.hexdigest()

    @property
    def num_samples(self):
        return len(self._samples)

    def index_text(self):
        return index_text(self._samples)

    def checksums_text(self):
        return checksums_text(self._checksums)


def _sync_file_range():
    """libc's sync_file_range (Linux), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>: start writeback of the range's dirty pages, do not wait for it


def start_writeback(fd, offset, length):
    """Starts writing the byte range of `fd` to disk without waiting (Linux); elsewhere the final fsync does it.
    Only an optimisation: a failure is ignored, the fsync before the manifest is what guarantees durability."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def verified_record(task):
    """The completion record of a shard from an earlier run if it belongs to this plan and its files still hash to
    what the record says, else None."""
    try:
        with open(task.record, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None  # no record (never finished) or unreadable: the shard is written again
    if record.get("plan_hash") != task.plan_hash or record.get("samples") != len(task.samples):
        return None
    if "checksums" not in record:  # written before shards had member checksums: written again, with them
        return None
    for kind in ("tar", "index", "checksums"):
        prefix = "" if kind == "tar" else f"{kind}_"
        path = os.path.join(task.out, record[kind])
        if (not os.path.isfile(path) or os.path.getsize(path) != record[f"{prefix}bytes"]
                or sha256_file(path) != record[f"{prefix}sha256"]):
            return None
    return record


def sample_jpeg(sample, quality, max_side):
    with open(sample.path, "rb") as f:
        data = f.read()
    if len(data) != sample.size:
        raise OSError(f"{sample.path} changed while converting ({sample.size} bytes when checked, {len(data)} "
                      f"now); run again")
    return encode_jpeg(data, quality, max_side) if sample.reencode else data


def write_shard(task):
    """Writes (or reuses) one complete shard of a ShardTask; returns its completion record plus "reused"."""
    record = verified_record(task)
    if record is not None:
        return dict(record, reused=True)
    tar_path, index_path = os.path.join(task.out, f"{task.name}.tar"), os.path.join(task.out, f"{task.name}.idx")
    tar_tmp = temporary_name(tar_path)
    try:
        with open(tar_tmp, "wb") as f:
            writer = ShardWriter(f)
            for sample in task.samples:
                jpeg = sample_jpeg(sample, task.quality, task.max_side)
                writer.add_sample(sample.key, {"jpg": jpeg, "cls": str(sample.label).encode("ascii")})
            writer.finish()
            f.flush()
            start_writeback(f.fileno(), 0, 0)  # the rest of the file (length 0: to its end)
    except OSError as exc:  # a full disk, a quota: name the file (the worker's error alone names none) and free it
        with contextlib.suppress(OSError):
            os.remove(tar_tmp)
        raise named(exc, tar_tmp) from None
    index = writer.index_text().encode("ascii")
    checksums = writer.checksums_text().encode("ascii")
    checksums_path = os.path.join(task.out, f"{task.name}.crc32")
    # The side files go first, so a tar under its final name has them beside it; the record written last is
    # what marks the shard complete. Nothing is fsynced here: an fsync waits for the disk and commits the file
    # system journal, so the workers' fsyncs would serialise them on each other. A power loss can then lose a
    # shard's data or its renames, which only costs a rewrite: a rerun re-hashes the tar and the side files
    # against the record. ShardSync flushes the files in the main process, before the manifest is written.
    try:
        write_atomic(index_path, index, durable=False)
        write_atomic(checksums_path, checksums, durable=False)
        os.replace(tar_tmp, tar_path)
    except BaseException:  # a full disk here too: the tar's temporary file goes with the failed side file's
        with contextlib.suppress(OSError):
            os.remove(tar_tmp)
        raise
    record = {"tar": f"{task.name}.tar", "index": f"{task.name}.idx", "checksums": f"{task.name}.crc32",
              "samples": writer.num_samples, "bytes": writer.size, "sha256": writer.sha256,
              "index_bytes": len(index), "index_sha256": hashlib.sha256(index).hexdigest(),
              "checksums_bytes": len(checksums), "checksums_sha256": hashlib.sha256(checksums).hexdigest(),
              "plan_hash": task.plan_hash}
    write_atomic(task.record, json.dumps(record).encode(), durable=False)
    return dict(record, reused=False)


SYNC_THREADS = 4  # fsyncs in flight at once: they wait on the disk, not the CPU, and the file system commits
# concurrent ones together


def fsync_shard(out, record):
    for kind in ("tar", "index", "checksums"):
        fsync_path(os.path.join(out, record[kind]))


class ShardSync:
    """Makes the shards write_shard completed durable while the workers write the next ones: `add(record)` hands
    a shard's three files to a few threads of this process that fsync them (the GIL is released while an fsync
    waits), `wait()` waits for all of them, raises the first error (naming its file) and fsyncs OUT once, which
    makes every rename in it durable. Before, the main process fsynced every shard's files after the last shard,
    one file after another.

    Why this is as safe as that: the manifest, the one mark of a complete conversion, is written only after
    wait() has returned. A shard's completion record (OUT/.make_shards/) is written by its worker before the
    files are durable, as before, and vouches for nothing by itself: a rerun reuses a shard only once its files
    re-hash to what the record says (verified_record), so a record whose data a crash or power loss took costs a
    rewrite of that shard, never a wrong one. Waiting for the disk in the worker before the record instead would
    make the workers' fsyncs wait on each other's file system commits (see write_shard)."""

    def __init__(self, out, threads=SYNC_THREADS):
        self.out = out
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="make_shards-fsync")
        self._pending = []

    def add(self, record):
        self._pending.append(self._threads.submit(fsync_shard, self.out, record))

    def wait(self):
        for future in self._pending:
            future.result()
        self._pending.clear()
        fsync_dir(self.out)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._threads.shutdown(wait=True, cancel_futures=True)
