"""Reading the shard manifest (a folder or URL, see shards/storage.py) into Splits of Shards, with the cheap
checks of the files it lists (sizes, the DALI index) and the slow one (sha256) that names a damaged shard.

How a split's samples are divided over ranks, epochs and loader workers: pipeline/rank_plan.py.
"""
import json
import os
from dataclasses import dataclass

from . import storage
from .errors import ShardError, StorageError
from .format import FORMAT_VERSION, MANIFEST, TRAIN_SPLIT, index_header
from .read import expect_sizes, read_side_file


@dataclass(frozen=True)
class Shard:
    path: str          # absolute path or URL of the .tar
    index_path: str    # absolute path or URL of the DALI .idx ('' when the manifest names none)
    samples: int       # sample count according to the manifest
    bytes: int         # file size according to the manifest
    sha256: str        # checksum according to the manifest ('' when absent)
    offset: int        # global index of the shard's first sample within its split
    checksums_path: str = ""  # absolute path or URL of the member checksums ('' when the manifest names none)
    # Size and sha256 of the .idx and .crc32 per the manifest (-1 and '' in manifests written before they were).
    index_bytes: int = -1
    index_sha256: str = ""
    checksums_bytes: int = -1
    checksums_sha256: str = ""
    # Adopted tars whose labels are a .json field: the .labels side file (shards/format.py) and its size and sha256.
    labels_path: str = ""
    labels_bytes: int = -1
    labels_sha256: str = ""


@dataclass(frozen=True)
class Split:
    """One split of a shard directory, as the manifest describes it."""
    shard_dir: str
    name: str
    shards: tuple
    num_samples: int
    classes: tuple

    @property
    def is_train(self):
        return self.name == TRAIN_SPLIT

    @property
    def label_files(self):
        """Whether its labels come from .labels side files (adopted tars with labels in .json members), which only
        the torch backend reads."""
        return any(shard.labels_path for shard in self.shards)


def read_manifest(shard_dir):
    """The parsed manifest.json of shard_dir (a folder or URL, see shards/storage.py); ShardError naming the
    file when it is missing or malformed. Nothing records its size: a remote one is read up to
    storage.SMALL_FILE_MAX_BYTES (StorageError naming the URL beyond that)."""
    path = storage.join(shard_dir, MANIFEST)
    if storage.is_remote(shard_dir):
        try:
            text = storage.read_bytes(path)
        except StorageError as exc:
            if exc.missing:
                raise ShardError(f"{path} not found: not a shard folder, or it was not uploaded whole") from exc
            raise
    else:
        if not os.path.isdir(shard_dir):
            raise ShardError(f"shard directory {shard_dir} does not exist")
        if not os.path.isfile(path):
            raise ShardError(f"{path} not found: not a shard directory, or tools/make_shards.py did not finish")
        try:
            text = storage.read_bytes(path)
        except OSError as exc:
            raise ShardError(f"{path} is unreadable: {exc}") from exc
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ShardError(f"{path} is unreadable or not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ShardError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    return manifest


def load_split(shard_dir, split, *, need_index=False, manifest=None):
    """The Split named `split`, after cheap checks of every shard file it lists. `manifest`: shard_dir's manifest
    as read_manifest returned it, when the caller has read it already (a file is read once per process).

    The tars are in shard_dir, or where the manifest's "tars" says (adopted tars, shards/format.py).
    Checks that no file is listed twice in the manifest, that each listed .tar exists with the size the manifest
    records (a shard cut short is caught here; in object storage with one listing per folder), and with
    need_index (the DALI backends) that its .idx is the one the manifest records (size, sha256) and describes the
    same number of samples inside the file. Sample counts are checked again while reading."""
    shard_dir = storage.normalize(shard_dir)
    manifest = read_manifest(shard_dir) if manifest is None else manifest
    manifest_path = storage.join(shard_dir, MANIFEST)
    splits = manifest.get("splits") or {}
    if split not in splits:
        raise ShardError(f"{manifest_path} has no split {split!r}; it has: {', '.join(sorted(splits)) or 'none'}")
    entry = splits[split]
    try:
        _refuse_files_listed_twice(manifest_path, splits)
        shards = _shards_of(shard_dir, entry["shards"], _tar_folder(shard_dir, manifest))
        classes = tuple(manifest["classes"])
        num_samples = int(entry["samples"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{manifest_path}: split {split!r} is malformed ({type(exc).__name__}: {exc})") from exc
    if not shards:
        raise ShardError(f"{manifest_path}: split {split!r} lists no shards")
    if not classes:
        raise ShardError(f"{manifest_path} lists no classes")
    total = sum(s.samples for s in shards)
    if total != num_samples:
        raise ShardError(f"{manifest_path}: split {split!r} says {num_samples} samples but its shards hold {total}")
    sizes = None
    if any(storage.is_remote(path) for s in shards for path in (s.path, s.index_path)):
        for shard in shards:
            expect_sizes(shard)  # no answer for a shard's files is read past the sizes recorded here
        sizes = storage.sizes([s.path for s in shards])
    for shard in shards:
        check_shard_file(shard, sizes[shard.path] if sizes is not None else -1)
        if need_index:
            check_index_file(shard)
    return Split(shard_dir, split, shards, num_samples, classes)


def _refuse_files_listed_twice(manifest_path, splits):
    """ShardError naming the manifest and the file when a shard, index or checksum file is listed twice anywhere
    in the manifest: a shard listed twice would be read twice per epoch (in two splits: val samples trained on)."""
    first_place = {}
    for split_name, split_entry in splits.items():
        entries = split_entry.get("shards") if isinstance(split_entry, dict) else None
        for number, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict):
                continue  # malformed: named when its split is loaded
            for name in filter(None, (entry.get("tar"), entry.get("index"), entry.get("checksums"),
                                      entry.get("labels"))):
                place = f"split {split_name!r} shard entry {number}"
                if name in first_place:
                    raise ShardError(f"{manifest_path}: {name} is listed twice ({first_place[name]} and {place}): "
                                     "each shard is read once per epoch; re-run tools/make_shards.py")
                first_place[name] = place


def _tar_folder(shard_dir, manifest):
    """Where the manifest's tars are: shard_dir, or its "tars" (an absolute folder or a URL; adopted tars)."""
    folder = manifest.get("tars")
    if folder is None:
        return shard_dir
    if not isinstance(folder, str) or not (storage.is_remote(folder) or os.path.isabs(folder)):
        raise ValueError(f"\"tars\" {folder!r} is not an absolute folder or a URL")
    return storage.normalize(folder)


def _shards_of(shard_dir, entries, tar_folder=None):
    """The Shards of a split's manifest entries; their tars in `tar_folder` (default: shard_dir)."""
    tar_folder = tar_folder or shard_dir
    shards, offset = [], 0
    for entry in entries:
        index, checksums = entry.get("index") or "", entry.get("checksums") or ""
        labels = entry.get("labels") or ""
        for name in (entry["tar"], index, checksums, labels):
            if os.path.basename(name) != name:  # the contract names plain files inside the shard directory
                raise ValueError(f"shard file name {name!r} is not a plain file name")
        shard = Shard(path=storage.join(tar_folder, entry["tar"]),
                      index_path=storage.join(shard_dir, index) if index else "",
                      samples=int(entry["samples"]), bytes=int(entry["bytes"]),
                      sha256=entry.get("sha256") or "", offset=offset,
                      checksums_path=storage.join(shard_dir, checksums) if checksums else "",
                      index_bytes=int(entry.get("index_bytes", -1)), index_sha256=entry.get("index_sha256") or "",
                      checksums_bytes=int(entry.get("checksums_bytes", -1)),
                      checksums_sha256=entry.get("checksums_sha256") or "",
                      labels_path=storage.join(shard_dir, labels) if labels else "",
                      labels_bytes=int(entry.get("labels_bytes", -1)), labels_sha256=entry.get("labels_sha256") or "")
        if shard.samples <= 0:
            raise ValueError(f"shard {entry['tar']} has {shard.samples} samples")
        shards.append(shard)
        offset += shard.samples
    return tuple(shards)


def check_shard_file(shard, size=-1):
    """ShardError naming the shard when it is missing or its size differs from the manifest. `size`: the size
    already known (None: known to be missing), else it is asked for."""
    if size == -1:
        try:
            size = storage.size(shard.path)
        except StorageError as exc:
            if not exc.missing:
                raise
            size = None
        except OSError as exc:
            raise ShardError(f"shard {shard.path} listed in the manifest is missing or unreadable: {exc}") from exc
    if size is None:
        raise ShardError(f"shard {shard.path} listed in the manifest is missing")
    if size != shard.bytes:
        raise ShardError(f"shard {shard.path} is {size} bytes but the manifest says {shard.bytes}: "
                         "damaged or replaced; re-run tools/make_shards.py (and upload its folder again)")


def check_index_file(shard):
    """The bytes of the shard's .idx; ShardError naming it when it is missing, is not the file the manifest
    records (size, sha256: an index of another shard would make DALI decode the wrong bytes), disagrees with the
    manifest's count, or points past the tar."""
    if not shard.index_path:
        raise ShardError(f"the manifest names no DALI index for shard {shard.path}; the DALI backends need one")
    try:
        text = read_side_file(shard, "index")
    except (OSError, StorageError) as exc:
        raise ShardError(f"DALI index {shard.index_path} is missing or unreadable: {exc}") from exc
    _, count = index_header(text.split(b"\n", 1)[0])
    last_line = text.rstrip(b"\n").rsplit(b"\n", 1)[-1].split()
    if count != shard.samples:
        described = "no" if count is None else count
        raise ShardError(f"DALI index {shard.index_path} describes {described} samples but the manifest says "
                         f"{shard.samples} for {os.path.basename(shard.path)}")
    # Index records are `ext offset size name` groups; the last one of the file ends furthest into the tar.
    try:
        end = int(last_line[-3]) + int(last_line[-2])
    except (IndexError, ValueError) as exc:
        raise ShardError(f"DALI index {shard.index_path} has a malformed last line") from exc
    if end > shard.bytes:
        raise ShardError(f"DALI index {shard.index_path} points past the end of {shard.path}")
    return text


def find_corrupt_shard(shards, hash_remote=True):
    """The first shard whose size or sha256 differs from the manifest, or None (reads every file: slow path;
    without hash_remote, shards in object storage are only checked for their size)."""
    for shard in shards:
        try:
            check_shard_file(shard)
        except StorageError:
            raise
        except ShardError:
            return shard
        if not hash_remote and storage.is_remote(shard.path):
            continue
        if shard.sha256 and storage.sha256(shard.path, shard.bytes) != shard.sha256:
            return shard
    return None
