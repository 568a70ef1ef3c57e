"""Shard integrity off the hot path: each shard's sha256 is checked against the manifest in a background thread.

Why a thread and not the readers: a shard overwritten in place at the same size, or with a few flipped bytes,
passes the size check at start-up, and most such JPEGs still decode (on the shared photographs, 8 flipped bytes
made only 7 of 200 fail any decoder), so only the checksum tells. Hashing runs at disk speed (hashlib and
file reads release the GIL; the thread runs at a lower CPU priority), while the loader keeps delivering.

Each process has one verifier, shared by its loaders. A loader queues the shards of the range it reads (its own
range first when it starts an epoch), and callers ask `problem(shards)` (non-blocking) or `wait(shards)`
(blocking). Shards found intact are recorded in a cache folder, keyed by the file's identity (device, inode,
size, modification time) and the manifest's sha256, so a shard is hashed once per machine, not once per rank and
run: in epoch e+1 a rank reads the range another rank verified in epoch e. Changing a file changes its
modification time; to hash everything again, delete the folder (or pass a fresh one).

A damaged shard gets one line naming it and, from its member checksums (shards/format.py), the sample
whose bytes changed.
"""
import collections
import contextlib
import hashlib
import io
import os
import threading

from shards import storage
from shards.errors import ShardError, StorageError
from shards.files import user_cache_dir
from shards.format import BLOCK, member_checksum, member_header_ok
from shards.read import read_checksums, read_index

MODES = ("background", "before", "off")
_LOW_PRIORITY = 10  # nice increment of the hashing thread: the loader's decoding comes first


def default_record_dir():
    return user_cache_dir("verified-shards")


class ShardVerifier:
    """Hashes shards in one daemon thread, in the order they are queued (urgent ones first)."""

    def __init__(self, record_dir):
        self.record_dir = record_dir
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._results = {}  # shard path -> None (intact) or the message naming the damage
        self._queued = set()
        self._thread = None

    def submit(self, shards, urgent=False):
        """Queues the shards not yet verified or queued; urgent ones go before everything already queued."""
        with self._cond:
            fresh = [s for s in shards if s.path not in self._results and s.path not in self._queued and s.sha256]
            if urgent:
                # Already-queued shards of this request move to the front too, in the caller's order.
                wanted = {s.path for s in shards}
                rest = [s for s in self._queue if s.path not in wanted]
                moved = [s for s in shards if s.path in self._queued]
                self._queue = collections.deque([*fresh, *moved, *rest])
            else:
                self._queue.extend(fresh)
            self._queued.update(s.path for s in fresh)
            if self._queue and (self._thread is None or not self._thread.is_alive()):
                _import_what_the_thread_uses()
                self._thread = threading.Thread(target=self._run, name="shard-verifier", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def problem(self, shards):
        """The message of the first damaged shard among `shards` found so far, else None (does not wait)."""
        with self._cond:
            for shard in shards:
                message = self._results.get(shard.path)
                if message:
                    return message
        return None

    def wait(self, shards):
        """Verifies `shards` first if needed and blocks until they are done; the first problem, else None."""
        self.submit(shards, urgent=True)
        with self._cond:
            self._cond.wait_for(lambda: all(s.path in self._results or not s.sha256 for s in shards))
        return self.problem(shards)

    def _run(self):
        _lower_thread_priority()
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    return
                shard = self._queue.popleft()
            try:
                message = self._verify(shard)
            except Exception as exc:  # never leave a waiter without an answer
                message = f"shard {shard.path} could not be verified: {type(exc).__name__}: {exc}"
            with self._cond:
                self._queued.discard(shard.path)
                self._results[shard.path] = message
                self._cond.notify_all()

    def _verify(self, shard):
        """None when the shard hashes to the manifest's sha256 (or was recorded so), else the message."""
        try:
            record = self._record_path(shard)
            if record and os.path.exists(record):
                return None
            digest = storage.sha256(shard.path, shard.bytes)
        except StorageError as exc:
            return str(exc)
        except OSError as exc:
            return f"shard {shard.path} is unreadable: {exc}"
        if digest != shard.sha256:
            return (f"shard {shard.path} does not match the sha256 in its manifest ({damage_report(shard)}): "
                    "damaged or replaced after tools/make_shards.py wrote it; re-run tools/make_shards.py")
        if record:
            with contextlib.suppress(OSError):  # an unwritable cache only means hashing again next time
                os.makedirs(self.record_dir, exist_ok=True)
                with open(record, "x"):
                    pass
        return None

    def _record_path(self, shard):
        if not self.record_dir:
            return None
        identity = f"{storage.identity(shard.path)}:{shard.sha256}"
        return os.path.join(self.record_dir, hashlib.sha256(identity.encode()).hexdigest())


def damage_report(shard):
    """Which sample of a shard whose sha256 differs changed: from its member checksums when the manifest names
    them, else the first sample that fails to decode; says so when it cannot tell."""
    if shard.checksums_path and shard.index_path:
        try:
            return _changed_member(shard)
        except (OSError, ValueError) as exc:
            return f"its member checksums or index are unreadable too: {exc}"
        except RuntimeError as exc:  # ShardError from read_index
            return str(exc)
    return _undecodable_member(shard)


def _changed_member(shard):
    checksums = read_checksums(shard)
    places = {name: (offset, size) for sample in read_index(shard) for offset, size, name in sample.values()}
    with storage.RangeReader(shard.path) as reader:
        for name, expected in checksums:
            if name not in places:
                return f"member {name} of {storage.basename(shard.checksums_path)} is not in its index"
            offset, size = places[name]
            data = reader.pread(size, offset)
            if member_checksum(data) != expected:
                return f"sample {name.split('.', 1)[0]}: member {name} changed"
            header = reader.pread(BLOCK, offset - BLOCK)
            if not member_header_ok(header, size):
                return f"sample {name.split('.', 1)[0]}: the tar header of member {name} changed"
    return "every member's data and header is intact: the damage is in the tar's padding"


def _import_what_the_thread_uses():
    """Imports, in the calling thread, every module the hashing thread would otherwise import for the first time
    (PIL and its format plugins, the shard reader). While a thread imports a module it holds Python's lock of that
    module; a loader worker forked in that moment inherits the lock held by a thread it does not have, and hangs at
    its own first import of the module (PIL's plugins, at its first decode), which a damaged shard found during
    an epoch's start used to do."""
    from PIL import Image

    from . import shard_read  # noqa: F401

    Image.init()  # every format plugin, as Image.open would import them


def _undecodable_member(shard):
    from PIL import Image

    from .shard_read import read_samples

    try:
        for key, jpeg, _ in read_samples(shard, 0, shard.samples):
            try:
                with Image.open(io.BytesIO(jpeg)) as image:
                    image.load()
            except Exception as exc:  # any decoder failure names the sample
                return f"sample {key} does not decode: {exc}"
    except ShardError as exc:
        return str(exc)
    return "no sample fails to decode, and the manifest names no member checksums to tell which changed"


def _lower_thread_priority():
    with contextlib.suppress(AttributeError, OSError):  # Linux: priorities are per thread
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LOW_PRIORITY)


_shared = {}


def shared_verifier(record_dir):
    """The process's verifier for `record_dir` (one hashing thread however many loaders ask)."""
    if record_dir not in _shared:
        _shared[record_dir] = ShardVerifier(record_dir)
    return _shared[record_dir]
