"""A conversion's output folder OUT: its lock, the identity of the run that writes it (a rerun of the same run
resumes), the removal of a killed run's temporary files, and the check journal in OUT/.make_shards/."""
import contextlib
import fcntl
import json
import os
import re
import shutil

from .errors import ConvertError
from .files import named, write_atomic
from .format import FORMAT_VERSION
from .imagecheck import Check

STATE_DIR = ".make_shards"  # run identity, check journal and shard completion records (kept after the run)
# Files this tool writes in OUT (with --overwrite, the only ones it deletes): shards, indexes, member checksums,
# classes.txt, manifest.json, and their temporary files (NAME.<pid>.tmp).
OUR_FILE = re.compile(r"^(?:(train|val)-(\d{6})\.(?:tar|idx|crc32)|manifest\.json|classes\.txt)(\.\d+\.tmp)?$")


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


def lock_out(out, lock_file=LOCK_FILE, tool="make_shards"):
    """Takes OUT's lock (`lock_file` in it) for the rest of this process (released by the kernel when it ends, even
    by SIGKILL); ConvertError naming the holder when another run of `tool` has it. Returns the open lock file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConvertError(f"OUT {out} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
        lock = open(os.path.join(out, lock_file), "a+")
    except OSError as exc:
        raise ConvertError(f"cannot write to OUT {out}: {exc}") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ConvertError(f"OUT {out} is being written by another {tool} run (pid {holder}); wait for it to "
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
        raise ConvertError(f"OUT {out} exists and is not a directory")
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
            raise ConvertError(f"OUT {out} holds {conflict}; pass --overwrite to replace them or choose another OUT")
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
        raise ConvertError(f"cannot write to OUT {out}: {exc}") from None
    return state


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
