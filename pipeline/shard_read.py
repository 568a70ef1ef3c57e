"""Reading samples out of a shard for the `torch` backend and the shard checker: (key, jpg bytes, cls bytes).

With the shard's DALI .idx (make_shards always writes one) each member is read at its offset behind an intact tar
header; without it the tar is streamed with webdataset, counting samples against the manifest. Either way a
damaged shard raises a ShardError naming the file.
"""
import os
import tarfile

from webdataset.tariterators import tar_file_iterator

from .shard_format import SAMPLE_MEMBERS, ShardError, read_index, read_member

WANTED = SAMPLE_MEMBERS  # the only members ever decoded; anything else in a shard is skipped unread
_READ_BUFFER = 1 << 20  # tarfile's stream mode reads 10 kB at a time; a large buffer saves system calls


def read_samples(shard, first, stop):
    """Yields (key, jpg_bytes, cls_bytes) for samples first..stop-1 of `shard`: through its DALI .idx when the
    manifest names one that exists (make_shards always writes it; only the DALI backends need it), else by
    streaming the tar with webdataset."""
    if shard.index_path and os.path.exists(shard.index_path):
        return read_indexed_samples(shard, first, stop)
    return read_streamed_samples(shard, first, stop)


def read_indexed_samples(shard, first, stop):
    """Reads each wanted member's bytes at the offset the .idx gives: no tar parsing in Python, a tenth of the
    loader's CPU time when streamed (BENCHMARKS.md). Every member's own tar header is read too and must
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


