"""Where every sample of a split lies in its shard, held compactly, and reading samples in any order through it.

A fresh order every epoch (pipeline/rank_plan.py epoch_order) sends a loader worker from shard to shard, a run of
one or a few samples at a time. Parsing a shard's .idx for each run would cost a millisecond per sample, and
keeping the parsed records as Python objects about 500 bytes per sample per worker (640 MB for ImageNet in each
of 8 workers). Instead the loader's main process reads each shard's .idx once (and its member checksums or
.labels, where it reads them) into a few numpy arrays of 8 bytes per number, about 40 MB for ImageNet's 1.28 M
samples, before it forks its workers, which share those pages.

Members are read with shards.read.read_member (each behind its own intact tar header); one request per run of
consecutive samples, which is what makes larger blocks cheaper in object storage.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shards.errors import ShardError, StorageError
from shards.format import member_checksum
from shards.read import read_index, read_labels, read_member
from shards.storage import RangeReader, is_remote

from .shard_read import member_checksums_of, sample_key

_FETCH_THREADS = 16  # side files fetched at once from object storage (each a small request)
_NONE = -1  # no such member (a shard whose labels come from its .labels file)


class SampleIndex:
    """Per sample of `shards` (global id = shard.offset + its number): image and label member offsets and sizes,
    and, where `checked`, their CRC-32 from the shard's .crc32; labels read from .labels files as bytes."""

    def __init__(self, shards, *, checked=False):
        self.shards = tuple(shards)
        total = sum(shard.samples for shard in self.shards)
        self.offsets = np.array([shard.offset for shard in self.shards], dtype=np.int64)
        self.members = np.full((total, 4), _NONE, dtype=np.int64)  # jpg offset, jpg size, cls offset, cls size
        self.crcs = np.full((total, 2), _NONE, dtype=np.int64) if checked else None
        self.labels = {}  # shard number -> [label bytes] for shards with a .labels file
        self.names = {}  # shard number -> member name of sample 0, for messages about a whole shard
        remote = any(is_remote(shard.index_path) for shard in self.shards)
        with ThreadPoolExecutor(_FETCH_THREADS if remote else 1) as pool:
            for number, parts in enumerate(pool.map(self._read_side_files, self.shards)):
                self._fill(number, *parts)

    def _read_side_files(self, shard):
        records = read_index(shard)
        labels = read_labels(shard) if shard.labels_path else None
        return records, labels, member_checksums_of(shard) if self.crcs is not None else {}

    def _fill(self, number, records, labels, crcs):
        shard = self.shards[number]
        rows = self.members[shard.offset - self.shards[0].offset:][:shard.samples]
        for sample, record in enumerate(records):
            for column, ext in enumerate(("jpg", "cls")):
                if ext in record:
                    offset, size, name = record[ext]
                    rows[sample, 2 * column:2 * column + 2] = offset, size
                    if self.crcs is not None and name in crcs:
                        self.crcs[shard.offset - self.shards[0].offset + sample, column] = crcs[name]
                elif ext == "jpg" or labels is None:
                    raise ShardError(f"shard {shard.path}: sample {sample} has no .{ext} member in "
                                     f"{shard.index_path}")
        if labels is not None:
            self.labels[number] = labels

    def read_run(self, shard, first, stop, copy=None):
        """Yields (key, jpg bytes, cls bytes) of samples first..stop-1 of `shard` (one of self.shards), one
        request for the whole run; from `copy` (a verified local copy of the shard, shard_cache) when given.
        ShardError naming the file when a member's header, size or checksum is wrong."""
        shard_number = int(np.searchsorted(self.offsets, shard.offset, side="right")) - 1
        base = shard.offset - self.shards[0].offset
        source = copy or shard
        rows = self.members[base + first:base + stop].tolist()
        labels = self.labels.get(shard_number)
        try:
            with RangeReader(source.path) as reader:
                if is_remote(source.path):  # the run's members (headers included) in one request
                    reader.prefetch(min(offset for row in rows for offset in row[0::2] if offset >= 0) - 512,
                                    max(row[0] + row[1] for row in rows) if labels is not None
                                    else max(max(row[0] + row[1], row[2] + row[3]) for row in rows))
                for i, (jpg_offset, jpg_size, cls_offset, cls_size) in enumerate(rows):
                    jpg = self._member(source, reader, jpg_offset, jpg_size, base + first + i, 0)
                    cls = labels[first + i] if labels is not None else \
                        self._member(source, reader, cls_offset, cls_size, base + first + i, 1)
                    yield self._key(reader, jpg_offset), jpg, cls
        except StorageError:
            raise
        except OSError as exc:
            raise ShardError(f"shard {source.path} is unreadable: {exc}") from exc

    def _member(self, shard, reader, offset, size, sample, column):
        data = read_member(shard, reader, offset, size)
        if self.crcs is not None and self.crcs[sample, column] >= 0 \
                and member_checksum(data) != self.crcs[sample, column]:
            raise ShardError(f"shard {shard.path}: member {_member_name(reader, offset)} differs from its checksum in "
                             f"{os.path.basename(shard.checksums_path)}: the object changed after tools/make_shards.py "
                             "wrote it; upload the shard folder again")
        return data

    @staticmethod
    def _key(reader, offset):
        """The sample's key from its image member's tar header (read_member has just read it: no request)."""
        return sample_key(_member_name(reader, offset))


def _member_name(reader, offset):
    """The name in the tar header before the member at `offset` (ustar: name, and its prefix folder)."""
    header = reader.pread(512, offset - 512)
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    return f"{prefix}/{name}" if prefix else name
