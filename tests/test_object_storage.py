"""Shards in object storage (shards/storage.py, pipeline/shard_cache.py) against real servers on loopback:
moto's S3 server and an HTTP server with Range support (tests/range_http_server.py), each in its own process.
Two-process torchrun epochs equal the local folder's, train.py trains and resumes from s3://, and the faults a
store has: failing requests, missing and refused objects, changed bytes, a server that goes away."""
import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, dali_importable, epoch_batches, labels_of
from object_stores import HttpServer, S3Server, StaticHttpServer

from pipeline import BackendUnavailable, ShardError, build_loader
from pipeline.rank_plan import REQUEST_BLOCK
from shards import storage

PY = sys.executable
TRAIN = ["--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--workers", "2", "--batch-size", "4",
         "--print-freq", "1", "--prefix", "T", "--lr", "0.02", "--seed", "7"]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.close()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3.env()


def run(args, env=None, timeout=600, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def torchrun_epoch(data, backend, out, env=None, cache=None):
    """Every rank's batch count and labels of one train and one val epoch, read by 2 torchrun processes."""
    args = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            os.path.join(ROOT, "tests", "epoch_labels.py"), str(data), backend, str(out)]
    result = run(args + ([cache] if cache else []), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as handle:
        return json.load(handle)


def multiset(ranks, split):
    return collections.Counter(label for rank in ranks for batch in rank[split]["labels"] for label in batch)


def assert_same_epochs(remote, local):
    for split in ("train", "val"):
        assert [r[split]["batches"] for r in remote] == [r[split]["batches"] for r in local]
        assert multiset(remote, split) == multiset(local, split) and multiset(local, split)


BACKENDS = ["torch", pytest.param("dali-cpu", marks=pytest.mark.skipif(not dali_importable(), reason="no DALI"))]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_torchrun_epoch_from_s3_equals_the_local_folder(real_shards, s3, tmp_path, backend):
    url = s3.upload(real_shards, f"equal-{backend}")
    local = torchrun_epoch(real_shards, backend, tmp_path / "local.json")
    remote = torchrun_epoch(url, backend, tmp_path / "s3.json", env=s3.env())
    assert_same_epochs(remote, local)
    assert remote == local  # same seed, same split: the very same batches in the same order


@pytest.mark.slow
def test_a_torchrun_epoch_over_http_equals_the_local_folder_and_dali_names_the_backend_that_can(real_shards,
                                                                                               tmp_path):
    with HttpServer(real_shards, tmp_path) as server:
        local = torchrun_epoch(real_shards, "torch", tmp_path / "local.json")
        remote = torchrun_epoch(server.url, "torch", tmp_path / "http.json")
        assert remote == local
        with StaticHttpServer(real_shards, tmp_path) as static:  # ignores Range; both ranks share one cache
            assert torchrun_epoch(static.url, "torch", tmp_path / "static.json", cache=str(tmp_path / "c")) == local
        if dali_importable():
            with pytest.raises(BackendUnavailable, match=r"cannot read http://.*use backend 'torch'"):
                build_loader(server.url, "train", 4, backend="dali-cpu", device="cpu")
        assert pipeline_backend("auto", server.url) == "torch"


def pipeline_backend(backend, data):
    from pipeline import resolve_backend
    return resolve_backend(backend, torch.device("cpu"), data=data).name


def test_members_are_fetched_in_one_request_per_run_of_samples(real_shards, tmp_path):
    """24 train samples in 3 shards, read as runs of 4: one ranged request per run, not one per member."""
    with HttpServer(real_shards, tmp_path) as server:
        loader = build_loader(server.url, "train", 4, backend="torch", workers=0, device="cpu", image_size=16,
                              verify="off")
        before = server.requests()
        batches = list(loader)
        reads = server.requests() - before
    shards = 3
    runs = sum(-(-count // 4) for count in (10, 10, 4))  # samples per shard: 10, 10, 4
    assert len(batches) == 6
    assert reads <= shards * 2 + runs, reads  # per shard its index and checksums, then one request per run
    assert reads < 24 * 2  # one request per member would be 48


def test_a_server_that_ignores_range_gives_the_local_folders_batches_with_or_without_the_cache(real_shards,
                                                                                                 tmp_path, caplog):
    """`python -m http.server` answers every ranged GET with the whole file: found once, noted once, and each
    shard read whole; train and val epochs equal the local folder's, image for image."""
    caplog.set_level(logging.WARNING, logger="shards.storage")
    with StaticHttpServer(real_shards, tmp_path) as server:
        for cache in (None, str(tmp_path / "cache")):
            for split, epoch in (("train", 3), ("val", 0)):
                # The same order for both (the default block differs: reads at offsets locally, runs remotely).
                _, local = epoch_batches(real_shards, split, 4, "torch", epoch=epoch, shuffle_block=REQUEST_BLOCK)
                _, remote = epoch_batches(server.url, split, 4, "torch", epoch=epoch, cache_dir=cache)
                assert labels_of(remote) == labels_of(local) and len(local) > 0
                assert all(torch.equal(a, b) for (a, _), (b, _) in zip(remote, local))
    notes = [r.getMessage() for r in caplog.records if "ignores HTTP Range requests" in r.getMessage()]
    assert notes == [f"note: http://127.0.0.1:{server.port} ignores HTTP Range requests (it answers a ranged GET "
                     "with the whole object): each shard is read whole, in one request per reader, instead of in "
                     "ranged runs"]


@pytest.mark.parametrize("server_kind", [HttpServer, StaticHttpServer], ids=["range", "no-range"])
def test_a_shard_cut_short_after_the_start_is_called_shorter(real_shards, tmp_path, server_kind):
    with server_kind(real_shards, tmp_path) as server:
        loader = build_loader(server.url, "train", 4, backend="torch", workers=0, device="cpu", image_size=16,
                              verify="off")
        path = os.path.join(server.folder, "train-000002.tar")
        os.truncate(path, os.path.getsize(path) * 2 // 3)
        with pytest.raises(ShardError) as info:
            list(loader)
    message = str(info.value)
    assert message.startswith(f"{server.url}/train-000002.tar: asked for bytes ") and "longer" not in message
    assert message.endswith("shorter than its manifest says"), message
    if server_kind is StaticHttpServer:
        assert "the server sent the whole object (it ignores Range requests)" in message


def test_every_third_request_failing_is_retried_and_the_epoch_is_complete(real_shards, tmp_path):
    _, local = epoch_batches(real_shards, "val", 4, "torch")
    with HttpServer(real_shards, tmp_path, "--fail-every", 3) as server:
        _, remote = epoch_batches(server.url, "val", 4, "torch")
        assert server.requests() >= 3  # the server did fail requests, and they were retried
    assert labels_of(remote) == labels_of(local)
    for (images_remote, _), (images_local, _) in zip(remote, local):
        assert torch.equal(images_remote, images_local)


def test_a_missing_or_refused_object_is_one_line_naming_its_url(real_shards, tmp_path, s3, s3_env):
    url = s3.upload(real_shards, "missing")
    s3.delete("missing", "train-000001.tar")
    with pytest.raises(ShardError, match=f"shard {url}/train-000001.tar listed in the manifest is missing"):
        build_loader(url, "train", 4, backend="torch", device="cpu")
    with pytest.raises(ShardError, match=r"s3://shards-bucket/nothing-here/manifest.json not found"):
        build_loader("s3://shards-bucket/nothing-here", "train", 4, backend="torch", device="cpu")
    with HttpServer(real_shards, tmp_path, "--deny", "train-000000.idx") as server:
        # Found when the loader is built (its first request asks whether the server honours Range) or, at the
        # latest, when the epoch reads the index.
        with pytest.raises(ShardError, match=f"{server.url}/train-000000.idx: access denied \\(403\\)"):
            list(build_loader(server.url, "train", 4, backend="torch", workers=0, device="cpu", verify="off"))
    result = run([PY, "train.py", *TRAIN, "--backend", "torch", "--epochs", "1", "--output-dir", str(tmp_path / "o"),
                  url], env=s3_env)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"train.py: error: shard {url}/train-000001.tar listed in the manifest is missing"), result.stderr[-2000:]


def _flip_member_bytes(folder, shard="train-000001", sample=2):
    """Flips 8 bytes inside one JPEG of a shard (same size): (tar path, member name)."""
    with open(os.path.join(folder, f"{shard}.idx")) as handle:
        fields = handle.read().splitlines()[1 + sample].split()
    offset, size, name = int(fields[1]), int(fields[2]), fields[3]
    path = os.path.join(folder, f"{shard}.tar")
    data = bytearray(open(path, "rb").read())
    for i in range(offset + size // 2, offset + size // 2 + 8):
        data[i] ^= 0xFF
    return path, name, bytes(data)


@pytest.mark.parametrize("cache", [False, True])
def test_changed_bytes_of_a_shard_are_named_with_or_without_the_cache(real_shards, tmp_path, s3, s3_env, cache):
    prefix = f"changed-{cache}"
    url = s3.upload(real_shards, prefix)
    _, member, data = _flip_member_bytes(real_shards)
    s3.put(prefix, "train-000001.tar", data)
    loader = build_loader(url, "train", 4, backend="torch", workers=2, device="cpu", image_size=16, verify="off",
                          cache_dir=str(tmp_path / "cache") if cache else None)
    expected = (f"shard {url}/train-000001.tar does not match the sha256 in its manifest" if cache else
                f"shard {url}/train-000001.tar: member {member} differs from its checksum")
    with pytest.raises(ShardError, match=expected):
        list(loader)
    if cache:  # nothing unverified is left in the cache
        assert not [name for _, _, names in os.walk(tmp_path / "cache") for name in names if name.endswith(".tar")
                    and "train-000001" in name or name.startswith(".part-")]
    s3.put(prefix, "train-000001.tar", data[:-512])  # and a size that differs: named before reading
    with pytest.raises(ShardError, match=f"shard {url}/train-000001.tar is {len(data) - 512} bytes but the "
                                         f"manifest says {len(data)}"):
        build_loader(url, "train", 4, backend="torch", device="cpu")


@pytest.mark.parametrize("cache", [False, True])
def test_a_checksum_file_of_another_shard_is_named_not_its_shard(real_shards, tmp_path, cache):
    """Shards 0 and 1 hold 10 samples each; shard 1's .crc32 replaced by shard 0's is named as such, where the
    member checks would blame an intact shard."""
    with HttpServer(real_shards, tmp_path) as server:
        folder = server.folder
        shutil.copy(os.path.join(folder, "train-000000.crc32"), os.path.join(folder, "train-000001.crc32"))
        loader = build_loader(server.url, "train", 4, backend="torch", workers=0, device="cpu", image_size=16,
                              verify="off", cache_dir=str(tmp_path / "cache") if cache else None)
        with pytest.raises(ShardError, match=f"member checksums {server.url}/train-000001.crc32 is not the file "
                                             "tools/make_shards.py wrote for train-000001.tar"):
            list(loader)


@pytest.mark.skipif(not dali_importable(), reason="no DALI")
def test_dali_cpu_over_s3_finds_changed_bytes_by_their_sha256(real_shards, s3, s3_env):
    url = s3.upload(real_shards, "changed-dali")
    _, _, data = _flip_member_bytes(real_shards)
    s3.put("changed-dali", "train-000001.tar", data)
    loader = build_loader(url, "train", 4, backend="dali-cpu", workers=2, device="cpu", image_size=16,
                          verify="before", verify_dir="")
    with pytest.raises(ShardError, match=f"shard {url}/train-000001.tar does not match the sha256"):
        list(loader)


def test_the_cache_is_read_again_without_downloading_and_stays_within_its_size(real_shards, tmp_path):
    cache = tmp_path / "cache"
    _, local = epoch_batches(real_shards, "train", 4, "torch", epoch=1, shuffle_block=REQUEST_BLOCK)
    with HttpServer(real_shards, tmp_path) as server:
        loader, first = epoch_batches(server.url, "train", 4, "torch", epoch=1, cache_dir=str(cache))
        assert labels_of(first) == labels_of(local)
        downloaded = server.requests()
        loader.set_epoch(2)
        list(loader)
        assert server.requests() == downloaded  # the second epoch read local copies only
        small = sorted(os.path.getsize(os.path.join(real_shards, f"train-00000{i}.tar")) for i in range(3))
        limit = small[-1] + small[0]  # room for two of the three shards
        tight = tmp_path / "tight"
        _, again = epoch_batches(server.url, "train", 4, "torch", epoch=1, cache_dir=str(tight), cache_bytes=limit)
        assert labels_of(again) == labels_of(local)
    held = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(tight)
               for name in names if name.endswith(".tar"))
    assert 0 < held <= limit


@pytest.mark.slow
def test_train_from_s3_with_a_cache_stops_mid_epoch_and_resumes_exactly(unique_shards, s3, tmp_path):
    """SIGTERM to the whole torchrun job mid-epoch, DATA in S3: checkpoint at the step, resume trains each step of
    the epoch once (121 samples, global batch 4: 30 steps)."""
    url = s3.upload(unique_shards, "train")
    out = tmp_path / "out"
    train = [*TRAIN, "--backend", "torch", "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
             "--output-dir", str(out), url]
    launch = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **s3.env())
    proc = subprocess.Popen([*launch, *train], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    metrics_file = out / "T_metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 3):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert "stop requested: saved" in stdout, stderr[-3000:]
    saved = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and 1 <= saved["batch"] < 30 and saved["config"]["data"] == url
    result = run([*launch, *train[:-1], "--resume", "auto", url], env=s3.env())
    assert result.returncode == 0, result.stderr[-3000:]
    with open(metrics_file) as handle:
        steps = [row["step"] for row in map(json.loads, handle) if row["kind"] == "train"]
    assert sorted(steps) == list(range(1, 31))


@pytest.mark.slow
def test_a_server_that_stops_mid_epoch_ends_the_run_with_its_url_and_keeps_the_checkpoint(real_shards, tmp_path):
    """Epoch 0 completes and is saved; the server goes away during epoch 1: exit 1 in bounded time, one line
    naming the URL, a checkpoint of every step taken; with the server back, --resume finishes the run."""
    out = tmp_path / "out"
    train = [PY, "train.py", *TRAIN, "--backend", "torch", "--output-dir", str(out)]
    requests = []  # of a run of 1 and of 2 epochs: the second epoch's are the difference (the start-up's are not)
    for epochs in ("1", "2"):
        with HttpServer(real_shards, tmp_path) as counting:
            result = run([*train, "--epochs", epochs, "--verify-shards", "off", counting.url])
            assert result.returncode == 0, result.stderr[-2000:]
            requests.append(counting.requests())
        shutil.rmtree(out)
    with HttpServer(real_shards, tmp_path, "--exit-after", requests[0] + (requests[1] - requests[0]) // 3) as dying:
        started = time.time()
        result = run([*train, "--epochs", "2", "--verify-shards", "off", dying.url], timeout=300)
        elapsed = time.time() - started
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {dying.url}/") and "tries failed" in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and elapsed < 200
    saved = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    with open(out / "T_metrics.jsonl") as handle:
        trained = [row["step"] for row in map(json.loads, handle) if row["kind"] == "train"]
    assert saved["epoch"] == 1 and saved["step"] == trained[-1]  # every step taken before the failure is kept
    with HttpServer(real_shards, tmp_path) as back:
        result = run([*train, "--epochs", "2", "--verify-shards", "off", "--resume", "auto", back.url])
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_locations_are_normalised_and_unknown_schemes_named(tmp_path):
    assert storage.normalize(f"file://{tmp_path}") == str(tmp_path)
    assert storage.normalize("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert storage.join("https://host/data", "manifest.json") == "https://host/data/manifest.json"
    with pytest.raises(ShardError, match=r"gs://b/p: scheme 'gs' is not supported"):
        storage.normalize("gs://b/p")
    result = run([PY, "train.py", "gs://b/p"])
    assert result.returncode == 2 and "scheme 'gs' is not supported" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_loader_benchmark_reads_a_url_against_a_local_copy_of_it(real_shards, tmp_path):
    with HttpServer(real_shards, tmp_path) as server:
        result = run([PY, "benchmarks/loader.py", "--src", server.url, "--repeats", "1", "--epochs", "1",
                      "--workers", "1", "--batch-size", "4", "--image-size", "32"])
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["benchmark"] == "loader-remote" and data["src"] == server.url
    assert set(data["images_per_s"]) == {"torch local", "torch remote", "torch remote + cache"}
    assert data["ratio_vs_local"]["torch local"] == 1.0 and all(v > 0 for v in data["images_per_s"].values())
    assert data["request_seconds"]["remote"] > data["request_seconds"]["local"] > 0
    assert "per-request overhead" in result.stdout
