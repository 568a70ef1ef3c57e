"""WebDataset tars someone else wrote -> the side files this trainer reads, the tars left as they are: the whole
adoption behind tools/adopt_shards.py (whose docstring describes it for users).

Each tar is streamed once (shards/storage.py: a local folder, s3:// or http(s)://), hashed as it passes, and its
members grouped into samples as webdataset groups them (tariterators.base_plus_ext: the key runs to the first dot
of the member name's last path part; consecutive members of one key are one sample). Per sample the image member
(jpg, jpeg, png or webp, exact extension first, else the last part of the extension) is checked as make_shards
checks its inputs (shards/imagecheck.py check_bytes) and its label read from the `.cls` member or a `.json` field.
Samples that cannot be trained on are left out of the index and listed by shard and key with the reason.

Per tar the side files (shards/format.py) go to OUT: the DALI index naming the image `jpg` and the label `cls` at
their real offsets, the member checksums of those members, and a `.labels` file (used only where labels are
.json fields). A completion record in OUT/.adopt_shards/ keyed by the tar's identity (size and modification time,
or ETag) makes a rerun reuse every tar already done; the manifest is written last, and not at all when it would
not change. adopt(options) returns the exit status (0, or 1 when samples were left out without --skip-bad);
ConvertError and OSError are for the caller.
"""
import fnmatch
import hashlib
import json
import os
import re
import sys
import tarfile
import time
import zlib
from collections import Counter, namedtuple

from . import storage
from .errors import ConvertError, ShardError, StorageError
from .files import write_atomic
from .format import (
    FORMAT_VERSION,
    LABEL_DIGITS_MAX,
    LABELS_ENTRY,
    MANIFEST,
    SHARD_ENTRY,
    TIMM_INFO,
    checksums_text,
    index_text,
    labels_text,
)
from .imagecheck import JPEG_MAGIC, check_bytes
from .outdir import lock_out
from .workers import Workers

ADOPT_VERSION = 1  # changes when the side files of the same tar would differ: records of older ones are redone
STATE_DIR = ".adopt_shards"  # completion records, one per tar
LOCK_FILE = ".adopt_shards.lock"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # what the index may name `jpg`: both DALI and Pillow decode them
# Image members of other formats, named when a sample has no other image: DALI's decoders read neither GIF nor
# the rest here reliably, and a split must read alike on every backend.
OTHER_IMAGE_EXTENSIONS = ("gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "pnm", "jp2", "jxl", "avif", "heic")
# Image data DALI and Pillow both decode, by its first bytes (the member's extension may say otherwise).
_MAGIC = ((JPEG_MAGIC, "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val"}  # their names -> train.py's
_WHITE_SPACE = re.compile(r"\s")
_PIXEL_LIMIT_WORDS = "decompression-bomb"  # in check_bytes' reason for an image it would have to downscale
_READ_CHUNK = 1 << 20

# One tar to adopt: where it is, its name, its split, OUT, the record path, the tar's identity and the options that
# decide its side files (label source, class-name field).
TarJob = namedtuple("TarJob", "path name split out record identity label class_field")


# ---------------------------------------------------------------------------------------------------- one tar

class _HashingReader:
    """A file object over a stream of byte chunks that hashes and counts every byte read through it."""

    def __init__(self, chunks):
        self._chunks, self._buffer, self._position = chunks, b"", 0
        self.digest, self.size = hashlib.sha256(), 0

    def read(self, count=-1):
        # tarfile's stream mode reads 10 kB at a time: the chunk in hand is sliced, never copied whole per read.
        if count < 0 or self._position + count > len(self._buffer):
            pieces = [self._buffer[self._position:]]
            held = len(pieces[0])
            while count < 0 or held < count:
                chunk = next(self._chunks, b"")
                if not chunk:
                    break
                pieces.append(chunk)
                held += len(chunk)
            self._buffer, self._position = b"".join(pieces), 0
        stop = len(self._buffer) if count < 0 else self._position + count
        data = self._buffer[self._position:stop]
        self._position += len(data)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self):
        while self.read(_READ_CHUNK):
            pass


def _chunks(path):
    if storage.is_remote(path):
        yield from storage.copy_chunks(path, storage.size(path))
        return
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * _READ_CHUNK):
            yield chunk


def split_name(member):
    """(key, extension) of a member name as webdataset's base_plus_ext splits it; (None, None) when it has none."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", member)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


def tar_samples(path):
    """Yields (key, {extension: (member name, data offset, size, bytes)}) per sample of the tar at `path`, as
    webdataset groups its members, and finally (None, (sha256, size)) of the whole file. ConvertError naming the
    tar when it is not a tar (compressed ones included: their members have no offsets to index)."""
    reader = _HashingReader(_chunks(path))
    key, members = None, {}
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, extension = split_name(info.name)
                data = tar.extractfile(info).read()
                if member_key is None:
                    continue  # no extension: no part of a sample (webdataset skips it too)
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                if extension in members:
                    members[extension] = None  # twice in one sample (webdataset refuses it): named by adopt_tar
                else:
                    members[extension] = (info.name, info.offset_data, info.size, data)
    except tarfile.TarError as exc:
        raise ConvertError(f"{path} is not an uncompressed tar file ({exc}): DALI and this trainer read members at "
                           "their offsets, which a compressed or damaged tar does not have") from None
    if key is not None:
        yield key, members
    reader.drain()
    yield None, (reader.digest.hexdigest(), reader.size)


def _component(members, wanted):
    """(extension, member) of the first of `wanted` that the sample has, by exact extension, else by the last part
    of a longer one (`jpeg.jpg` from a key with a dot); None without one."""
    for exact in (True, False):
        for name in wanted:
            for extension, member in members.items():
                if extension == name if exact else extension.rsplit(".", 1)[-1] == name:
                    return extension, member
    return None


def _image_format(data):
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return "WEBP" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def _label(job, key, members):
    """(label, .cls member or None, class name or None) of a sample; ConvertError naming tar and key when it has
    none (a sample without a label is bad input, not a sample to leave out), None for a label of -1 (webdataset's
    and timm's mark of an unlabelled sample)."""
    where = f"{job.path}: sample {key!r}"
    json_member = _component(members, ("json",))
    meta = None
    if (job.label != "cls" or job.class_field) and json_member and json_member[1]:
        try:
            meta = json.loads(json_member[1][3])
        except ValueError as exc:
            raise ConvertError(f"{where}: its .json member is not JSON ({exc})") from None
        if not isinstance(meta, dict):
            meta = None
    class_name = None
    if job.class_field and meta is not None and job.class_field in meta:
        class_name = str(meta[job.class_field])
    if job.label == "cls":
        found = _component(members, ("cls",))
        if found is None or found[1] is None:
            raise ConvertError(f"{where} has no .cls member (or two) while the labels are .cls members: mixed "
                               "layouts, or pass --label json:FIELD when the labels are a field of the .json members")
        text = found[1][3]
        try:
            label = int(text.strip())
        except ValueError:
            raise ConvertError(f"{where}: its .cls member {text[:20]!r} is not a class number") from None
        return label, found[1], class_name
    field = job.label.split(":", 1)[1]
    if meta is None:
        raise ConvertError(f"{where} has no .json member holding a JSON object, which --label {job.label} reads")
    value = meta.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConvertError(f"{where}: its .json member has no whole-number field {field!r} (it has "
                           f"{', '.join(sorted(meta)) or 'no fields'})")
    return value, None, class_name


def _strict_cls(data):
    """Whether a .cls member is a label as DALI's graph reads it (pipeline/dali.py): ASCII digits only."""
    return 0 < len(data) <= LABEL_DIGITS_MAX and data.isdigit()


def scan_tar(job):
    """What the side files of one tar need: per kept sample its index entry, checksums and label; the samples left
    out and the images kept that readers convert (CMYK, alpha, ...), each (key, reason)."""
    index, checksums, labels = [], [], []
    left_out, nonstandard, class_names = [], [], {}
    found, strict, cls_width = 0, True, 0
    digest = size = None
    for key, members in tar_samples(job.path):
        if key is None:
            digest, size = members
            break
        found += 1
        problem, image = _image_problem(members)
        label, cls_member, class_name = _label(job, key, members)
        if problem is None and label < 0:
            problem = f"label {label} (unlabelled)"
        if problem is None:
            problem, note = _check_image(image)
            if note:
                nonstandard.append((key, note))
        used = [image] + ([cls_member] if cls_member else [])
        if problem is None and any(_WHITE_SPACE.search(member[0]) for member in used):
            problem = "a member name holds white space, which DALI's index (space-separated fields) cannot hold"
        if problem is not None:
            left_out.append((key, problem))
            continue
        if class_name is not None and class_names.setdefault(label, class_name) != class_name:
            raise ConvertError(f"{job.path}: sample {key!r} names class {label} {class_name!r}, an earlier sample "
                               f"{class_names[label]!r} (field {job.class_field!r})")
        index.append([("jpg", image[1], image[2], image[0])]
                     + ([("cls", cls_member[1], cls_member[2], cls_member[0])] if cls_member else []))
        checksums += [(member[1], member[0], zlib.crc32(member[3]) & 0xFFFFFFFF) for member in used]
        labels.append(label)
        if cls_member:
            strict = strict and _strict_cls(cls_member[3])
            cls_width = max(cls_width, len(cls_member[3]))
    checksums.sort()  # tar order, as shards/format.py has it
    return dict(sha256=digest, bytes=size, found=found, index=index, labels=labels,
                checksums=[(name, crc) for _, name, crc in checksums], left_out=left_out, nonstandard=nonstandard,
                class_names=class_names, strict_cls=strict and job.label == "cls", cls_width=cls_width)


def _image_problem(members):
    """(why the sample has no image to train on or None, its image member)."""
    found = _component(members, IMAGE_EXTENSIONS)
    if found is not None:
        if found[1] is None:
            return f"two .{found[0]} members (webdataset refuses such a sample)", None
        return None, found[1]
    other = _component(members, OTHER_IMAGE_EXTENSIONS)
    if other is not None:
        return (f"its image is a .{other[0]} member: only {', '.join(IMAGE_EXTENSIONS)} are adopted (DALI's "
                "decoders do not read GIF, and every backend must read a split alike)"), None
    return f"no image member ({', '.join(IMAGE_EXTENSIONS)}; it has {', '.join(sorted(members))})", None


def _check_image(image):
    """(why the image cannot be trained on or None, a note on a nonstandard image that is kept or None)."""
    name, _, _, data = image
    kind = _image_format(data)
    if kind is None:
        check = check_bytes(data, name)
        what = check.reason.split(" image", 1)[0] if check.status == "fixed" else "undecodable data"
        return f"not JPEG, PNG or WebP data ({what}): DALI's decoders do not read it", None
    check = check_bytes(data, name)
    if check.status == "skipped":
        return check.reason, None
    if check.status == "fixed":
        if _PIXEL_LIMIT_WORDS in check.reason:
            return (f"{check.width}x{check.height} is over the pixel limit every reader keeps (make_shards would "
                    "store it downscaled; a tar adopted as it is cannot be)"), None
        note = check.reason.split(" converted", 1)[0]
        return None, (note if note != f"{kind} image" else None)
    return None, None


def adopt_tar(job):
    """Writes (or reuses) the side files of one tar; returns its completion record plus "reused"."""
    record = reusable_record(job)
    if record is not None:
        return dict(record, reused=True)
    # A record that claims the side files before they are written: a run killed in between leaves files a rerun
    # knows as its own (refuse_foreign_files) and redoes (no identity in the record).
    write_atomic(job.record, json.dumps({"tar": job.name, "pending": True}).encode(), durable=False)
    scan = scan_tar(job)
    stem = job.name[:-len(".tar")]
    files = {"index": (f"{stem}.idx", index_text(scan["index"]).encode()),
             "checksums": (f"{stem}.crc32", checksums_text(scan["checksums"]).encode()),
             "labels": (f"{stem}.labels", labels_text(scan["labels"]).encode())}
    record = {"tar": job.name, "split": job.split, "identity": job.identity, "label": job.label,
              "class_field": job.class_field, "version": ADOPT_VERSION, "samples": len(scan["index"]),
              **{key: scan[key] for key in ("bytes", "sha256", "found", "left_out", "nonstandard", "strict_cls",
                                            "cls_width")},
              "label_values": scan["labels"],
              "class_names": {str(label): name for label, name in scan["class_names"].items()}}
    for kind, (name, data) in files.items():
        write_atomic(os.path.join(job.out, name), data, durable=False)
        record.update({kind: name, f"{kind}_bytes": len(data), f"{kind}_sha256": hashlib.sha256(data).hexdigest()})
    write_atomic(job.record, json.dumps(record).encode())
    return dict(record, reused=False)


def reusable_record(job):
    """The record of an earlier run for this tar, when the tar is the same file (identity), the options the same and
    its side files still hash to what the record says; else None."""
    try:
        with open(job.record, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    same = (record.get("identity"), record.get("label"), record.get("class_field"), record.get("version"),
            record.get("split"))
    if same != (job.identity, job.label, job.class_field, ADOPT_VERSION, job.split):
        return None
    for kind in ("index", "checksums", "labels"):
        path = os.path.join(job.out, record.get(kind, ""))
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        if len(data) != record[f"{kind}_bytes"] or hashlib.sha256(data).hexdigest() != record[f"{kind}_sha256"]:
            return None
    return record


# ---------------------------------------------------------------------------------------------------- the folder

def read_info(src):
    """timm's split-info file (_info.json) in `src` as a dict, or None when there is none."""
    path = storage.join(src, TIMM_INFO)
    try:
        if not storage.is_remote(src) and not os.path.isfile(path):
            return None
        info = json.loads(storage.read_bytes(path))
    except StorageError as exc:
        if exc.missing:
            return None
        raise ConvertError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path} is unreadable or not JSON: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        raise ConvertError(f"{path} is not timm's split-info file: it has no \"splits\" object")
    return info


def plan_splits(src, options, info):
    """({train.py's split name: [tar names in order]}, notes): from _info.json when there is one, else from the
    tars' names (a word train or val/validation in them) or --train/--val patterns."""
    listing = storage.list_files(src)
    notes = []
    if listing is None and info is None:
        raise ConvertError(f"{src}: a web server lists no folder, so the tars must be named by timm's split-info file "
                           f"{TIMM_INFO}, and there is none")
    tars = sorted(name for name in listing or () if name.endswith(".tar"))
    compressed = sorted(name for name in listing or () if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")))
    if compressed:
        notes.append(f"{len(compressed)} compressed tars not adopted (their members have no offsets to index): "
                     f"{', '.join(compressed[:3])}")
    if listing is not None and not tars:
        raise ConvertError(f"{src} holds no .tar files" + (f" (only compressed ones: {compressed[0]}, ...)"
                                                           if compressed else ""))
    patterns = {"train": options.train, "val": options.val}
    if any(patterns.values()):
        splits = {split: [name for name in tars if fnmatch.fnmatchcase(name, pattern)]
                  for split, pattern in patterns.items() if pattern}
        for split, names in splits.items():
            if not names:
                raise ConvertError(f"--{split} {patterns[split]!r} matches no tar in {src}")
    elif info is not None:
        splits = {}
        for their_name, entry in info["splits"].items():
            ours = SPLIT_NAMES.get(their_name)
            names = entry.get("filenames") if isinstance(entry, dict) else None
            if ours is None:
                notes.append(f"split {their_name!r} of {TIMM_INFO} not adopted: train.py reads train and val")
                continue
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConvertError(f"{storage.join(src, TIMM_INFO)}: split {their_name!r} has no list of filenames")
            if ours in splits:
                raise ConvertError(f"{storage.join(src, TIMM_INFO)} has two splits that are train.py's {ours!r}")
            splits[ours] = names
        for names in splits.values():
            for name in names:
                if os.path.basename(name) != name or not name.endswith(".tar"):
                    raise ConvertError(f"{storage.join(src, TIMM_INFO)} names {name!r}: not a .tar file in {src}")
                if listing is not None and name not in listing:
                    raise ConvertError(f"{storage.join(src, name)}, named by {TIMM_INFO}, does not exist")
    else:
        splits = {}
        for name in tars:
            words = set(re.split(r"[-_.]", name[:-len(".tar")].lower()))
            found = {SPLIT_NAMES[word] for word in words if word in SPLIT_NAMES}
            if len(found) != 1:
                raise ConvertError(f"{storage.join(src, name)}: its name says {'neither' if not found else 'both'} "
                                   "train nor val; name the splits with --train GLOB and --val GLOB")
            splits.setdefault(found.pop(), []).append(name)
    listed = {name for names in splits.values() for name in names}
    others = [name for name in tars if name not in listed]
    if others:
        notes.append(f"{len(others)} tars in no split left alone: {', '.join(others[:3])}")
    if not any(splits.values()):
        raise ConvertError(f"{src}: no tar is in a train or val split")
    return {split: names for split, names in sorted(splits.items()) if names}, notes


def first_sample(path):
    """The extensions of the tar's first sample and its .json object (or None)."""
    for key, members in tar_samples(path):
        if key is None:
            break
        meta = None
        found = _component(members, ("json",))
        if found and found[1]:
            try:
                meta = json.loads(found[1][3])
            except ValueError:
                meta = None
        return members, meta if isinstance(meta, dict) else None
    raise ConvertError(f"{path} holds no sample")


def choose_labels(options, first_tar):
    """('cls' or 'json:FIELD', the .json class-name field or None) for `--label auto`: the .cls members when the
    first sample has one, else its .json field 'label'."""
    members, meta = first_sample(first_tar)
    label = options.label
    if label == "auto":
        if _component(members, ("cls",)):
            label = "cls"
        elif meta is not None and isinstance(meta.get("label"), int):
            label = "json:label"
        else:
            raise ConvertError(f"{first_tar}: its first sample has neither a .cls member nor a .json field 'label' "
                               f"(members: {', '.join(sorted(members))}); pass --label json:FIELD")
    class_field = options.class_field
    if class_field is None and meta is not None and isinstance(meta.get("class_name"), str):
        class_field = "class_name"
    return label, class_field


def read_class_file(path):
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.rstrip("\n") for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"--classes {path}: {exc}") from None
    if not names or len(set(names)) != len(names):
        raise ConvertError(f"--classes {path}: {'no class names' if not names else 'a class name twice'}")
    return names


def class_list(options, records, info, src):
    """(class names in label order, where they came from)."""
    labels = [label for record in records for label in record["label_values"]]
    top = max(labels, default=-1)
    if options.classes:
        names, source = read_class_file(options.classes), f"--classes {options.classes}"
    else:
        given = {}
        for record in records:
            for label, name in record["class_names"].items():
                if given.setdefault(int(label), name) != name:
                    raise ConvertError(f"class {label} is named both {given[int(label)]!r} and {name!r} in the .json "
                                       f"members (field {record['class_field']!r})")
        count = info.get("num_classes") if info else None
        count = count if isinstance(count, int) and count > top else top + 1
        if given:
            count = max(count, max(given) + 1)
            names = [given.get(label, str(label)) for label in range(count)]
            source = f"the .json field {records[0]['class_field']!r} ({count - len(given)} classes without a name)"
        else:
            names = [str(label) for label in range(count)]
            source = ("the num_classes of " + TIMM_INFO if info and info.get("num_classes") == count
                      else "the largest label") + ", named by their numbers"
    if top >= len(names):
        raise ConvertError(f"label {top} in the tars of {src} is out of range for the {len(names)} classes of {source}")
    return names, source


def label_digits(num_classes):
    """The widest .cls member DALI's graph reads for `num_classes` (pipeline/dali.py label_digits)."""
    return len(str(max(num_classes - 1, 0)))


def split_entry(records, classes, label):
    """The manifest's entry of one split, and whether its labels are .labels files."""
    cls_members = label == "cls" and all(r["strict_cls"] and r["cls_width"] <= label_digits(len(classes))
                                         for r in records)
    shards, counts = [], Counter()
    for record in records:
        if not record["samples"]:
            continue  # nothing adopted from it
        entry = {key: record[key] for key in SHARD_ENTRY}
        if not cls_members:
            entry.update({key: record[key] for key in LABELS_ENTRY})
        shards.append(entry)
        counts.update(record["label_values"])
    left_out = [{"shard": r["tar"], "key": key, "reason": reason} for r in records for key, reason in r["left_out"]]
    nonstandard = [{"shard": r["tar"], "key": key, "note": note} for r in records for key, note in r["nonstandard"]]
    entry = {"found": sum(r["found"] for r in records), "samples": sum(r["samples"] for r in records),
             "labels": "cls members" if cls_members else f"{label} (.labels files; --backend torch only)",
             "class_counts": [counts.get(label, 0) for label in range(len(classes))], "shards": shards,
             "left_out": left_out, "nonstandard": nonstandard}
    return entry, not cls_members


# ---------------------------------------------------------------------------------------------------- run

def refuse_foreign_files(out, names, state):
    """ConvertError when OUT holds a side file or manifest of the same name that this tool did not write (a DALI
    index someone else made beside their tars, a make_shards folder): it is not overwritten."""
    manifest = os.path.join(out, MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as handle:
                ours = "adopted" in json.load(handle)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ConvertError(f"{manifest} exists and was not written by adopt_shards (a folder tools/make_shards.py "
                               "wrote trains as it is); choose another OUT")
    for name in names:
        stem = name[:-len(".tar")]
        record = os.path.join(state, f"{name}.json")
        for side in (f"{stem}.idx", f"{stem}.crc32", f"{stem}.labels"):
            if os.path.exists(os.path.join(out, side)) and not os.path.exists(record):
                raise ConvertError(f"{os.path.join(out, side)} exists and was not written by adopt_shards; choose "
                                   "another OUT (the side files are written there)")


def adopt(options):
    """Adopts the tars in options.src, writing the side files and the manifest to options.out (default: src)."""
    start = time.monotonic()
    try:
        src = storage.normalize(options.src)
    except ShardError as exc:
        raise ConvertError(str(exc)) from None
    if storage.is_remote(src) and not options.out:
        raise ConvertError(f"SRC {src} is remote: name a local OUT folder for the side files (they are written there, "
                           "and training reads the tars remotely with them)")
    if not storage.is_remote(src) and not os.path.isdir(src):
        raise ConvertError(f"SRC {src} is not a folder")
    out = os.path.abspath(options.out) if options.out else src
    if storage.is_remote(out):
        raise ConvertError(f"OUT {out} must be a local folder")
    try:
        info = read_info(src)
        splits, notes = plan_splits(src, options, info)
    except StorageError as exc:
        raise ConvertError(str(exc)) from None
    lock = lock_out(out, LOCK_FILE, "adopt_shards")  # noqa: F841  (held until the process ends)
    state = os.path.join(out, STATE_DIR)
    os.makedirs(state, exist_ok=True)
    names = [name for tars in splits.values() for name in tars]
    if len(set(names)) != len(names):
        raise ConvertError(f"a tar is in two splits: {Counter(names).most_common(1)[0][0]}")
    refuse_foreign_files(out, names, state)
    label, class_field = choose_labels(options, storage.join(src, next(iter(splits.values()))[0]))
    jobs = [TarJob(storage.join(src, name), name, split, out, os.path.join(state, f"{name}.json"),
                   storage.identity(storage.join(src, name)), label, class_field)
            for split, tars in splits.items() for name in tars]
    with Workers(min(options.workers, len(jobs))) as workers:
        done = {record["tar"]: record for record in workers.imap(adopt_tar, jobs, ordered=False)}
    records = {split: [done[name] for name in tars] for split, tars in splits.items()}
    everything = [record for split_records in records.values() for record in split_records]
    classes, class_source = class_list(options, everything, info, src)
    manifest = {"format_version": FORMAT_VERSION,
                "adopted": {"source": src, "labels": label, "class_field": class_field, "classes": class_source},
                "classes": classes, "splits": {}}
    if out != src:
        manifest["tars"] = src
    label_files = []
    for split, split_records in records.items():
        manifest["splits"][split], uses_label_files = split_entry(split_records, classes, label)
        if uses_label_files:
            label_files.append(split)
        if not manifest["splits"][split]["samples"]:
            raise ConvertError(f"split {split}: no sample of its {len(split_records)} tars can be trained on "
                               f"(the first: {split_records[0]['left_out'][:1]})")
    text = (json.dumps(manifest, indent=1) + "\n").encode()
    manifest_path = os.path.join(out, MANIFEST)
    unchanged = os.path.isfile(manifest_path) and open(manifest_path, "rb").read() == text
    if not unchanged:
        write_atomic(manifest_path, text)
    elapsed = time.monotonic() - start
    return report(manifest, manifest_path, notes, everything, label_files, elapsed, unchanged, options.skip_bad)


def report(manifest, manifest_path, notes, records, label_files, elapsed, unchanged, skip_bad):
    """Prints what the adoption found, before any training; the exit status (1: samples left out)."""
    reused = sum(record["reused"] for record in records)
    found = sum(record["found"] for record in records)
    for split, entry in manifest["splits"].items():
        print(f"{split}: {len(entry['shards'])} tars, {entry['found']} samples found, {entry['samples']} adopted, "
              f"{len(entry['left_out'])} left out, {len(entry['nonstandard'])} kept that readers convert; labels: "
              f"{entry['labels']}")
    print(f"classes: {len(manifest['classes'])}, from {manifest['adopted']['classes']}")
    for note in notes:
        print(f"note: {note}")
    for split in label_files:
        print(f"note: split {split}'s labels are not .cls members DALI's graph reads: train it with --backend torch")
    per_thousand = elapsed / max(found - sum(r["found"] for r in records if r["reused"]), 1) * 1000
    print(f"{len(records)} tars ({reused} reused), {elapsed:.1f} s" + (
        f", {per_thousand:.2f} s per 1,000 samples" if reused < len(records) else "")
        + ("; nothing changed" if unchanged else f"; wrote {manifest_path}"))
    left_out = [item for entry in manifest["splits"].values() for item in entry["left_out"]]
    for item in left_out[:10]:
        print(f"left out {item['shard']} {item['key']}: {item['reason']}", file=sys.stderr)
    if len(left_out) > 10:
        print(f"... and {len(left_out) - 10} more", file=sys.stderr)
    if left_out and not skip_bad:
        print(f"{len(left_out)} samples were left out (listed with the reason under splits.<split>.left_out in "
              f"{manifest_path}); everything else is adopted; pass --skip-bad to accept this", file=sys.stderr)
        return 1
    return 0

