"""Reading samples out of a shard for the `torch` backend and the shard checker: (key, jpg bytes, cls bytes).

With the shard's DALI .idx (make_shards always writes one) each member is read at its offset behind an intact tar
header; without it the tar is streamed with webdataset, counting samples against the manifest. Either way a
damaged shard raises a ShardError naming the file.

A shard in object storage (shards/storage.py) is read the indexed way, one ranged request per `per_request`
consecutive samples (the loader passes its batch size) instead of one per member, and every member is
checked against the shard's member checksums (.crc32) as it arrives: the bytes are checked where they are used,
without downloading each shard a second time to hash it. With a ShardCache the shard is first copied whole to
local disk (verified by its sha256) and read from there.

Adopted tars (tools/adopt_shards.py) read the same way: their .idx names the image member `jpg` and the label
member `cls` wherever they are in the tar; where the labels are .json fields, the shard's `.labels` side file gives
them (its lines are what a `.cls` member would hold) and the index names images only.
"""
import os
import tarfile

from webdataset.tariterators import tar_file_iterator

from shards.errors import ShardError, StorageError
from shards.format import BLOCK, SAMPLE_MEMBERS, member_checksum
from shards.read import read_checksums, read_index, read_labels, read_member
from shards.storage import RangeReader, is_remote

WANTED = SAMPLE_MEMBERS  # the only members ever decoded; anything else in a shard is skipped unread
_READ_BUFFER = 1 << 20  # tarfile's stream mode reads 10 kB at a time; a large buffer saves system calls
DEFAULT_PER_REQUEST = 64  # samples per ranged request from object storage when the caller does not say


def read_samples(shard, first, stop, *, per_request=DEFAULT_PER_REQUEST, cache=None):
    """Yields (key, jpg_bytes, cls_bytes) for samples first..stop-1 of `shard`: through its DALI .idx when the
    manifest names one that exists (make_shards always writes it; only the DALI backends need it), else by
    streaming the tar with webdataset. A remote shard goes through `cache` (a ShardCache) when given, else is
    read with one ranged request per `per_request` consecutive samples."""
    if is_remote(shard.path):
        if cache is not None:
            return read_indexed_samples(cache.local_shard(shard), first, stop)
        if not shard.index_path:
            raise ShardError(f"shard {shard.path}: its manifest names no .idx index, which reading from object "
                             "storage needs (tools/make_shards.py writes one per shard)")
        return read_indexed_samples(shard, first, stop, per_request=per_request, checked=True)
    if shard.index_path and os.path.exists(shard.index_path):
        return read_indexed_samples(shard, first, stop)
    return read_streamed_samples(shard, first, stop)


def read_indexed_samples(shard, first, stop, *, per_request=1, checked=False):
    """Reads each wanted member's bytes at the offset the .idx gives: no tar parsing in Python, a tenth of the
    loader's CPU time when streamed (BENCHMARKS.md). Every member's own tar header is read too and must
    be intact (checksum) and agree with the index on the size, so a shard overwritten in place, which keeps its
    size, still fails naming the file. per_request > 1: one ranged request per `per_request` consecutive samples.
    checked: every member is compared with the shard's member checksums (when its manifest names them). A shard
    with a .labels file (adopted tars with labels in .json members) takes its labels from there."""
    records = read_index(shard)
    labels = read_labels(shard) if shard.labels_path else None
    wanted = ("jpg",) if labels is not None else WANTED
    expected = member_checksums_of(shard) if checked else {}
    try:
        with RangeReader(shard.path) as reader:
            for number in range(first, stop):
                if per_request > 1 and (number - first) % per_request == 0:
                    reader.prefetch(*_span(records[number:min(stop, number + per_request)]))
                parts = {} if labels is None else {"cls": labels[number]}
                for ext in wanted:
                    if ext not in records[number]:
                        raise ShardError(f"shard {shard.path}: sample {number} has no .{ext} member in "
                                         f"{shard.index_path}")
                    offset, size, member = records[number][ext]
                    parts[ext] = read_member(shard, reader, offset, size)
                    if member in expected and member_checksum(parts[ext]) != expected[member]:
                        raise ShardError(f"shard {shard.path}: member {member} differs from its checksum in "
                                         f"{os.path.basename(shard.checksums_path)}: the object changed after "
                                         "tools/make_shards.py wrote it; upload the shard folder again")
                yield sample_key(records[number]["jpg"][2]), parts["jpg"], parts["cls"]
    except StorageError:
        raise
    except OSError as exc:
        raise ShardError(f"shard {shard.path} is unreadable: {exc}") from exc


def sample_key(member):
    """A sample's key from its member's name, as webdataset splits it: up to the first dot of the last path part."""
    folder, _, name = member.rpartition("/")
    return f"{folder}/{name.split('.', 1)[0]}" if folder else name.split(".", 1)[0]


def _span(records):
    """(start, stop) byte range holding every member of `records` with its tar header."""
    members = [(offset, size) for record in records for offset, size, _ in record.values()]
    return min(offset for offset, _ in members) - BLOCK, max(offset + size for offset, size in members)


def member_checksums_of(shard):
    """{member name: CRC-32} from the shard's .crc32 ({} when the manifest names none); ShardError when unusable."""
    if not shard.checksums_path:
        return {}
    try:
        return dict(read_checksums(shard))
    except ValueError as exc:
        raise ShardError(f"member checksums {shard.checksums_path} are unusable: {exc}") from exc


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


