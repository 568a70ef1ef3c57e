"""Where shard files live and how their bytes are fetched: a local folder (or file://), s3:// or http(s)://.

Remote reads go through fsspec (s3fs for s3://, fsspec's aiohttp-based HTTP filesystem for http(s)://), the
file-system layer that pandas, Dask and Hugging Face datasets read object storage with: one well-kept library
for both schemes, with ranged reads, the standard AWS configuration (credentials, region, AWS_ENDPOINT_URL for
S3-compatible stores) through botocore, and instances that survive the fork of DataLoader workers. boto3 alone
would cover S3 only; AWS's s3torchconnector S3 only, and through its own dataset classes.

Every remote request is retried with exponential back-off on errors that may pass (connection refused or reset,
time-outs, HTTP 5xx, 429); a missing object (404), a refusal (401/403) or a request that still fails after
ATTEMPTS tries raises StorageError: one line naming the URL. The clients' own retries are turned off so that this
module alone decides how long a dead server is waited for.

A server that stops sending, before its headers or mid-body, is waited for READ_TIMEOUT seconds per try and
STALL_LIMIT seconds of silence per read in all, retries and back-off included (time in which data arrives does not
count): then StorageError names the URL and the seconds waited. The clients' own read time-outs start again with
every try, so tries alone would hold a read from a stalled server ATTEMPTS * READ_TIMEOUT seconds and more.

Bodies are streamed and counted, never trusted to end: a ranged read takes at most the bytes it asked for; an
answer with the whole object at most the size its manifest records (expect_sizes), else UNSIZED_OBJECT_MAX_BYTES;
read_bytes of a file whose size nothing records (manifest.json) at most SMALL_FILE_MAX_BYTES. A server that
sends (or announces) more is named in a StorageError when the cap is passed, with no more than the cap held.

Servers that ignore HTTP Range (they answer a ranged GET with 200 and the whole object, as `python -m http.server`
and many simple static servers do) are detected by the answer's status, once per server and process (and
probed up front by probe_ranges): their objects are then read whole, in one request, and the readers take every
range they need from that copy (fetch, RangeReader), so any static file server works.
"""
import asyncio
import concurrent.futures
import hashlib
import logging
import os
import random
import threading
import time
import urllib.parse

from .errors import ShardError, StorageError

REMOTE_SCHEMES = ("s3", "http", "https")
ATTEMPTS = 6            # tries per request before a transient error is given up on
BACKOFF_FIRST = 0.25    # seconds before the second try; doubled each time, with +-25% jitter
BACKOFF_CAP = 4.0
# The time-outs and caps below are read when used, so a test (or a caller) may change them at run time.
CONNECT_TIMEOUT = 10    # seconds to open a connection
# Seconds without a byte from the server (for the headers, or mid-body) before a try is given up and retried. An
# object store answers in well under a second, even when it refuses with 503 SlowDown: 30 s is patience to spare.
READ_TIMEOUT = 30
# Seconds of silence, summed over the tries of one read and their back-off, before the read fails: the longest a
# stalled server holds a read (two tries of READ_TIMEOUT). Time in which data arrives is not counted, so a long
# download that breaks off once is still tried again.
STALL_LIMIT = 60
# The most read_bytes takes of a file whose size nothing records: manifest.json (and side files of manifests that
# predate their sizes). ImageNet's manifest is about 0.7 MB with make_shards' default 1,000 samples a shard
# (1,282 + 50 shards) and 1.1 MB with 2,048 + 64 shards; 64 MiB is some 60 times that, and still holds a listing
# of 100,000 fixed or skipped images (about 12 MB).
SMALL_FILE_MAX_BYTES = 64 << 20
# The most held of a whole object (from a server that ignores Range) whose size no manifest read in this process
# records: a shard of make_shards' default 1,000 ImageNet samples is about 110 MB.
UNSIZED_OBJECT_MAX_BYTES = 4 << 30
CHUNK = 16 << 20        # bytes per request when a whole object is copied or hashed
_PIECE = 1 << 20        # bytes taken from a connection at a time while a body is counted against its cap
_SIZE_QUERIES = 16      # concurrent size requests where a store cannot list (HTTP)

log = logging.getLogger(__name__)
_whole_object_servers = set()  # scheme://host:port of servers found to ignore Range in this process
_probed_servers = set()
_expected_sizes = {}  # URL -> its size in bytes as a manifest records it (expect_sizes)


def scheme_of(path):
    """'s3', 'http', 'https' for a URL, '' for a local path (file:// URLs are local)."""
    scheme = urllib.parse.urlsplit(str(path)).scheme.lower()
    return scheme if scheme in REMOTE_SCHEMES else ""


def is_remote(path):
    return scheme_of(path) != ""


def normalize(data):
    """A shard location as the readers use it: an absolute local path, or a URL without a trailing slash.
    ShardError naming the value for a scheme that no reader supports."""
    data = str(data)
    parts = urllib.parse.urlsplit(data)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return os.path.abspath(urllib.parse.unquote(parts.path))
    if scheme in REMOTE_SCHEMES:
        if not parts.netloc:
            raise ShardError(f"shard location {data} has no {'bucket' if scheme == 's3' else 'host'}")
        return data.rstrip("/")
    if "://" in data:
        raise ShardError(f"shard location {data}: scheme {scheme!r} is not supported (use a local folder, file://, "
                         f"s3:// or http(s)://)")
    return os.path.abspath(data)


def join(base, name):
    return f"{base}/{name}" if is_remote(base) else os.path.join(base, name)


def basename(path):
    return path.rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


# ----------------------------------------------------------------------------------------------- the clients

_clients = {}
_clients_lock = threading.Lock()


def _filesystem(scheme):
    """This process's fsspec file system for `scheme` (made after a fork, never inherited)."""
    key = (os.getpid(), scheme)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _make_filesystem(scheme)
        return _clients[key]


def _make_filesystem(scheme):
    try:
        import fsspec
    except ImportError as exc:
        raise StorageError(f"reading {scheme}:// needs fsspec: pip install 'fsspec[http]' s3fs") from exc
    if scheme == "s3":
        try:
            import s3fs  # noqa: F401  (fsspec finds it by name; imported here for a clear message)
        except ImportError as exc:
            raise StorageError("reading s3:// needs s3fs: pip install s3fs") from exc
        fs = fsspec.filesystem("s3", skip_instance_cache=True, config_kwargs={
            "retries": {"max_attempts": 1, "mode": "standard"},
            "connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT})
        fs.retries = 1  # s3fs's own retry loop: off, see the module docstring
        return fs
    import aiohttp
    # Only a backstop: every request of this module waits under its own _Patience, read when it is made.
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
    return fsspec.filesystem(scheme, skip_instance_cache=True, client_kwargs={"timeout": timeout})


def _key(path):
    """The path as the file system names it (s3fs drops the scheme)."""
    return path[len("s3://"):] if scheme_of(path) == "s3" else path


# ------------------------------------------------------------------------------------------ retries, errors

def _status(exc):
    for name in ("status", "status_code"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def _causes(exc):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def classify(exc):
    """'missing', 'denied', 'refused (<HTTP status>)' or 'transient': what an exception of a remote read means."""
    chain = _causes(exc)
    for cause in chain:
        status = _status(cause)
        if status in (401, 403):
            return "denied"
        if status == 404:
            return "missing"
        if status is not None and (status >= 500 or status in (408, 429)):
            return "transient"
        if status is not None and 400 <= status < 500:
            return f"refused ({status})"
    # fsspec's HTTP size query reports any failure as FileNotFoundError: a refused connection inside it is not
    # a missing object.
    if any(isinstance(c, (ConnectionError, TimeoutError)) or type(c).__name__.startswith(("ClientConnector",
           "ServerDisconnected", "EndpointConnection", "ConnectTimeout", "ReadTimeout")) for c in chain[1:]):
        return "transient"
    if isinstance(exc, PermissionError):
        return "denied"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    return "transient"


def _timed_out(exc):
    """Whether a failed try ended because the server sent nothing in time (connect, headers or body)."""
    return any(isinstance(c, (TimeoutError, asyncio.TimeoutError)) or type(c).__name__.startswith(
        ("ReadTimeout", "ConnectTimeout", "ConnectionTimeout")) for c in _causes(exc))


class _Patience:
    """How long one read may still wait for its server: each wait at most READ_TIMEOUT seconds, and STALL_LIMIT
    seconds of silence in all, summed over its tries: the wait that ended each failed try (since the try began or
    last received data) and the back-off before the next. Time in which data arrives is not counted, so a long
    download that breaks off is tried again; one that stalls every time fails after STALL_LIMIT seconds."""

    def __init__(self):
        self.spent = 0.0
        self.since = time.monotonic()

    def heard_from(self):
        """Data arrived (or a try begins): the current silence starts now."""
        self.since = time.monotonic()

    def try_failed(self):
        """The silence that ended a try counts as waited."""
        self.spent += time.monotonic() - self.since
        self.since = time.monotonic()

    def paused(self, seconds):
        """The back-off before the next try counts as waited."""
        self.spent += seconds

    def left(self):
        return STALL_LIMIT - self.spent - max(0.0, time.monotonic() - self.since)

    def wait(self):
        """Seconds the next wait may last."""
        return max(0.0, min(READ_TIMEOUT, self.left()))


def retrying(path, what, request):
    """request(patience) with retries and back-off on transient errors; StorageError naming `path` otherwise.
    `patience` (a _Patience) bounds every wait of the request: a read whose server sends nothing for STALL_LIMIT
    seconds, over all its tries, fails naming the seconds waited."""
    patience = _Patience()
    delay = BACKOFF_FIRST
    for attempt in range(1, ATTEMPTS + 1):
        try:
            patience.heard_from()
            return request(patience)
        except StorageError:
            raise
        except Exception as exc:  # the clients raise many types; classify() sorts them
            kind = classify(exc)
            detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            if kind == "missing":
                raise StorageError(f"{path} not found (404) while {what}", missing=True) from exc
            if kind == "denied":
                raise StorageError(f"{path}: access denied (403) while {what}; check the credentials "
                                   f"(AWS_ACCESS_KEY_ID/AWS_PROFILE) and the bucket policy") from exc
            if kind.startswith("refused"):
                raise StorageError(f"{path}: the server {kind} while {what}: {detail[:300]}") from exc
            pause = delay * random.uniform(0.75, 1.25)
            patience.try_failed()
            if attempt == ATTEMPTS or patience.left() <= pause:
                tries = f"{attempt} {'try' if attempt == 1 else 'tries'}"
                if _timed_out(exc):
                    raise StorageError(
                        f"{path}: read timeout while {what}: waited {patience.spent:.1f} s in all for data from the "
                        f"server ({tries}; a try waits at most READ_TIMEOUT = {READ_TIMEOUT:g} s for data, a read "
                        f"STALL_LIMIT = {STALL_LIMIT:g} s)") from exc
                raise StorageError(f"{path} could not be read while {what}: {tries} failed, the last "
                                   f"with {detail[:300]}") from exc
        time.sleep(pause)
        patience.paused(pause)
        delay = min(delay * 2, BACKOFF_CAP)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------- one streamed request

def _run(fs, function, *args, **kwargs):
    """function(*args, **kwargs), a coroutine function, run to its end on the event loop of the fsspec file system
    `fs` (its clients live there)."""
    from fsspec.asyn import sync
    return sync(fs.loop, function, *args, **kwargs)


async def _within(patience, function, *args, **kwargs):
    """await function(*args, **kwargs) for at most the patience's next wait: a request whose answer comes whole
    (a size, a listing)."""
    return await asyncio.wait_for(function(*args, **kwargs), patience.wait())


async def _http_answer(fs, path, headers):
    """(status, Content-Length or None, read(n), close()) of a GET of `path` from fsspec's aiohttp session."""
    session = await fs.set_session()
    response = await session.get(fs.encode_url(path), headers=headers, **fs.kwargs)
    try:
        if response.status == 404:
            raise FileNotFoundError(path)
        response.raise_for_status()
    except BaseException:
        response.close()
        raise
    return response.status, response.content_length, response.content.read, response.close


async def _s3_answer(fs, path, headers):
    """The same through s3fs's client: a GetObject."""
    bucket, key, version = fs.split_path(path)
    extra = {"VersionId": version} if version else {}
    answer = await fs._call_s3("get_object", Bucket=bucket, Key=key, **headers, **extra)
    body = answer["Body"]
    return answer["ResponseMetadata"]["HTTPStatusCode"], answer.get("ContentLength"), body.read, body.close


async def _read_answer(path, fs, answer, headers, cap, patience):
    """(status, body) of one GET, its body read in pieces and counted: StorageError as soon as it outgrows
    cap(status) = (bytes, what that is), with no more than that held."""
    await fs.set_session()  # the client itself (made once per process) is no wait for the server
    patience.heard_from()
    status, length, read, close = await asyncio.wait_for(answer(fs, path, headers), patience.wait())
    try:
        patience.heard_from()
        limit, which = cap(status)
        if length is not None and length > limit:
            raise StorageError(f"{path}: the server announces {length} bytes (Content-Length), more than {which}: "
                               "not read; the object is not the one expected, or the server misbehaves")
        pieces, received = [], 0
        while piece := await asyncio.wait_for(read(_PIECE), patience.wait()):
            received += len(piece)
            if received > limit:
                raise StorageError(f"{path}: the server sent more than {which}; reading stopped there: the "
                                   "object is not the one expected, or the server sends without end")
            pieces.append(piece)
            patience.heard_from()
        return status, b"".join(pieces)
    finally:
        close()  # after the whole body the connection is already back in the pool; otherwise it is dropped


def _get(path, span, cap, patience):
    """(HTTP status, body) of one GET of `path`, of its bytes span = (start, stop) or (None) all of it, from the
    store's own client, streamed under `cap` (see _read_answer) and `patience`."""
    scheme = scheme_of(path)
    headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
    answer = _s3_answer if scheme == "s3" else _http_answer
    return _run(_filesystem(scheme), _read_answer, path, _filesystem(scheme), answer, headers, cap, patience)


def expect_sizes(sizes):
    """Records {URL: size in bytes} as a manifest states them: an answer that holds a whole object is read no
    further than its recorded size (a server that ignores Range, or sends without end, is stopped there). Local
    paths and unknown sizes (None, -1) are left out."""
    _expected_sizes.update({path: int(size) for path, size in sizes.items()
                            if is_remote(path) and size is not None and int(size) >= 0})


def _whole_cap(path, total=None, fallback=None):
    """(bytes, what that is): the most an answer with the whole object `path` may hold: `total`, else its size as
    a manifest records it, else `fallback` (default: UNSIZED_OBJECT_MAX_BYTES)."""
    known = total if total is not None else _expected_sizes.get(path)
    if known is not None:
        return known, f"the {known} bytes of the whole object (its recorded size)"
    return fallback or (UNSIZED_OBJECT_MAX_BYTES, f"{UNSIZED_OBJECT_MAX_BYTES} bytes (UNSIZED_OBJECT_MAX_BYTES, "
                                                  "the cap for a whole object whose size no manifest records)")


def _small_file_cap():
    return SMALL_FILE_MAX_BYTES, (f"{SMALL_FILE_MAX_BYTES} bytes (SMALL_FILE_MAX_BYTES, the cap for a file whose "
                                  "size nothing records)")


# ------------------------------------------------------------------------------------------------ reading

def read_bytes(path, size=None):
    """The whole file (manifest, index, checksums: small files). Remote, at most `size` bytes (what its manifest
    records; default: as recorded with expect_sizes, else SMALL_FILE_MAX_BYTES): StorageError naming the URL when
    the server sends more."""
    if not is_remote(path):
        with open(path, "rb") as handle:
            return handle.read()
    cap = _whole_cap(path, size, fallback=_small_file_cap())
    return retrying(path, "reading it", lambda patience: _get(path, None, lambda status: cap, patience))[1]


def read_range(path, start, stop):
    """Bytes [start, stop) of the file; StorageError when the object ends before `stop`."""
    if stop <= start:
        return b""
    if not is_remote(path):
        with open(path, "rb", buffering=0) as handle:
            return os.pread(handle.fileno(), stop - start, start)
    offset, data = fetch(path, start, stop)
    return data[start - offset:stop - offset]


def _server(path):
    parts = urllib.parse.urlsplit(path)
    return f"{parts.scheme.lower()}://{parts.netloc}"


def fetch(path, start, stop, total=None):
    """(offset, data) of a remote file such that data holds its bytes [start, stop) from data[start - offset]: the
    range itself (offset = start), or from a server that ignores Range the whole object (offset 0), fetched
    without a Range header once the server is known to ignore it. StorageError when the object ends before
    `stop`, or when the server sends more than the range, or than `total` (the object's size; default: as its
    manifest records it) for the whole object."""
    return _fetch(path, start, stop, _whole_cap(path, total))


def _fetch(path, start, stop, whole):
    if _server(path) in _whole_object_servers:
        _, data = retrying(path, "reading it whole (its server ignores Range requests)",
                           lambda patience: _get(path, None, lambda status: whole, patience))
        return 0, _whole_object(path, data, start, stop)
    asked = (stop - start, f"the {stop - start} bytes asked for (bytes {start}-{stop - 1})")
    status, data = retrying(path, f"reading bytes {start}-{stop - 1}", lambda patience: _get(
        path, (start, stop), lambda status: whole if status == 200 else asked, patience))
    if status != 200:  # 206: the range
        if len(data) < stop - start:
            raise StorageError(f"{path}: asked for bytes {start}-{stop - 1}, received {len(data)} bytes: the "
                               "object ends early, it is shorter than its manifest says")
        return start, data
    # 200: the whole object instead of the range, unless it is just the range (from its first byte).
    if not (start == 0 and len(data) == stop):
        _whole_object_servers.add(_server(path))
    return 0, _whole_object(path, data, start, stop)


def _whole_object(path, data, start, stop):
    if len(data) < stop:
        raise StorageError(f"{path}: asked for bytes {start}-{stop - 1}, the server sent the whole object "
                           f"(it ignores Range requests), {len(data)} bytes: shorter than its manifest says")
    return data


def probe_ranges(path, note=True):
    """Whether the server of `path` (a small object, such as a manifest) ignores Range; asked once per server and
    process with a 1-byte ranged request. `note`: log a warning the first time a server is found to ignore it."""
    server = _server(path)
    if scheme_of(path) in ("http", "https") and server not in _probed_servers:
        _probed_servers.add(server)
        _fetch(path, 0, 1, _whole_cap(path, fallback=_small_file_cap()))
        if note and server in _whole_object_servers:
            log.warning("note: %s ignores HTTP Range requests (it answers a ranged GET with the whole object): "
                        "each shard is read whole, in one request per reader, instead of in ranged runs", server)
    return server in _whole_object_servers


def _info(path):
    """fsspec's info of a remote file, never from s3fs's listing cache (the object may have changed since)."""
    scheme = scheme_of(path)
    fs = _filesystem(scheme)
    extra = {"refresh": True} if scheme == "s3" else {}
    return retrying(path, "asking its size",
                    lambda patience: _run(fs, _within, patience, fs._info, _key(path), **extra))


def size(path):
    if not is_remote(path):
        return os.path.getsize(path)
    info = _info(path)
    if info.get("size") is None:
        raise StorageError(f"{path}: the server does not say the object's size (no Content-Length)")
    return int(info["size"])


def sizes(paths):
    """{path: size, or None when missing} for many files: one listing per S3 prefix, concurrent size requests over
    HTTP, os.stat locally. Other errors raise StorageError."""
    result = {}
    by_folder = {}
    for path in paths:
        by_folder.setdefault((scheme_of(path), path.rsplit("/", 1)[0] if is_remote(path) else ""), []).append(path)
    for (scheme, folder), members in by_folder.items():
        if scheme == "s3":
            listing = retrying(folder, "listing it", lambda patience, folder=folder: _run(
                _filesystem("s3"), _within, patience, _filesystem("s3")._ls, _key(folder), detail=True,
                refresh=True))
            found = {"s3://" + entry["name"]: int(entry["size"])
                     for entry in listing if entry.get("type") == "file"}
            result.update({path: found.get(path) for path in members})
        elif scheme:
            with concurrent.futures.ThreadPoolExecutor(_SIZE_QUERIES) as pool:
                result.update(zip(members, pool.map(_size_or_none, members)))
        else:
            result.update({path: os.path.getsize(path) if os.path.isfile(path) else None for path in members})
    return result


def list_files(folder):
    """{name: size} of the files directly in `folder` (a local folder or s3:// prefix); None for http(s)://, where a
    web server offers no listing. StorageError (or OSError locally) when it cannot be listed."""
    scheme = scheme_of(folder)
    if not scheme:
        return {entry.name: entry.stat().st_size for entry in os.scandir(folder) if entry.is_file()}
    if scheme != "s3":
        return None
    listing = retrying(folder, "listing it", lambda patience: _run(
        _filesystem("s3"), _within, patience, _filesystem("s3")._ls, _key(folder), detail=True, refresh=True))
    return {entry["name"].rsplit("/", 1)[-1]: int(entry["size"]) for entry in listing if entry.get("type") == "file"}


def _size_or_none(path):
    try:
        return size(path)
    except StorageError as exc:
        if exc.missing:
            return None
        raise


def identity(path):
    """A string that changes when the file is replaced: (device, inode, size, mtime) locally; (size, ETag or
    last-modified) remotely."""
    if not is_remote(path):
        status = os.stat(path)
        return f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"
    info = _info(path)
    tag = next((str(info[k]) for k in ("ETag", "etag", "LastModified", "last_modified") if info.get(k)), "")
    return f"{path}:{info.get('size')}:{tag}"


def copy_chunks(path, total):
    """Yields the file's first `total` bytes in CHUNK-sized pieces: ranged reads, each retried on its own, or
    slices of the whole object from a server that ignores Range."""
    if not is_remote(path):
        for start in range(0, total, CHUNK):
            yield read_range(path, start, min(total, start + CHUNK))
        return
    start, whole = 0, None
    while start < total:
        stop = min(total, start + CHUNK)
        offset, data = (0, whole) if whole is not None else fetch(path, start, stop, total)
        if offset == 0 and len(data) >= total:
            whole = data  # the whole object: the remaining pieces come from it
        yield data[start - offset:stop - offset]
        start = stop


def sha256(path, total=None):
    """Hex sha256 of the file; a remote one is read in ranged chunks of its `total` (default: its size) bytes."""
    digest = hashlib.sha256()
    if not is_remote(path):
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    for chunk in copy_chunks(path, size(path) if total is None else total):
        digest.update(chunk)
    return digest.hexdigest()


class RangeReader:
    """pread() of one shard file. Remote: prefetch(start, stop) fetches a run of members in one request, and
    pread() inside that run costs nothing; outside it, one request per call. From a server that ignores Range the
    first request brings the whole object, and every later read is served from it."""

    def __init__(self, path):
        self.path = path
        self._fd = None if is_remote(path) else os.open(path, os.O_RDONLY)
        self._start, self._data = 0, b""

    def prefetch(self, start, stop):
        if self._fd is None and not self._holds(start, stop):
            self._start, self._data = fetch(self.path, start, stop)

    def pread(self, count, offset):
        if self._fd is not None:
            return os.pread(self._fd, count, offset)
        self.prefetch(offset, offset + count)
        return self._data[offset - self._start:offset - self._start + count]

    def _holds(self, start, stop):
        """Whether the bytes in hand (a run, or the whole object from a server that ignores Range) cover these."""
        return self._start <= start and stop <= self._start + len(self._data)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._data = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
