"""The inputs of a conversion: the class list and every file of a split, from SRC/<split>/<wnid>/ folders or
SRC/<split>_list.txt list files (see tools/make_shards.py), and the names the outputs can store."""
import io
import os
import re
import sys
from array import array
from collections import namedtuple

import numpy as np

from .errors import ConvertError

SPLITS = ("train", "val")

# One input file. label is None and problem is set when the file is found but cannot be a sample (for example
# outside any class folder, or listed but missing); such files are reported as skipped without being opened.
Source = namedtuple("Source", "relpath path label size mtime_ns problem")


class SourceTable:
    """The Sources of a split in a few flat arrays, one Source made on demand by `table[i]`: as a list of Source
    tuples every file cost about 360 bytes of the main process (and of each worker it forks) for the whole run,
    here about 70 (its relpath in UTF-8, an offset, label, size and mtime). Paths are not stored: a file's path
    is SRC joined with its relpath, as stat_source makes it. The few files that cannot be samples (a problem set)
    are kept as they are, with their path, which for an unstorable name is not SRC + the escaped relpath.
    `labels`, `sizes` and `mtimes` are numpy views of the arrays: read them once the table is complete."""

    def __init__(self, src):
        self.src = src
        self.prefix = os.path.join(src, "")  # + a relpath (never absolute): os.path.join(src, relpath), quicker
        self._names = bytearray()  # every relpath, UTF-8, one after another
        self._ends = array("q")  # where each relpath ends in _names
        self._labels = array("i")  # -1: none (outside any class folder)
        self._sizes = array("q")
        self._mtimes = array("q")
        self._with_problem = {}  # index -> Source, for the files that cannot be samples

    def append(self, source):
        if source.problem:
            self._with_problem[len(self._ends)] = source
        self._names += source.relpath.encode("utf-8")
        self._ends.append(len(self._names))
        self._labels.append(-1 if source.label is None else source.label)
        self._sizes.append(source.size)
        self._mtimes.append(source.mtime_ns)

    def extend(self, sources):
        for source in sources:
            self.append(source)

    def __len__(self):
        return len(self._ends)

    def relpath(self, i):
        return self._names[self._ends[i - 1] if i else 0:self._ends[i]].decode("utf-8")

    def path(self, i):
        source = self._with_problem.get(i)
        return source.path if source else self.prefix + self.relpath(i)

    def __getitem__(self, i):
        if not 0 <= i < len(self._ends):
            raise IndexError(f"source {i} of {len(self._ends)}")
        source = self._with_problem.get(i)
        if source:
            return source
        relpath = self.relpath(i)
        return Source(relpath, self.prefix + relpath, self._labels[i], self._sizes[i], self._mtimes[i], None)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def problems(self):
        """{index: problem} of the files that cannot be samples."""
        return {i: source.problem for i, source in self._with_problem.items()}

    @property
    def labels(self):
        """Every label as a numpy int32 array (a view: no copy); -1 for none."""
        return np.frombuffer(self._labels, dtype=np.int32) if len(self) else np.zeros(0, np.int32)

    @property
    def mtimes(self):
        """Every mtime in ns as a numpy int64 array (a view: no copy)."""
        return np.frombuffer(self._mtimes, dtype=np.int64) if len(self) else np.zeros(0, np.int64)

    @property
    def sizes(self):
        """Every size in bytes as a numpy int64 array (a view: no copy)."""
        return np.frombuffer(self._sizes, dtype=np.int64) if len(self) else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------------- names

# What no name may hold, because the manifest (JSON in UTF-8), classes.txt and the check journal cannot store it or
# would be split by it: surrogates (os.fsdecode's stand-ins for bytes that are not UTF-8), control characters
# (newline, tab, DEL, C1) and Unicode's line and paragraph separators, on which str.splitlines() splits. These are
# exactly the Unicode categories Cs, Cc, Zl and Zp, spelled as one regular expression: it scans a path in C, where
# unicodedata.category would be one Python call per character of 1.3 million ImageNet paths.
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
    """ConvertError naming the folder (escaped) when its name, which becomes a label, cannot be stored."""
    problem = name_problem(name)
    if problem:
        raise ConvertError(f"class folder '{escaped(path)}': {problem}; a class name is stored in manifest.json and "
                        "classes.txt, rename the folder")


# ---------------------------------------------------------------------------------------------------- input

def list_file_lines(list_path):
    """(line number, text) of a list file; ConvertError naming the line that is not UTF-8."""
    with open(list_path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise ConvertError(f"{list_path}:{number}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); list files are "
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
            raise ConvertError(f"{where}: expected 'relative/path label', got {line!r}")
        relpath, label_text = fields
        if not re.fullmatch(r"\d+", label_text):
            raise ConvertError(f"{where}: label {label_text!r} is not a non-negative integer")
        if os.path.isabs(relpath):
            raise ConvertError(f"{where}: path {relpath!r} must be relative to SRC")
        relpath = os.path.normpath(relpath).replace(os.sep, "/")
        if relpath in first_line:
            raise ConvertError(f"{where}: {escaped(relpath)} is already listed on line {first_line[relpath]}")
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
            raise ConvertError(f"no classes: {list_path} lists no files")
        return class_names_from_list(entries)
    train_dir = os.path.join(src, "train")
    if not os.path.isdir(train_dir):
        raise ConvertError(f"no classes: {src} has neither train/ nor train_list.txt")
    wnids = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    if not wnids:
        raise ConvertError(f"no classes: {train_dir} has no class folders")
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
    sources = SourceTable(src)
    for relpath, label, number in read_list_file(list_path):
        if label >= num_classes:
            raise ConvertError(f"{list_path}:{number}: label {label} out of range (train has {num_classes} classes)")
        sources.append(stat_source(src, relpath, label))
    return sources


def class_folder_sources(src, entry, label):
    """The Sources under one class folder (os.DirEntry), recursively, sorted by relpath."""
    # A folder that cannot be listed (no read permission, an I/O error) is an input that is skipped with its
    # reason, like an undecodable file: os.walk alone would pass over it in silence.
    sources, unlistable = [], []
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


def sources_from_folder(src, split, class_index):
    """Every file under SRC/<split>/<wnid>/ (recursively) is an input; files outside class folders are inputs
    too, reported as skipped, so that nothing in the split is ignored silently. In relpath order."""
    split_dir = os.path.join(src, split)
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    for entry in entries:  # every class folder is checked before any is listed
        if entry.is_dir():
            check_class_folder(entry.path, entry.name)
            if entry.name not in class_index:
                raise ConvertError(f"{split_dir}/{entry.name}: class {entry.name} is not among the train classes")
    loose = {entry.name: stat_source(src, f"{split}/{entry.name}", None, "not inside a class folder")
             for entry in entries if not entry.is_dir()}

    # The relpaths of a class folder all start with "<split>/<name>/" and no other entry's do (names hold no
    # slash), so each folder is one run of the split's relpath order: runs ordered by that prefix (a loose file
    # by its own relpath) and each sorted within give the order of one sort over all files, while only one
    # folder's Sources exist as Python objects at a time.
    def run_key(entry):
        return loose[entry.name].relpath if entry.name in loose else f"{split}/{entry.name}/"

    sources = SourceTable(src)
    for entry in sorted(entries, key=run_key):
        if entry.name in loose:
            sources.append(loose[entry.name])
        else:
            sources.extend(class_folder_sources(src, entry, class_index[entry.name]))
    return sources


def find_sources(src, split, classes):
    list_path = os.path.join(src, f"{split}_list.txt")
    split_dir = os.path.join(src, split)
    if os.path.isfile(list_path):
        if os.path.isdir(split_dir):
            print(f"{split}: using {list_path} (it wins over {split_dir}/)", file=sys.stderr)
        return sources_from_list(src, list_path, len(classes))
    if os.path.isdir(split_dir):
        return sources_from_folder(src, split, {name: i for i, name in enumerate(classes)})
    raise ConvertError(f"no {split} split in {src}: neither {split}/ nor {split}_list.txt exists "
                     f"(choose splits with --splits)")
