"""Reading a shard's side files (.idx, .crc32) and members through shards/storage.py, checked against the
manifest and the format (shards/format.py): what every backend and the verifier call."""
import os

from . import storage
from .errors import ShardError
from .format import BLOCK, INDEX_VERSION, check_side_file, index_header, member_header_ok


def read_member(shard, reader, offset, size):
    """The `size` bytes at `offset` of the shard open in `reader` (storage.RangeReader), after checking the
    member's own tar header before them."""
    header = reader.pread(BLOCK, offset - BLOCK) if offset >= BLOCK else b""
    if not member_header_ok(header, size):
        raise ShardError(f"shard {shard.path}: no intact tar header for the {size}-byte member at offset {offset} "
                         f"that {os.path.basename(shard.index_path)} lists: the file is damaged (overwritten); "
                         "re-run tools/make_shards.py")
    data = reader.pread(size, offset)
    if len(data) != size:
        raise ShardError(f"shard {shard.path} ends inside the member at offset {offset}: the file is cut short; "
                         "re-run tools/make_shards.py")
    return data


def expect_sizes(shard):
    """Tells shards/storage.py the sizes the manifest records for the shard's files: no answer for one of them is
    read past its size (a server that ignores Range, or sends without end, is stopped there)."""
    storage.expect_sizes({shard.path: shard.bytes, shard.index_path: shard.index_bytes,
                          shard.checksums_path: shard.checksums_bytes, shard.labels_path: shard.labels_bytes})


def read_side_file(shard, kind):
    """The bytes of the shard's DALI index (kind "index"), member checksums ("checksums") or labels ("labels", adopted
    tars only), checked against the
    manifest (check_side_file). Remote, no more than the size the manifest records is read (any size, up to
    storage.SMALL_FILE_MAX_BYTES, where it records none)."""
    path = getattr(shard, f"{kind}_path")
    # Every reader of a remote shard reads a side file first: a process that did not read the manifest itself (a
    # loader worker not forked from it) learns the shard's sizes here, before any ranged read of the tar.
    expect_sizes(shard)
    size = getattr(shard, f"{kind}_bytes")
    data = storage.read_bytes(path, size if size >= 0 else None)
    check_side_file(shard, kind, path, data)
    return data


def local_side_file_ok(shard, kind, local):
    """True when `local` (a copy of the shard's `kind` file) exists and matches the manifest."""
    try:
        with open(local, "rb") as handle:
            check_side_file(shard, kind, local, handle.read())
    except (OSError, ShardError):
        return False
    return True


def read_index(shard):
    """[{ext: (offset, size, member name)}] per sample from the shard's DALI index; ShardError naming the file
    unless it matches the manifest (check_side_file), is well formed and holds the manifest's sample count."""
    try:
        lines = read_side_file(shard, "index").split(b"\n")
        _, count = index_header(lines[0])
        if count is None:
            raise ValueError(f"its first line {lines[0][:40]!r} is not `{INDEX_VERSION} <samples>`")
        if count != shard.samples:
            raise ShardError(f"shard {shard.path}: its DALI index {shard.index_path} lists {count} samples "
                             f"but the manifest says {shard.samples}: damaged or replaced; re-run "
                             "tools/make_shards.py")
        records = []
        for line in lines[1:1 + shard.samples]:
            fields = line.split()
            if not fields or len(fields) % 4:
                raise ValueError(f"line {len(records) + 2} is not `ext offset size name` groups")
            records.append({fields[i].decode(): (int(fields[i + 1]), int(fields[i + 2]), fields[i + 3].decode())
                            for i in range(0, len(fields), 4)})
    except (OSError, ValueError) as exc:
        raise ShardError(f"DALI index {shard.index_path} is unusable: {exc}") from exc
    if len(records) != shard.samples:
        raise ShardError(f"DALI index {shard.index_path} lists {len(records)} samples but the manifest says "
                         f"{shard.samples}")
    return records


def read_checksums(shard):
    """[(member name, crc32)] from the shard's `.crc32` file; ShardError when it does not match the manifest
    (check_side_file), ValueError or OSError when it is unreadable or malformed."""
    path = shard.checksums_path
    members = []
    for number, line in enumerate(read_side_file(shard, "checksums").decode("utf-8").splitlines(), 1):
        fields = line.split()
        if len(fields) != 2 or len(fields[1]) != 8:
            raise ValueError(f"{path} line {number} is not `<member name> <crc32>`")
        members.append((fields[0], int(fields[1], 16)))
    return members


def read_labels(shard):
    """[label bytes] per sample from the shard's `.labels` file (adopted tars whose labels are .json fields);
    ShardError naming the file unless it matches the manifest and holds one line per sample."""
    try:
        lines = read_side_file(shard, "labels").split(b"\n")[:-1]
    except OSError as exc:
        raise ShardError(f"labels file {shard.labels_path} is unreadable: {exc}") from exc
    if len(lines) != shard.samples:
        raise ShardError(f"labels file {shard.labels_path} lists {len(lines)} labels but the manifest says "
                         f"{shard.samples} samples")
    return lines
