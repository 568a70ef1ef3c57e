"""The shard format, in one place: what tools/make_shards.py writes and every backend reads. Pure: names,
headers, side-file text and checks of bytes; reading them from storage is shards/read.py.

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

Adopted shards (tools/adopt_shards.py, shards/adopt.py: WebDataset tars someone else wrote, left as they are) have
the same side files, written for the tars as found: the .idx names each sample's image member `jpg` whatever its
real extension (jpeg, png, webp) and its label member `cls`, at the members' real offsets, in any order and with
any webdataset key; the .crc32 lists those members only. Two additions:
    "tars" (manifest)    where the tars are (an absolute folder or URL) when not beside the manifest: the side files
                         of tars in object storage are local
    <name>.labels        per sample of the .idx one decimal label a line, for tars whose labels are a field of
                         the .json member (no member holds them as DALI's graph reads them): the shard entry then
                         names it, with its size and sha256, and only the torch backend reads such a split
"""
import hashlib
import tarfile
import zlib

from .errors import ShardError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLASSES_FILE = "classes.txt"
# timm's split-info file (timm/data/readers/reader_wds.py reads it): with it, `timm.data.create_dataset("wds/NAME",
# root=OUT, split="train")` reads these shards as they are; the labels are the .cls members, as timm reads them.
TIMM_INFO = "_info.json"


def timm_info(name, manifest):
    """The _info.json timm's WebDataset reader takes for the shards `manifest` lists: per split its name, sample
    count, file names and per-shard sample counts, in manifest order."""
    splits = {}
    for split, entry in manifest["splits"].items():
        shards = entry["shards"]
        splits[split] = {"name": split, "num_samples": sum(shard["samples"] for shard in shards),
                         "filenames": [shard["tar"] for shard in shards],
                         "shard_lengths": [shard["samples"] for shard in shards]}
    return {"name": name, "num_classes": len(manifest["classes"]), "splits": splits}
TRAIN_SPLIT = "train"
SAMPLE_MEMBERS = ("jpg", "cls")  # the members every sample has, in tar order; readers skip any other
BLOCK = 512  # tar block size
RECORD = 20 * BLOCK  # tar record size: GNU tar and Python's tarfile pad archives to whole records
INDEX_VERSION = "v1.2"
LABEL_DIGITS_MAX = 9  # a `.cls` member longer than this is not a label
LABELS_ENTRY = ("labels", "labels_bytes", "labels_sha256")  # in a shard entry whose labels are a side file
SHARD_ENTRY = ("tar", "index", "checksums", "samples", "bytes", "sha256", "index_bytes", "index_sha256",
               "checksums_bytes", "checksums_sha256")


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
    """True when `header` is an intact tar header (its checksum holds) of a member of `size` bytes.

    Read before every member a loader reads, so only the two fields that decide it are parsed (tarfile's own
    TarInfo.frombuf parses every field: 60 microseconds, a tenth of the torch backend's CPU per sample besides
    decoding). The checksum is the one tarfile accepts: the sum of the header's bytes with its checksum field
    counted as spaces, as unsigned bytes (POSIX) or, for old tar writers, as signed ones."""
    if len(header) != BLOCK:
        return False
    try:
        stored, recorded = tarfile.nti(header[148:156]), tarfile.nti(header[124:136])
    except tarfile.InvalidHeaderError:
        return False
    if recorded != size:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 0x20
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte >= 0x80)


# ---------------------------------------------------------------------------------------------------- side files

def check_side_file(shard, kind, path, data):
    """ShardError naming `path` and its shard unless `data` has the size and sha256 the manifest records for the
    shard's `kind` file (nothing to check when the manifest predates those fields)."""
    size, digest = getattr(shard, f"{kind}_bytes"), getattr(shard, f"{kind}_sha256")
    if not digest:
        return
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != size or actual != digest:
        what = {"index": "DALI index", "checksums": "member checksums", "labels": "labels file"}[kind]
        raise ShardError(f"{what} {path} is not the file tools/make_shards.py wrote for "
                         f"{shard.path.rsplit('/', 1)[-1]}: {len(data)} bytes, sha256 "
                         f"{actual[:12]}..., where the manifest records {size} bytes, sha256 {digest[:12]}...: "
                         "another shard's or changed; re-run tools/make_shards.py (or copy its folder again)")


# ---------------------------------------------------------------------------------------------------- DALI index

def index_text(samples):
    """The DALI index of a tar; `samples` holds per sample a list of (ext, data offset, size, member name)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in members))
    return "\n".join(lines) + "\n"


def index_header(first_line):
    """(fields, sample count) of a DALI index's first line; the count is None unless the line is
    `v1.2 <samples>`-shaped (two fields, the second a decimal number)."""
    fields = first_line.split()
    return fields, int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else None


# ---------------------------------------------------------------------------------------------------- member checksums

def checksums_text(members):
    """The `.crc32` file of a tar; `members` holds (member name, crc32) in tar order."""
    return "".join(f"{name} {crc:08x}\n" for name, crc in members)


# ---------------------------------------------------------------------------------------------------- labels file

def labels_text(labels):
    """The `.labels` file of an adopted tar: one decimal label a line, in index order."""
    return "".join(f"{label}\n" for label in labels)
