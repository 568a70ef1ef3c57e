"""ImageNet folder -> WebDataset shards (+ DALI index and member checksums per shard, classes.txt, manifest.json),
nothing lost. The format: pipeline/shard_format.py.

    python tools/make_shards.py SRC OUT [--splits train,val] [--workers N] [--max-count N] [--max-size SIZE]
                                [--max-side PX] [--quality Q] [--seed S] [--skip-bad] [--allow-empty-classes]
                                [--overwrite]

Input: SRC/train/<wnid>/* and SRC/val/<wnid>/* (ImageFolder layout), or SRC/train_list.txt / SRC/val_list.txt
with lines `relative/path label` (paths relative to SRC; the label is the last field, so paths may hold spaces).
When a split has both, its list file wins. Class index = position of the wnid in the sorted train wnids.
Names the outputs cannot store (not UTF-8, control characters; see name_problem): a class folder is refused before
any work (exit 2), an image file is skipped with the reason under its escaped name.

Each split is done in two phases: (1) check every file in parallel (a 1/8-scale decode that still reads all
entropy-coded data, see tools/imagecheck.py); (2) shuffle the good samples with a permutation from --seed, cut
them into shards whose sample counts differ by at most one, and write whole shards in parallel. A shard appears
under its final name only when complete (written as *.tmp, then renamed) and a record of it goes into
OUT/.make_shards/, so a run killed at any moment and started again with the same arguments reuses every shard it
can verify (re-hashing it) and rewrites the rest; OUT/manifest.json is written last, after every shard and index
has been fsynced.

Exit status: 0 done; 1 done, but some files could not be read or decoded and were skipped (listed in the manifest;
pass --skip-bad to accept that), or a class has no train sample (--allow-empty-classes accepts that); 2 bad
arguments or environment (one line on stderr).
"""
import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import namedtuple

from tqdm import tqdm

from pipeline.shard_format import BLOCK, CLASSES_FILE, FORMAT_VERSION, MANIFEST, RECORD, SHARD_ENTRY, shard_name
from tools.imagecheck import Check, check_file, target_side
from tools.shardwriter import PlannedSample, ShardTask, fsync_dir, make_durable, named, write_atomic, write_shard

SPLITS = ("train", "val")
STATE_DIR = ".make_shards"  # run identity, check journal and shard completion records (kept after the run)
# Files this tool writes in OUT (with --overwrite, the only ones it deletes): shards, indexes, member checksums,
# classes.txt, manifest.json, and their temporary files (NAME.<pid>.tmp).
OUR_FILE = re.compile(r"^(?:(train|val)-(\d{6})\.(?:tar|idx|crc32)|manifest\.json|classes\.txt)(\.\d+\.tmp)?$")
SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
                 "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12}
SAMPLE_OVERHEAD = 3 * BLOCK  # tar headers of .jpg and .cls plus the one data block of .cls


class ToolError(Exception):
    """Bad arguments, input or output folder, or counts that do not add up: one line on stderr, exit status 2."""


# One input file. label is None and problem is set when the file is found but cannot be a sample (for example
# outside any class folder, or listed but missing); such files are reported as skipped without being opened.
Source = namedtuple("Source", "relpath path label size mtime_ns problem")


# ---------------------------------------------------------------------------------------------------- arguments

def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def jpeg_quality(text):
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {value}")
    return value


def byte_size(text):
    """'500M' -> 524288000; K/M/G/T are powers of 1024, KB/MB/GB/TB powers of 1000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", text.upper())
    if not match or match.group(2) == "B":
        raise argparse.ArgumentTypeError(f"expected a size like 500M or 1G, got {text!r}")
    value = int(float(match.group(1)) * SIZE_SUFFIXES[match.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def split_list(text):
    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown or len(set(splits)) != len(splits):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of train,val, got {text!r}")
    return splits


def default_workers():
    # CPUs this process may run on (respects taskset and container CPU sets), not all CPUs of the machine.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="make_shards.py",
        description="Convert an ImageNet-layout folder into WebDataset shards (.tar + DALI .idx), classes.txt and "
                    "manifest.json. If interrupted, run the same command again: complete shards are verified and "
                    "reused, the rest is rewritten.",
        epilog="Exit status: 0 done; 1 done but some files were undecodable and skipped (see manifest.json); "
               "2 bad arguments, input or output folder.")
    parser.add_argument("src", metavar="SRC",
                        help="dataset root: train/<wnid>/*, val/<wnid>/* and/or train_list.txt, val_list.txt "
                             "(lines 'relative/path label'; a list file wins over the folder)")
    parser.add_argument("out", metavar="OUT", help="output folder for the shards (created if missing)")
    parser.add_argument("--splits", type=split_list, metavar="SPLITS", default=list(SPLITS),
                        help="comma-separated splits to convert (default: train,val)")
    parser.add_argument("--workers", type=positive_int, metavar="N", default=default_workers(),
                        help="worker processes that check images and write shards (default: %(default)s, "
                             "the CPUs available)")
    parser.add_argument("--max-count", type=positive_int, metavar="N", default=1000,
                        help="maximum samples per shard (default: %(default)s, about 110 MB of ImageNet train)")
    parser.add_argument("--max-size", type=byte_size, metavar="SIZE", default=None,
                        help="maximum shard size in bytes; suffixes K, M, G, T are powers of 1024, KB, MB, GB, "
                             "TB powers of 1000 (default: no limit). Planned from source sizes: a shard may run "
                             "over by what re-encoding adds, and always holds at least one sample")
    parser.add_argument("--max-side", type=positive_int, metavar="PX", default=None,
                        help="downscale images whose longer side exceeds this many pixels to exactly that "
                             "(aspect ratio kept, Lanczos) and re-encode them at --quality (default: off, "
                             "valid JPEGs are stored byte for byte)")
    parser.add_argument("--quality", type=jpeg_quality, metavar="Q", default=95,
                        help="JPEG quality 1-100 for re-encoded images: converted ones and, with --max-side, "
                             "downscaled ones (default: %(default)s)")
    parser.add_argument("--seed", type=int, metavar="S", default=0,
                        help="seed of the permutation that shuffles samples across shards (default: %(default)s)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="exit 0 even if undecodable files were skipped (they are listed in the manifest "
                             "either way)")
    parser.add_argument("--allow-empty-classes", action="store_true",
                        help="exit 0 even if a class has no train sample (no files, or only skipped ones); such "
                             "classes are named on stderr either way")
    parser.add_argument("--overwrite", action="store_true",
                        help="if OUT holds shards of a different run (other source or options), delete them "
                             "first; without it that is an error. Output of the same run is always resumed. "
                             "Files this tool does not write are left alone")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- names

# What no name may hold, because the manifest (JSON in UTF-8), classes.txt and the check journal cannot store it or
# would be split by it: surrogates (os.fsdecode's stand-ins for bytes that are not UTF-8), control characters
# (newline, tab, DEL, C1) and Unicode's line and paragraph separators, on which str.splitlines() splits. These are
# exactly the Unicode categories Cs, Cc, Zl and Zp; a regular expression finds them 15x faster than
# unicodedata.category per character (0.5 vs 7 us per ImageNet path), which counts over 1.3 million paths.
UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def name_problem(text):
    """Why `text` (a path or a name) cannot be stored, or None."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if "\ud800" <= char <= "\udfff":
        return f"its name is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x})"
    return f"its name holds the control character {escaped(char)}"


def escaped(text):
    """`text` as it can be stored and printed on one line: bytes that are not UTF-8 as \\xNN, control characters as
    Python writes them (\\n, \\t, \\x01, \\u2028), backslashes doubled; everything else as it is."""
    parts = []
    for char in text:
        if 0xDC80 <= ord(char) <= 0xDCFF:  # surrogateescape: the byte ord - 0xDC00 of the name on disk
            parts.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char == "\\" or UNSTORABLE.match(char):
            parts.append(repr(char)[1:-1])
        else:
            parts.append(char)
    return "".join(parts)


def check_class_folder(path, name):
    """ToolError naming the folder (escaped) when its name, which becomes a label, cannot be stored."""
    problem = name_problem(name)
    if problem:
        raise ToolError(f"class folder '{escaped(path)}': {problem}; a class name is stored in manifest.json and "
                        "classes.txt, rename the folder")


# ---------------------------------------------------------------------------------------------------- input

def list_file_lines(list_path):
    """(line number, text) of a list file; ToolError naming the line that is not UTF-8."""
    with open(list_path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise ToolError(f"{list_path}:{number}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); list files are "
                        "UTF-8 text") from None
    return enumerate(io.StringIO(text, newline=None), 1)  # newlines as text mode reads them: \n, \r\n or \r


def read_list_file(list_path):
    """Parses `relative/path label` lines; returns [(relpath, label, line number)]."""
    entries, first_line = [], {}
    for number, line in list_file_lines(list_path):
        line = line.strip()
        if not line:
            continue
        fields = line.rsplit(None, 1)
        where = f"{list_path}:{number}"
        if len(fields) != 2:
            raise ToolError(f"{where}: expected 'relative/path label', got {line!r}")
        relpath, label_text = fields
        if not re.fullmatch(r"\d+", label_text):
            raise ToolError(f"{where}: label {label_text!r} is not a non-negative integer")
        if os.path.isabs(relpath):
            raise ToolError(f"{where}: path {relpath!r} must be relative to SRC")
        relpath = os.path.normpath(relpath).replace(os.sep, "/")
        if relpath in first_line:
            raise ToolError(f"{where}: {escaped(relpath)} is already listed on line {first_line[relpath]}")
        first_line[relpath] = number
        entries.append((relpath, int(label_text), number))
    return entries


def class_names_from_list(entries):
    """Class names for list labels 0..max: the folder holding a label's files when every label has exactly one
    folder of its own (ImageNet's train/<wnid>/) and every folder name can be stored (name_problem), else the
    labels themselves as decimal strings."""
    num_classes = max(label for _, label, _ in entries) + 1
    folders = [set() for _ in range(num_classes)]
    for relpath, label, _ in entries:
        folders[label].add(os.path.basename(os.path.dirname(relpath)))
    names = [next(iter(f)) if len(f) == 1 else None for f in folders]
    if None in names or "" in names or len(set(names)) != num_classes or any(map(name_problem, names)):
        return [str(label) for label in range(num_classes)]
    return names


def find_classes(src):
    """The class list (index order) from train_list.txt if present, else from the folders in SRC/train."""
    list_path = os.path.join(src, "train_list.txt")
    if os.path.isfile(list_path):
        entries = read_list_file(list_path)
        if not entries:
            raise ToolError(f"no classes: {list_path} lists no files")
        return class_names_from_list(entries)
    train_dir = os.path.join(src, "train")
    if not os.path.isdir(train_dir):
        raise ToolError(f"no classes: {src} has neither train/ nor train_list.txt")
    wnids = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    if not wnids:
        raise ToolError(f"no classes: {train_dir} has no class folders")
    for wnid in wnids:
        check_class_folder(os.path.join(train_dir, wnid), wnid)
    return wnids


def stat_source(src, relpath, label, problem=None):
    path = os.path.join(src, relpath)
    name_issue = name_problem(relpath)
    if name_issue:  # one input the manifest cannot name as it is: skipped, and recorded under its escaped name
        return Source(escaped(relpath), path, label, 0, 0, f"{name_issue}, which the manifest cannot store; "
                                                           "rename it")
    if problem is None:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return Source(relpath, path, label, 0, 0, "file not found")
        if not os.path.isfile(path):
            return Source(relpath, path, label, 0, 0, "not a regular file")
        return Source(relpath, path, label, info.st_size, info.st_mtime_ns, None)
    return Source(relpath, path, label, 0, 0, problem)


def sources_from_list(src, list_path, num_classes):
    sources = []
    for relpath, label, number in read_list_file(list_path):
        if label >= num_classes:
            raise ToolError(f"{list_path}:{number}: label {label} out of range (train has {num_classes} classes)")
        sources.append(stat_source(src, relpath, label))
    return sources


def sources_from_folder(src, split, class_index):
    """Every file under SRC/<split>/<wnid>/ (recursively) is an input; files outside class folders are inputs
    too, reported as skipped, so that nothing in the split is ignored silently."""
    split_dir = os.path.join(src, split)
    sources = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        relpath = f"{split}/{entry.name}"
        if not entry.is_dir():
            sources.append(stat_source(src, relpath, None, "not inside a class folder"))
            continue
        check_class_folder(entry.path, entry.name)
        if entry.name not in class_index:
            raise ToolError(f"{split_dir}/{entry.name}: class {entry.name} is not among the train classes")
        label = class_index[entry.name]
        # A folder that cannot be listed (no read permission, an I/O error) is an input that is skipped with its
        # reason, like an undecodable file: os.walk alone would pass over it in silence.
        unlistable = []
        for dirpath, dirnames, filenames in os.walk(entry.path, onerror=unlistable.append, followlinks=True):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, src).replace(os.sep, "/")
            for name in sorted(filenames):
                sources.append(stat_source(src, f"{rel_dir}/{name}", label))
        for error in unlistable:
            rel_dir = os.path.relpath(error.filename, src).replace(os.sep, "/")
            sources.append(stat_source(src, f"{rel_dir}/", label,
                                       f"folder cannot be listed: {error.strerror or error}; its files are not read"))
    return sorted(sources, key=lambda s: s.relpath)


def find_sources(src, split, classes):
    list_path = os.path.join(src, f"{split}_list.txt")
    split_dir = os.path.join(src, split)
    if os.path.isfile(list_path):
        if os.path.isdir(split_dir):
            print(f"{split}: using {list_path} (it wins over {split_dir}/)", file=sys.stderr)
        return sources_from_list(src, list_path, len(classes))
    if os.path.isdir(split_dir):
        return sources_from_folder(src, split, {name: i for i, name in enumerate(classes)})
    raise ToolError(f"no {split} split in {src}: neither {split}/ nor {split}_list.txt exists "
                     f"(choose splits with --splits)")


# ---------------------------------------------------------------------------------------------------- output folder

def run_identity(args, src):
    """Everything that decides the bytes of the output; a rerun with the same identity resumes."""
    return {"format_version": FORMAT_VERSION, "source": src,
            "options": {"splits": args.splits, "max_count": args.max_count, "max_size": args.max_size,
                        "max_side": args.max_side, "quality": args.quality, "seed": args.seed}}


def identity_difference(old, new):
    if old.get("format_version") != new["format_version"]:
        return f"format_version {old.get('format_version')} vs {new['format_version']}"
    if old.get("source") != new["source"]:
        return f"source {old.get('source')} vs {new['source']}"
    old_options = old.get("options", {})
    return ", ".join(f"{key} {old_options.get(key)!r} vs {value!r}" for key, value in new["options"].items()
                     if old_options.get(key) != value)


def our_files(out):
    """Names in OUT that this tool writes (other files are never touched)."""
    return sorted(name for name in os.listdir(out) if OUR_FILE.match(name) or name == STATE_DIR)


def previous_identity(run_file):
    try:
        with open(run_file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: treated like a different run


def remove_temporary_files(out, state):
    """Temporary files of a killed run (NAME.<pid>.tmp): never complete, never reused."""
    for folder in (out, state):
        for name in os.listdir(folder):
            match = OUR_FILE.match(name)
            if (match and match.group(3)) or (folder == state and name.endswith(".tmp")):
                os.remove(os.path.join(folder, name))


LOCK_FILE = ".make_shards.lock"  # in OUT, never removed: one run at a time per OUT


def lock_out(out):
    """Takes OUT's lock for the rest of this process (released by the kernel when it ends, even by SIGKILL);
    ToolError naming the holder when another run has it. Returns the open lock file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ToolError(f"OUT {out} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, LOCK_FILE), "a+")
    except OSError as exc:
        raise ToolError(f"cannot write to OUT {out}: {exc}") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ToolError(f"OUT {out} is being written by another make_shards run (pid {holder}); wait for it to "
                        "finish or choose another OUT") from None
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    except OSError as exc:  # a full disk: name the file, whose write names none
        raise named(exc, lock.name) from None
    return lock


def prepare_out(out, identity, overwrite):
    """Creates OUT and records this run in it. Output of the same run (same source and options) is resumed;
    output of a different or unknown run is an error, or with --overwrite is deleted first."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ToolError(f"OUT {out} exists and is not a directory")
    state = os.path.join(out, STATE_DIR)
    run_file = os.path.join(state, "run.json")
    try:
        os.makedirs(out, exist_ok=True)
        previous = previous_identity(run_file)
        leftovers = our_files(out)
        shard_files = [name for name in leftovers if name != STATE_DIR]  # a state folder alone holds no output
        if previous is None and shard_files:
            conflict = f"shard files of an unknown run ({shard_files[0]}, ...)"
        elif previous is not None and previous != identity:
            conflict = f"shards of a different run ({identity_difference(previous, identity) or 'unreadable'})"
        else:
            conflict = None
        if conflict and not overwrite:
            raise ToolError(f"OUT {out} holds {conflict}; pass --overwrite to replace them or choose another OUT")
        if conflict:
            for name in leftovers:
                path = os.path.join(out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        os.makedirs(state, exist_ok=True)
        remove_temporary_files(out, state)
        write_atomic(run_file, json.dumps(identity, indent=1).encode())
        # Until this run ends OUT is not a complete conversion; the manifest's presence says that it is.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, "manifest.json"))
    except OSError as exc:
        raise ToolError(f"cannot write to OUT {out}: {exc}") from None
    return state


# ---------------------------------------------------------------------------------------------------- phase 1: check

class CheckJournal:
    """Append-only log of check results in OUT/.make_shards/check-<split>.jsonl, keyed by path, size and mtime,
    so a restarted run re-checks only files it has not seen (or that changed since)."""

    def __init__(self, path):
        self.known = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        relpath, size, mtime_ns, *check = json.loads(line)
                    except ValueError:
                        continue  # the line a killed run was writing: that file is simply checked again
                    self.known[relpath] = (size, mtime_ns, Check(*check))
        self.path = path
        self.file = open(path, "a", encoding="utf-8")
        self.file.write("\n")  # ends a torn last line, so it cannot swallow the first new record

    def lookup(self, source):
        entry = self.known.get(source.relpath)
        if entry and entry[:2] == (source.size, source.mtime_ns):
            return entry[2]
        return None

    def record(self, source, check):
        try:
            self.file.write(json.dumps([source.relpath, source.size, source.mtime_ns, *check]) + "\n")
        except OSError as exc:  # a full disk: name the journal, whose buffered write names no file
            raise named(exc, self.path) from None

    def close(self):
        try:
            self.file.close()
        except OSError as exc:
            raise named(exc, self.path) from None


class Progress:
    """tqdm bar in images with the source MB/s alongside."""

    def __init__(self, desc, total):
        self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        self.bytes = 0
        self.start = time.monotonic()

    def update(self, images, nbytes):
        self.bytes += nbytes
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.bytes / 1e6 / elapsed:.1f} MB/s", refresh=False)
        self.bar.update(images)

    def close(self):
        self.bar.close()


def die_with_parent(parent_pid):
    """Pool initializer. Pool workers of a SIGKILLed tool would otherwise live on, blocked forever, and may still
    be finishing a shard when the tool is run again; the kernel kills them with their parent instead."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1  # from <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class Workers:
    """`--workers` processes; with one worker everything runs in this process (no pickling, plain tracebacks)."""

    def __init__(self, count):
        self.count = count
        self.pool = None
        if count > 1:
            self.pool = multiprocessing.Pool(count, initializer=die_with_parent, initargs=(os.getpid(),))

    def imap(self, function, items, ordered=True):
        if self.pool is None:
            return map(function, items)
        if ordered:
            # Each chunk costs the parent about a millisecond of hand-offs, which on a machine with as many workers
            # as cores is taken from the workers; chunks of up to 64 images (a few per worker on small inputs, for
            # balance) keep that under 2% and cost at most a chunk of imbalance at the end.
            return self.pool.imap(function, items, max(1, min(64, len(items) // (self.count * 4))))
        return self.pool.imap_unordered(function, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def check_sources(split, sources, journal, workers):
    """Phase 1: one Check per source, in source order."""
    checks = [None] * len(sources)
    todo = []
    for i, source in enumerate(sources):
        if source.problem:
            checks[i] = Check("skipped", source.problem, 0, 0)
        else:
            checks[i] = journal.lookup(source)
            if checks[i] is None:
                todo.append(i)
    progress = Progress(f"check {split}", len(todo))
    try:
        for i, check in zip(todo, workers.imap(check_file, [sources[i].path for i in todo])):
            checks[i] = check
            journal.record(sources[i], check)
            progress.update(1, sources[i].size)
    finally:
        progress.close()  # ends the bar's line, so that an error message starts on its own
    return checks


# ---------------------------------------------------------------------------------------------------- phase 2: plan

def needs_downscale(check, max_side):
    return target_side(check.width, check.height, max_side) is not None


def planned_bytes(source, check, max_side):
    """Tar bytes a sample will take; re-encoded images are estimated from the source size (scaled by area when
    downscaled), the rest is exact."""
    data = source.size
    side = target_side(check.width, check.height, max_side)
    if side:
        data = max(1, int(data * (side / max(check.width, check.height)) ** 2))
    return SAMPLE_OVERHEAD + data + (-data % BLOCK)


def count_shards(sample_bytes, max_count, max_size):
    """Fewest shards such that equal-count shards (counts differ by at most one) respect both limits; a single
    sample larger than --max-size gets a shard to itself. Found by bisection, so for sizes that do not grow
    evenly with the count the answer may be a few shards above the minimum, never over the limits."""
    n = len(sample_bytes)
    fewest = math.ceil(n / max_count)
    if max_size is None:
        return fewest
    prefix = list(itertools.accumulate(sample_bytes, initial=0))
    budget = max_size - 2 * BLOCK - RECORD  # the end-of-archive blocks and record padding come on top

    def fits(shards):
        bounds = [j * n // shards for j in range(shards + 1)]
        return all(prefix[end] - prefix[start] <= budget or end - start == 1
                   for start, end in zip(bounds, bounds[1:]))

    low = max(fewest, math.ceil(prefix[-1] / max(budget, 1)))
    if low >= n or fits(low):
        return min(low, n)
    high = n  # one sample per shard always fits
    while high - low > 1:  # invariant: `low` does not fit, `high` does
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def plan_shards(split, sources, checks, args, out, state):
    """Shuffles the good samples with the seeded permutation and cuts them into shard tasks."""
    good = [i for i, check in enumerate(checks) if check.status != "skipped"]
    # Seeding with a string is stable across Python versions and platforms (it is hashed with SHA-512).
    random.Random(f"make_shards:{args.seed}:{split}").shuffle(good)
    sizes = [planned_bytes(sources[i], checks[i], args.max_side) for i in good]
    n = len(good)
    num_shards = count_shards(sizes, args.max_count, args.max_size) if n else 0
    tasks = []
    for shard in range(num_shards):
        samples = []
        for position in range(shard * n // num_shards, (shard + 1) * n // num_shards):
            source, check = sources[good[position]], checks[good[position]]
            reencode = check.status == "fixed" or needs_downscale(check, args.max_side)
            samples.append(PlannedSample(f"{split}_{position:08d}", source.relpath, source.path, source.label,
                                         source.size, source.mtime_ns, reencode))
        name = shard_name(split, shard)
        plan = {"format_version": FORMAT_VERSION, "quality": args.quality, "max_side": args.max_side,
                "samples": [(s.key, s.relpath, s.label, s.size, s.mtime_ns, s.reencode) for s in samples]}
        tasks.append(ShardTask(out, name, os.path.join(state, f"{name}.json"), hash_json(plan), samples,
                               args.quality, args.max_side))
    return tasks


def hash_json(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- phase 2: write

def remove_stale_shards(out, state, split, num_shards):
    """Removes shards of this split (with their records) beyond the current plan, left by an earlier run of the
    same command whose input had more samples."""
    for folder, pattern in ((out, OUR_FILE), (state, re.compile(r"^(train|val)-(\d{6})\.json$"))):
        for name in os.listdir(folder):
            match = pattern.match(name)
            if match and match.group(1) == split and int(match.group(2)) >= num_shards:
                os.remove(os.path.join(folder, name))


def write_shards(split, tasks, workers):
    """Phase 2: writes (or reuses) every shard; returns their completion records in shard order and how many
    were reused."""
    progress = Progress(f"write {split}", sum(len(t.samples) for t in tasks))
    source_bytes = {f"{t.name}.tar": sum(s.size for s in t.samples) for t in tasks}
    records, reused = {}, 0
    try:
        for record in workers.imap(write_shard, tasks, ordered=False):
            records[record["tar"]] = record
            reused += record["reused"]
            progress.update(record["samples"], source_bytes[record["tar"]])
    finally:
        progress.close()  # ends the bar's line, so that an error message starts on its own
    return [records[f"{t.name}.tar"] for t in tasks], reused


# ---------------------------------------------------------------------------------------------------- run

def split_summary(sources, checks, records, num_classes):
    class_counts = [0] * num_classes
    fixed, skipped = [], []
    for source, check in zip(sources, checks):
        if check.status == "skipped":
            skipped.append({"path": source.relpath, "reason": check.reason})
            continue
        class_counts[source.label] += 1
        if check.status == "fixed":
            fixed.append({"path": source.relpath, "reason": check.reason})
    shards = [{key: r[key] for key in SHARD_ENTRY} for r in records]
    summary = {"found": len(sources), "samples": sum(r["samples"] for r in records), "class_counts": class_counts,
               "shards": shards, "fixed": fixed, "skipped": skipped}
    # Counts must add up: every file found is either stored or listed as skipped.
    if not (summary["found"] == summary["samples"] + len(skipped) == sum(class_counts) + len(skipped)):
        raise ToolError(f"counts do not add up: found {summary['found']}, stored {summary['samples']}, "
                           f"skipped {len(skipped)}, per class {sum(class_counts)}")
    return summary


def convert_split(split, sources, classes, args, out, state, workers):
    start = time.monotonic()
    journal = CheckJournal(os.path.join(state, f"check-{split}.jsonl"))
    try:
        checks = check_sources(split, sources, journal, workers)
    finally:
        journal.close()
    checked = time.monotonic()
    tasks = plan_shards(split, sources, checks, args, out, state)
    remove_stale_shards(out, state, split, len(tasks))
    planned = time.monotonic()
    records, reused = write_shards(split, tasks, workers)
    make_durable(out, records)
    summary = split_summary(sources, checks, records, len(classes))
    end = time.monotonic()
    elapsed = max(end - start, 1e-6)
    source_mb = sum(s.size for s in sources) / 1e6
    # The phase times let benchmarks/shards.py see how each phase scales with --workers.
    print(f"{split}: {summary['found']} found, {summary['samples']} stored ({len(summary['fixed'])} fixed), "
          f"{len(summary['skipped'])} skipped; {len(records)} shards ({reused} reused), "
          f"{sum(r['bytes'] for r in records) / 1e6:.1f} MB; {elapsed:.1f} s, "
          f"{len(sources) / elapsed:.0f} img/s, {source_mb / elapsed:.1f} MB/s "
          f"(check {checked - start:.3f} s, write {end - planned:.3f} s)")
    return summary


def report_skipped(manifest, manifest_path, skip_bad):
    skipped = [item for s in manifest["splits"].values() for item in s["skipped"]]
    for item in skipped[:10]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more", file=sys.stderr)
    if skipped and not skip_bad:
        print(f"{len(skipped)} inputs were skipped (unreadable, undecodable or unusable), everything else is written; "
              f"they are listed with the reason under splits.<split>.skipped in {manifest_path}; pass --skip-bad to "
              f"accept this", file=sys.stderr)
        return 1
    return 0


def report_empty_classes(manifest, allow_empty):
    """Names the classes without a sample in each split on stderr; 1 when train has any (a class the model can
    never learn), unless allowed."""
    empty_in_train = False
    for split, summary in manifest["splits"].items():
        empty = [name for name, count in zip(manifest["classes"], summary["class_counts"]) if count == 0]
        if empty:
            shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            print(f"{split}: {len(empty)} classes have no sample: {shown}", file=sys.stderr)
            empty_in_train = empty_in_train or split == "train"
    if empty_in_train and not allow_empty:
        print("a class without train samples cannot be learned; fix the source or pass --allow-empty-classes",
              file=sys.stderr)
        return 1
    return 0


def run(args):
    src = os.path.abspath(args.src)
    out = os.path.abspath(args.out)
    if name_problem(src):  # recorded in manifest.json as the source
        raise ToolError(f"SRC '{escaped(src)}': {name_problem(src)}; manifest.json records it, rename it")
    if not os.path.isdir(src):
        raise ToolError(f"SRC {src} is not a directory")
    for split in args.splits:
        if (out + os.sep).startswith(os.path.join(src, split) + os.sep):
            raise ToolError(f"OUT {out} must not be inside {os.path.join(src, split)}")
    classes = find_classes(src)
    sources = {split: find_sources(src, split, classes) for split in args.splits}
    identity = run_identity(args, src)
    lock = lock_out(out)  # noqa: F841  (held until the process ends)
    state = prepare_out(out, identity, args.overwrite)
    manifest = dict(identity, classes=classes, splits={})
    with Workers(args.workers) as workers:
        for split in args.splits:
            manifest["splits"][split] = convert_split(split, sources[split], classes, args, out, state, workers)
    write_atomic(os.path.join(out, CLASSES_FILE), "".join(f"{name}\n" for name in classes).encode())
    manifest_path = os.path.join(out, MANIFEST)
    write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    fsync_dir(out)
    status = report_skipped(manifest, manifest_path, args.skip_bad)
    return max(status, report_empty_classes(manifest, args.allow_empty_classes))


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (ToolError, OSError) as exc:  # OSError: disk full, permissions, a source changed while converting
        print(f"make_shards.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_shards.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
