"""Remote reads against servers that misbehave on purpose (tests/range_http_server.py on loopback, in its own
process): a body that never ends, a ranged request answered with an endless 200, a manifest over the size cap, a
body that stalls after its headers. Each read stops at the bytes it asked for, the size the manifest records or
storage.SMALL_FILE_MAX_BYTES, and a stall ends within storage.STALL_LIMIT, with one line naming the URL.

s3:// is covered by pointing s3fs (AWS_ENDPOINT_URL) at the same misbehaving server: a path-style GetObject of
s3://shards/NAME is a GET of /shards/NAME to it, so the real s3fs/aiobotocore client reads the stalled or endless
body. moto's S3 server cannot be made to stall or to send without end. That stand-in answers no S3 listing, so
the s3:// shard reads build their Shards from the manifest without load_split's size check."""
import json
import time

import pytest
from object_stores import S3_ENV, HttpServer

from shards import manifest, storage
from shards.errors import ShardError
from shards.format import BLOCK
from shards.read import read_index, read_member

CEILING = 64 << 20  # where the endless bodies end: a reader without a cap gets this much and fails the test
SCHEMES = ["http", "s3"]


@pytest.fixture(autouse=True)
def short_limits(monkeypatch):
    """Short time-outs, and clients, Range findings and recorded sizes of this test only."""
    monkeypatch.setattr(storage, "READ_TIMEOUT", 0.4)
    monkeypatch.setattr(storage, "STALL_LIMIT", 1.0)
    monkeypatch.setattr(storage, "_clients", {})
    monkeypatch.setattr(storage, "_whole_object_servers", set())
    monkeypatch.setattr(storage, "_probed_servers", set())
    monkeypatch.setattr(storage, "_expected_sizes", {})


def serve(folder, tmp_path, monkeypatch, scheme, *flags):
    """The misbehaving server of a copy of `folder`, and the URL of that copy as `scheme` reads it."""
    server = HttpServer(folder, tmp_path, "--endless-ceiling", CEILING, *flags)
    if scheme == "s3":
        for key, value in dict(S3_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.port}").items():
            monkeypatch.setenv(key, value)
        return server, "s3://shards"
    return server, server.url


def train_shards(url, scheme):
    """The train split's Shards: load_split over HTTP; over the S3 stand-in, which cannot list, straight from the
    manifest."""
    if scheme == "http":
        return manifest.load_split(url, "train").shards
    return manifest._shards_of(url, manifest.read_manifest(url)["splits"]["train"]["shards"])


def read_members(shard, per_request=4):
    """Every member of a remote shard as the torch backend reads one (pipeline/shard_read.py, not imported here:
    torch would double this file's time): its index first, then one ranged request per run of `per_request`
    samples, each member behind its own tar header (read_member)."""
    records = read_index(shard)
    with storage.RangeReader(shard.path) as reader:
        for first in range(0, len(records), per_request):
            run = [member for record in records[first:first + per_request] for member in record.values()]
            reader.prefetch(min(offset for offset, _, _ in run) - BLOCK, max(offset + size for offset, size, _ in run))
            for offset, size, _ in run:
                read_member(shard, reader, offset, size)


def one_line(info):
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def assert_hung_up_early(server):
    """The server's endless answer ended before CEILING: the client stopped reading and closed the connection
    (what went out beyond the cap sat in the sockets' buffers, up to tens of MB with Linux's autotuning)."""
    deadline = time.monotonic() + 10
    while server.endless_bytes_sent() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = server.endless_bytes_sent()
    assert sent is not None and sent < CEILING, sent


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_manifest_without_end_is_read_up_to_the_cap_and_named(real_shards, tmp_path, monkeypatch, scheme):
    monkeypatch.setattr(storage, "SMALL_FILE_MAX_BYTES", 1 << 20)
    server, url = serve(real_shards, tmp_path, monkeypatch, scheme, "--endless", "manifest.json")
    with server:
        with pytest.raises(ShardError) as info:
            manifest.read_manifest(url)
        assert one_line(info).startswith(f"{url}/manifest.json: the server sent more than 1048576 bytes "
                                         "(SMALL_FILE_MAX_BYTES, the cap for a file whose size nothing records); "
                                         "reading stopped there"), info.value
        assert_hung_up_early(server)


def test_a_manifest_over_the_default_cap_is_refused_by_its_length_before_it_is_read(tmp_path, monkeypatch):
    """One byte over the real SMALL_FILE_MAX_BYTES, valid JSON (a manifest padded with spaces)."""
    cap = storage.SMALL_FILE_MAX_BYTES
    assert 32 << 20 <= cap <= 256 << 20  # generous for ImageNet's ~1 MB manifest, and finite
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(json.dumps({"format_version": 1}).encode().ljust(cap + 1))
    server, url = serve(str(folder), tmp_path, monkeypatch, "http")
    started = time.monotonic()
    with server, pytest.raises(ShardError) as info:
        manifest.read_manifest(url)
    assert one_line(info).startswith(f"{url}/manifest.json: the server announces {cap + 1} bytes "
                                     f"(Content-Length), more than {cap} bytes (SMALL_FILE_MAX_BYTES"), info.value
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_manifest_that_stalls_mid_body_times_out_naming_the_url_and_the_seconds(real_shards, tmp_path,
                                                                                  monkeypatch, scheme):
    server, url = serve(real_shards, tmp_path, monkeypatch, scheme, "--stall", "manifest.json")
    started = time.monotonic()
    with server, pytest.raises(ShardError) as info:
        manifest.read_manifest(url)
    elapsed = time.monotonic() - started
    message = one_line(info)
    assert message.startswith(f"{url}/manifest.json: read timeout while reading it: waited "), message
    waited = float(message.split(" waited ", 1)[1].split(" s ", 1)[0])
    assert 0.7 <= waited <= storage.STALL_LIMIT + 0.05, message
    assert "READ_TIMEOUT = 0.4 s" in message and "STALL_LIMIT = 1 s" in message
    assert elapsed < storage.STALL_LIMIT + 2, elapsed  # + the start of a client


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_shard_read_that_stalls_mid_body_times_out_naming_the_shard(real_shards, tmp_path, monkeypatch, scheme):
    server, url = serve(real_shards, tmp_path, monkeypatch, scheme, "--stall", "train-000001.tar")
    with server:
        shard = train_shards(url, scheme)[1]
        started = time.monotonic()
        with pytest.raises(ShardError) as info:
            read_members(shard)
        elapsed = time.monotonic() - started
    message = one_line(info)
    assert message.startswith(f"{url}/train-000001.tar: read timeout while reading bytes "), message
    assert "waited " in message and elapsed < storage.STALL_LIMIT + 2, (elapsed, message)


@pytest.mark.parametrize("scheme, name", [("http", "train-000001.tar"), ("http", "train-000001.idx"),
                                          ("s3", "train-000001.tar")])
def test_an_endless_200_for_a_shard_file_stops_at_the_size_the_manifest_records(real_shards, tmp_path, monkeypatch,
                                                                                 scheme, name):
    """The tar's ranged request answered with 200 and a body without end (the whole object, then: held up to
    shard.bytes); the .idx, read whole, up to the index_bytes the manifest records."""
    server, url = serve(real_shards, tmp_path, monkeypatch, scheme, "--endless", name)
    with server:
        shard = train_shards(url, scheme)[1]
        with pytest.raises(ShardError) as info:
            read_members(shard)
        recorded = shard.bytes if name.endswith(".tar") else shard.index_bytes
        assert one_line(info).startswith(f"{url}/{name}: the server sent more than the {recorded} bytes of the "
                                         "whole object (its recorded size); reading stopped there"), info.value
        assert_hung_up_early(server)


def test_a_process_that_never_read_the_manifest_still_stops_at_the_recorded_size(real_shards, tmp_path,
                                                                                 monkeypatch):
    """A loader worker that is not a fork of the process that loaded the split (Python's forkserver default, from
    3.14) knows no recorded sizes; reading the shard's side files first teaches it the tar's."""
    server, url = serve(real_shards, tmp_path, monkeypatch, "http", "--endless", "train-000000.tar")
    with server:
        shard = manifest.load_split(url, "train").shards[0]
        monkeypatch.setattr(storage, "_expected_sizes", {})
        with pytest.raises(ShardError) as info:
            read_members(shard)
        assert one_line(info).startswith(f"{url}/train-000000.tar: the server sent more than the {shard.bytes} "
                                         "bytes of the whole object (its recorded size)"), info.value
        assert_hung_up_early(server)
