"""The shard format, in one place: what tools/make_shards.py writes and every backend reads.

A shard directory holds:
    manifest.json        format_version, classes, and per split its shards (written last: its presence means done)
    classes.txt          one class name (wnid) per line, in label order
    <split>-NNNNNN.tar   a POSIX (ustar) tar; per sample the members <key>.jpg (JPEG bytes) and <key>.cls (the label
                         as ASCII decimal), in that order
    <split>-NNNNNN.idx   its DALI index (what NVIDIA DALI's tools/wds2idx.py writes, read by fn.readers.webdataset):
                             v1.2 <number of samples>
                             <ext> <data offset> <size> <member name> ...   (one line per sample, one group per member)
                         where <data offset> is the byte offset of the member's data, just after its 512-byte header
    <split>-NNNNNN.crc32 one line `<member name> <crc32 as 8 hex digits>` per member, in tar order: with the shard's
                         sha256 in the manifest it says which sample of a damaged shard changed

A manifest shard entry is SHARD_ENTRY: the three file names, the sample count, and the size and sha256 of each
file. Readers check the .idx and .crc32 against their size and sha256 whenever they read them (read_side_file;
about 55 and 45 bytes per sample: a hash of some 100 kB per 1,000-sample shard), so a side file of another
shard, or one changed, is named instead of misleading DALI or the member checks. Directories written before
those fields existed lack them (their side files are read unchecked), and may lack "checksums" (the damaged
sample is then found by decoding, see pipeline/verify.py). A file is listed once in the whole manifest: a shard
listed twice would be read twice per epoch.
"""
import hashlib
import os
import tarfile
import zlib

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLASSES_FILE = "classes.txt"
TRAIN_SPLIT = "train"
SAMPLE_MEMBERS = ("jpg", "cls")  # the members every sample has, in tar order; readers skip any other
BLOCK = 512  # tar block size
RECORD = 20 * BLOCK  # tar record size: GNU tar and Python's tarfile pad archives to whole records
INDEX_VERSION = "v1.2"
LABEL_DIGITS_MAX = 9  # a `.cls` member longer than this is not a label
SHARD_ENTRY = ("tar", "index", "checksums", "samples", "bytes", "sha256", "index_bytes", "index_sha256",
               "checksums_bytes", "checksums_sha256")


class ShardError(RuntimeError):
    """A shard directory, manifest or shard file that cannot be used; the message names the file."""


def shard_name(split, number):
    return f"{split}-{number:06d}"


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def member_checksum(data):
    return zlib.crc32(data) & 0xFFFFFFFF


def parse_label(data, num_classes):
    """`.cls` bytes -> class index; ValueError unless they are a plain ASCII decimal number below num_classes."""
    if not (0 < len(data) <= LABEL_DIGITS_MAX and data.isdigit()):
        raise ValueError(f"label {data[:12]!r} is not an ASCII decimal number")
    label = int(data)
    if label >= num_classes:
        raise ValueError(f"label {label} is out of range for {num_classes} classes")
    return label


# ---------------------------------------------------------------------------------------------------- tar members

def member_header(name, size):
    """The 512-byte ustar header of a member. Every field that could vary between runs (mtime, owner, mode) is
    fixed, so the same samples give the same bytes and the same sha256 on every run."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def member_header_ok(header, size):
    """True when `header` is an intact tar header (its checksum holds) of a member of `size` bytes."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError):
        return False
    return info.size == size


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


# ---------------------------------------------------------------------------------------------------- side files

def read_side_file(shard, kind):
    """The bytes of the shard's DALI index (kind "index") or member checksums ("checksums"), checked against the
    manifest (check_side_file)."""
    from .storage import read_bytes  # storage imports ShardError from here

    path = getattr(shard, f"{kind}_path")
    data = read_bytes(path)
    check_side_file(shard, kind, path, data)
    return data


def check_side_file(shard, kind, path, data):
    """ShardError naming `path` and its shard unless `data` has the size and sha256 the manifest records for the
    shard's `kind` file (nothing to check when the manifest predates those fields)."""
    size, digest = getattr(shard, f"{kind}_bytes"), getattr(shard, f"{kind}_sha256")
    if not digest:
        return
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != size or actual != digest:
        what = "DALI index" if kind == "index" else "member checksums"
        raise ShardError(f"{what} {path} is not the file tools/make_shards.py wrote for "
                         f"{shard.path.rsplit('/', 1)[-1]}: {len(data)} bytes, sha256 "
                         f"{actual[:12]}..., where the manifest records {size} bytes, sha256 {digest[:12]}...: "
                         "another shard's or changed; re-run tools/make_shards.py (or copy its folder again)")


def local_side_file_ok(shard, kind, local):
    """True when `local` (a copy of the shard's `kind` file) exists and matches the manifest."""
    try:
        with open(local, "rb") as handle:
            check_side_file(shard, kind, local, handle.read())
    except (OSError, ShardError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------- DALI index

def index_text(samples):
    """The DALI index of a tar; `samples` holds per sample a list of (ext, data offset, size, member name)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in members))
    return "\n".join(lines) + "\n"


def read_index(shard):
    """[{ext: (offset, size, member name)}] per sample from the shard's DALI index; ShardError naming the file
    unless it matches the manifest (check_side_file), is well formed and holds the manifest's sample count."""
    try:
        lines = read_side_file(shard, "index").split(b"\n")
        header = lines[0].split()
        if len(header) != 2 or not header[1].isdigit():
            raise ValueError(f"its first line {lines[0][:40]!r} is not `{INDEX_VERSION} <samples>`")
        if int(header[1]) != shard.samples:
            raise ShardError(f"shard {shard.path}: its DALI index {shard.index_path} lists {int(header[1])} samples "
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


# ---------------------------------------------------------------------------------------------------- member checksums

def checksums_text(members):
    """The `.crc32` file of a tar; `members` holds (member name, crc32) in tar order."""
    return "".join(f"{name} {crc:08x}\n" for name, crc in members)


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
