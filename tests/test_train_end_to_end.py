"""train.py end to end on tiny shards: real torchrun with 2 gloo processes, checkpoints, exact resume, SIGTERM,
--evaluate, --benchmark, flag errors, and learnability on a generated data set."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_make_shards
from test_nothing_lost import damage_tensor_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# Small and fast: ResNet-18-CBAM on 32 px crops, the torch backend (DALI CPU is covered by the loader tests).
COMMON = ["--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--backend", "torch", "--workers", "2",
          "--batch-size", "16", "--lr", "0.05", "--lr-schedule", "step", "--print-freq", "1", "--prefix", "T"]


def run(args, timeout=300, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def torchrun(args, nproc=2):
    return run([PY, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "train.py", *args])


def metrics(out_dir, kind="train"):
    with open(os.path.join(out_dir, "T_metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def make_shards(src, out, per_shard):
    run_make_shards(src, out, per_shard)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from shards.synthetic import write_tree
    base = tmp_path_factory.mktemp("train")
    write_tree(str(base / "images"), classes=4, train_per_class=16, val_per_class=6, size=40, seed=3)
    make_shards(base / "images", base / "shards", per_shard=20)  # 64 train samples in 4 shards, 24 val in 2
    return base / "shards"


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory):
    """Two epochs under torchrun with 2 processes, uninterrupted."""
    out = tmp_path_factory.mktemp("ref")
    result = torchrun([*COMMON, "--epochs", "2", "--output-dir", str(out), str(shards)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_reference_run_logs_checkpoints_and_metrics(reference_run):
    out, result = reference_run
    assert "Epoch: [0][1/4]\tTime" in result.stdout and "Prec@5" in result.stdout
    assert " * Prec@1 " in result.stdout
    ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["batch"] == 0 and ckpt["config"]["world_size"] == 2
    assert set(ckpt) >= {"model", "optimizer", "scaler", "best_prec1", "rng", "config", "step"}
    assert (out / "T_model_best.pth.tar").exists()
    train = metrics(out)
    # 64 samples, global batch 16 -> 4 steps per epoch, logged at every step (--print-freq 1).
    assert [r["step"] for r in train] == list(range(1, 9))
    assert all(r["images_per_sec"] > 0 and r["loss"] > 0 for r in train)
    val = metrics(out, "val")
    assert len(val) == 2 and all(r["images"] == 24 for r in val)  # every val sample counted exactly once


@pytest.mark.slow
def test_ngpu_launcher_then_resume_reproduce_the_uninterrupted_run(reference_run, shards, tmp_path):
    ref_out, _ = reference_run
    reference = {r["step"]: r["loss"] for r in metrics(ref_out)}
    # The CBAM authors' way: python train.py --ngpu 2 relaunches itself through torch.distributed.run.
    first = run([PY, "train.py", *COMMON, "--ngpu", "2", "--epochs", "1", "--output-dir", str(tmp_path),
                 str(shards)])
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout.split("config ", 1)[1].splitlines()[0])["world_size"] == 2
    resumed = torchrun([*COMMON, "--epochs", "2", "--resume", "auto", "--output-dir", str(tmp_path), str(shards)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "next: epoch 1, batch 0" in resumed.stdout
    got = {r["step"]: r["loss"] for r in metrics(tmp_path)}
    assert sorted(got) == sorted(reference)
    for step, loss in reference.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), f"step {step}"


@pytest.mark.slow
def test_evaluate_matches_end_of_training_top1(reference_run, shards):
    out, _ = reference_run
    last_val = metrics(out, "val")[-1]
    result = run([PY, "train.py", *COMMON, "--evaluate", "--resume", str(out / "T_checkpoint.pth.tar"),
                  "--output-dir", str(out), str(shards)])
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(" * Prec@1"))
    assert float(line.split()[2]) == pytest.approx(last_val["top1"], abs=5e-4)  # printed with 3 decimals


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_a_loadable_checkpoint_and_resume_finishes(shards, tmp_path):
    args = [PY, "train.py", *COMMON, "--batch-size", "2", "--epochs", "1", "--output-dir", str(tmp_path),
            str(shards)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics_file = tmp_path / "T_metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]  # stopped, not finished: a Job restarts it
    assert "stop requested" in stdout
    ckpt = torch.load(tmp_path / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and 2 <= ckpt["batch"] < 32, ckpt["batch"]  # 64 samples / 2 = 32 steps
    stopped_at = ckpt["batch"]
    changed = run(args[:-1] + ["--seed", "99", "--resume", "auto", args[-1]])
    assert changed.returncode == 2 and "stopped mid-epoch" in changed.stderr and "seed (saved 1234, now 99)" in \
        changed.stderr, changed.stderr[-2000:]
    result = run(args + ["--resume", "auto"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"next: epoch 0, batch {stopped_at}" in result.stdout
    steps = [r["step"] for r in metrics(tmp_path)]
    assert sorted(set(steps)) == list(range(1, 33))  # every step of the epoch trained exactly once overall
    assert len(steps) == len(set(steps))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "seed-style --ngpu 2"])
def test_sigterm_to_the_whole_process_group_saves_and_resume_is_exact(shards, tmp_path, launcher):
    """Pre-emption as clusters do it: SIGTERM to every process of the job (launcher, both ranks, their loader
    workers). The workers ignore it; the ranks finish the step, agree, save, and the resumed run trains every step
    of the epoch exactly once."""
    train = [*COMMON, "--batch-size", "4", "--epochs", "1", "--output-dir", str(tmp_path), str(shards)]
    launch = ([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py"]
              if launcher == "torchrun" else [PY, "train.py", "--ngpu", "2"])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*launch, *train], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    metrics_file = tmp_path / "T_metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 2):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "stop requested: saved" in stdout, stderr[-3000:]
    assert "is killed by signal" not in stderr
    if launcher != "torchrun":  # torchrun reports a signal it receives as a failure of its own (exit 1)
        assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    ckpt = torch.load(tmp_path / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and 1 <= ckpt["batch"] < 16, ckpt["batch"]  # 64 samples / 4 = 16 steps
    result = torchrun([*train[:-1], "--resume", "auto", train[-1]])
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r["step"] for r in metrics(tmp_path)]
    assert sorted(set(steps)) == list(range(1, 17)) and len(steps) == len(set(steps))


def _no_bigger_files_than(limit):
    """preexec_fn: files of the child may not grow past `limit` bytes (EFBIG, as a full disk gives ENOSPC)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_temporary_file(shards, tmp_path):
    """ResNet-18's checkpoint (~90 MB with the optimizer state) against a 5 MB file-size limit."""
    result = run([PY, "train.py", *COMMON, "--epochs", "1", "--output-dir", str(tmp_path), str(shards)],
                 preexec_fn=_no_bigger_files_than(5 << 20))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: cannot save checkpoint ") and "bytes needed" in last, last
    assert str(tmp_path) in last and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["T_config.json", "T_metrics.jsonl"]


def test_temporary_files_of_interrupted_saves_are_swept(tmp_path):
    from training.checkpoint import sweep_temporaries
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f"T_checkpoint.pth.tar.{dead_pid}.tmp", tmp_path / f"T_model_best.pth.tar.{dead_pid}.tmp"]
    kept = [tmp_path / f"T_checkpoint.pth.tar.{os.getpid()}.tmp",  # a live writer's
            tmp_path / f"U_checkpoint.pth.tar.{dead_pid}.tmp", tmp_path / "T_checkpoint.pth.tar"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(sweep_temporaries(str(tmp_path), "T")) == sorted(map(str, stale))
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in kept)


@pytest.mark.slow
@pytest.mark.parametrize("verify", ["background", "off"])
def test_a_damaged_val_shard_loses_no_training(shards, tmp_path, verify):
    """A val shard zeroed at the same size. Checked in the background, it stops training at the next step (or at
    the epoch's end) with its checkpoint; unchecked, validation fails naming it after the epoch is saved."""
    import shutil
    damaged = tmp_path / "shards"
    shutil.copytree(shards, damaged)
    val = sorted(damaged.glob("val-*.tar"))[-1]
    val.write_bytes(bytes(val.stat().st_size))
    out = tmp_path / "out"
    result = run([PY, "train.py", *COMMON, "--epochs", "1", "--verify-shards", verify, "--output-dir", str(out),
                  str(damaged)])
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: shard {val}") and "Traceback" not in result.stderr, result.stderr
    if verify == "off":
        ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
        assert (ckpt["epoch"], ckpt["batch"], ckpt["val_owed"]) == (1, 0, True)  # the trained epoch is kept
        shutil.copy(shards / val.name, val)  # repaired: the resume validates the last epoch first, then ends
        result = run([PY, "train.py", *COMMON, "--epochs", "1", "--verify-shards", verify, "--resume", "auto",
                      "--output-dir", str(out), str(damaged)])
        assert result.returncode == 0, result.stderr[-3000:]
        assert "=> validating epoch 0 first" in result.stdout
        assert [(r["epoch"], r["step"], r["images"]) for r in metrics(out, "val")] == [(0, 4, 24)]
        assert len(metrics(out, "epoch")) == 1 and (out / "T_model_best.pth.tar").exists()
        assert not torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)["val_owed"]
    else:
        assert "does not match the sha256" in last
        assert_every_step_taken_is_saved(out)


def assert_every_step_taken_is_saved(out):
    """The checkpoint holds the last step the metrics file reports (none taken: no checkpoint needed)."""
    trained = metrics(out) if (out / "T_metrics.jsonl").exists() else []
    if not trained:
        assert not (out / "T_checkpoint.pth.tar").exists()
        return
    ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["step"] == trained[-1]["step"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "dali-cpu"])
def test_a_flipped_jpeg_stops_training_naming_shard_and_sample_and_resume_works(shards, tmp_path, backend):
    """Bytes flipped inside one JPEG of a train shard decode without an error (libjpeg at most warns); the
    checksum catches them: exit 1 naming the shard and the sample, the steps taken saved."""
    import shutil
    if backend == "dali-cpu":
        pytest.importorskip("nvidia.dali")
    damaged = tmp_path / "shards"
    shutil.copytree(shards, damaged)
    tar = damaged / "train-000001.tar"
    with open(damaged / "train-000001.idx") as handle:
        fields = handle.read().splitlines()[3].split()  # sample 2: jpg offset size name, cls ...
    offset, size, key = int(fields[1]), int(fields[2]), fields[3].split(".")[0]
    data = bytearray(tar.read_bytes())
    for i in range(offset + size // 2, offset + size // 2 + 8):
        data[i] ^= 0xFF
    tar.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = run([PY, "train.py", *COMMON, "--backend", backend, "--epochs", "2", "--output-dir", str(out),
                  str(damaged)])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: shard {tar} does not match the sha256"), result.stderr[-2000:]
    assert f"sample {key}" in last and "Traceback" not in result.stderr
    assert_every_step_taken_is_saved(out)
    shutil.copy(shards / "train-000001.tar", tar)  # repaired: the run resumes from the checkpoint and finishes
    result = run([PY, "train.py", *COMMON, "--backend", backend, "--epochs", "2", "--resume", "auto",
                  "--output-dir", str(out), str(damaged)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 2


def _rank_pid(rank):
    """The pid of `rank` started by a seed-style launcher (found through /proc): a process whose environment has
    RANK and the launcher's status folder, and whose parent's has no RANK (its loader workers inherit both)."""
    def environ(pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f.read().split(b"\0")
        except OSError:
            return []

    def parent(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    for entry in filter(str.isdigit, os.listdir("/proc")):
        env = environ(entry)
        if f"RANK={rank}".encode() in env and any(v.startswith(b"CBAM_RANK_STATUS_DIR=") for v in env):
            try:
                if not any(v.startswith(b"RANK=") for v in environ(parent(entry))):
                    return int(entry)
            except OSError:
                continue
    return None


@pytest.mark.slow
def test_seed_style_launcher_fails_when_a_rank_died_during_a_stop(shards, tmp_path):
    """SIGTERM to the whole job while one rank is killed outright: the launcher must not report success."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([PY, "train.py", "--ngpu", "2", *COMMON, "--batch-size", "4", "--epochs", "1",
                             "--output-dir", str(tmp_path), str(shards)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    metrics_file = tmp_path / "T_metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 2):
        time.sleep(0.1)
    victim = _rank_pid(1)
    assert victim is not None
    # The signal first, so that the launcher is stopping (not noticing a failed worker) when the rank dies.
    os.killpg(proc.pid, signal.SIGTERM)
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]
    assert "not every rank saved and exited cleanly (" in stderr and "rank 1: none (killed)" in stderr


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_next_report_and_keeps_the_last_checkpoint(reference_run, shards, tmp_path):
    """Resumed after 2 epochs with a learning rate that makes the weights overflow: exit 1 naming the epoch and
    step; the checkpoint on disk is still the finite one."""
    import shutil
    ref_out, _ = reference_run
    for name in ("T_checkpoint.pth.tar", "T_metrics.jsonl"):
        shutil.copy(ref_out / name, tmp_path / name)
    saved = (tmp_path / "T_checkpoint.pth.tar").read_bytes()
    result = run([PY, "train.py", *COMMON, "--lr", "1e30", "--print-freq", "3", "--epochs", "4", "--resume", "auto",
                  "--output-dir", str(tmp_path), str(shards)])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    # One process goes on from the 2 ranks' checkpoint with their batch: 8 per step, 2 accumulated, 8 steps.
    assert "global batch 16 kept as 8 per rank x 1 ranks x 2 accumulated" in result.stdout
    assert lines[-1].startswith("train.py: error: the run diverged at epoch 2, step 3/8: the loss is "), lines[-1]
    assert lines[-1].endswith("(try a lower --lr)"), lines[-1]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "T_checkpoint.pth.tar").read_bytes() == saved


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_a_label_the_reader_cannot_parse_stops_every_rank_with_the_steps_taken_saved(unique_shards, tmp_path, accum):
    """Under torchrun, one rank's torch reader meets a .cls member that is not a number after some steps: the ranks
    agree on the stop, the steps are saved, and one line names the shard and the sample. With gradient
    accumulation over 2 batches the 4th batch is mid-group: the checkpoint holds the group before it."""
    import shutil

    import pipeline
    damaged = tmp_path / "shards"
    shutil.copytree(unique_shards, damaged)
    # Each label is one sample here: find the one rank 1 decodes in its 4th batch of epoch 0 (of 7).
    loader = pipeline.build_loader(str(damaged), "train", 8, backend="torch", rank=1, world_size=2, workers=1,
                                   device="cpu", image_size=32, seed=1234, verify="off")
    victim = str(int(list(loader)[3][1][2])).encode()
    tar, key, offset = next((tar, key, offset) for tar in sorted(damaged.glob("train-*.tar"))
                            for key, offset, size in _cls_members(tar) if _read(tar, offset, size) == victim)
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(b"x" * len(victim))
    out = tmp_path / "out"
    result = torchrun([*COMMON, "--epochs", "1", "--verify-shards", "off", "--accum-steps", str(accum),
                       "--output-dir", str(out), str(damaged)])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"train.py: error: shard {tar}: sample '{key}'"), errors
    assert "gloo" not in result.stderr.lower() and "train.py\", line" not in result.stderr, result.stderr[-3000:]
    ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    taken = 3 - 3 % accum  # the batches of whole accumulation groups
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, taken, taken)
    assert metrics(out)[-1]["step"] == 3  # the batches read before the damaged one


def _cls_members(tar):
    """(sample key, offset, size) of every .cls member, from the shard's DALI index."""
    with open(str(tar)[:-4] + ".idx") as f:
        for fields in map(str.split, f.read().splitlines()[1:]):
            for i in range(0, len(fields), 4):
                if fields[i] == "cls":
                    yield fields[i + 3].rsplit(".", 1)[0], int(fields[i + 1]), int(fields[i + 2])


def _read(path, offset, size):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.mark.slow
def test_a_signal_during_set_up_is_a_clean_stop_with_its_status(shards, tmp_path):
    """SIGINT to the authors'-style launcher alone (as Kubernetes signals only PID 1) while the ranks build their
    loaders and model: nothing to save, no crash, exit 130."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([PY, "train.py", "--ngpu", "2", *COMMON, "--epochs", "1", "--output-dir", str(tmp_path),
                             str(shards)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    for line in proc.stdout:
        if line.startswith("loader: "):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "train.py: stopped by SIGINT before training started: nothing to save yet" in stderr
    assert "Traceback" not in stderr and "killed" not in stderr, stderr[-3000:]
    assert not (tmp_path / "T_checkpoint.pth.tar").exists()


def _catches(pid, signum):
    """True once process `pid` has a handler of its own for `signum` (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            mask = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _torch_loaded(pid):
    with open(f"/proc/{pid}/maps") as maps:
        return "libtorch" in maps.read()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_torch_imports_is_the_same_clean_stop(shards, tmp_path, signum):
    """The signal the moment train.py starts handling it (its SIGTERM handler is the first it installs; Python
    catches SIGINT from the start), before libtorch is even loaded: exit 128 + N with the one line, not a rank
    killed by SIGTERM or a KeyboardInterrupt traceback from inside an import. Tried up to three times, until one
    signal lands before libtorch loads."""
    before_torch = 0
    for _attempt in range(3):
        proc = subprocess.Popen([PY, "train.py", *COMMON, "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                                 str(shards)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        early = not _torch_loaded(proc.pid)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, stderr[-3000:]
        assert stderr.strip().splitlines() == [
            f"train.py: stopped by {signal.Signals(signum).name} before training started: nothing to save yet"], \
            stderr[-3000:]
        before_torch += early
        if before_torch:
            break
    assert before_torch, "every signal came after libtorch had loaded: the import window was not tried"


@pytest.mark.slow
def test_an_output_dir_that_cannot_be_written_is_one_line_before_anything_is_built(shards, tmp_path):
    """A folder under one the user may not write (root without its file capabilities): exit 2 before the world,
    loaders and model are set up (tests/test_nothing_lost.py has the other cases, in-process)."""
    from test_make_shards import _without_root_file_access
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = run(_without_root_file_access([PY, "train.py", *COMMON, "--output-dir", str(locked / "run"),
                                            str(shards)]))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == [f"train.py: error: --output-dir {locked}/run cannot be written: "
                                                "Permission denied"], result.stderr[-2000:]
    assert "config " not in result.stdout


@pytest.mark.slow
def test_benchmark_json_has_every_key_with_sane_values(shards):
    result = torchrun([*COMMON, "--benchmark", "--benchmark-warmup", "1", "--benchmark-steps", "3", str(shards)])
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith('{"benchmark"'))
    data = json.loads(line)
    for key in ("images_per_sec", "images_per_sec_per_device", "loader_images_per_sec", "model_images_per_sec"):
        assert data[key] > 0, key
    assert data["images_per_sec_per_device"] == pytest.approx(data["images_per_sec"] / 2, rel=1e-3)
    assert data["bound_by"] in ("loader", "model")
    assert (data["world_size"], data["batch_size"], data["image_size"], data["depth"], data["att_type"],
            data["steps"], data["backend"], data["amp"]) == (2, 16, 32, 18, "CBAM", 3, "torch", "off")
    assert data["cbam_impl"] == "torch"  # auto resolves to plain PyTorch without CUDA
    assert data["device"].startswith("cpu")
    assert "bound by:" in result.stdout and "CBAM impl torch" in result.stdout
    config = json.loads(result.stdout.split("config ", 1)[1].splitlines()[0])
    assert (config["cbam_impl"], config["cbam_impl_resolved"]) == ("auto", "torch")
    # Every default is resolved and printed: on a CPU no compilation and no cuDNN.
    assert (config["compile"], config["compile_resolved"]) == ("auto", "off")
    assert (data["compile"], data["cudnn_benchmark"], config["cudnn_benchmark_resolved"]) == ("off", False, False)
    assert data["first_step_seconds"] > 0 and set(data["warmup_seconds"]) == {"loader", "end_to_end", "model"}
    assert "compile off: first train step" in result.stdout


@pytest.mark.slow
def test_compile_blocks_reuses_the_persistent_cache_on_a_second_run(shards, tmp_path):
    """--compile blocks with --compile-cache: the first run compiles each distinct block once (ResNet-18: 7 kinds,
    a forward and a backward graph each), the second finds every graph in the cache."""
    cache = tmp_path / "cache"
    reports = []
    for _ in range(2):
        # The plain ResNet-18 (--att-type none after COMMON's CBAM): the same 7 distinct blocks, compiled in about
        # half the time; compiled CBAM has tests of its own (test_cbam_compiled.py, test_compile.py).
        result = run([PY, "train.py", *COMMON, "--att-type", "none", "--benchmark", "--benchmark-warmup", "1",
                      "--benchmark-steps", "1", "--compile", "--compile-cache", str(cache), str(shards)], timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        reports.append(json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"benchmark"'))))
    first, second = reports
    assert first["compile"] == second["compile"] == "blocks"
    assert first["compile_cache"]["misses"] == 14  # 7 distinct blocks of 8: identical blocks share one graph
    assert second["compile_cache"]["misses"] == 0
    assert second["compile_cache"]["hits"] + second["compile_cache"]["autograd_hits"] > 0
    assert os.listdir(cache / "triton") or any(name != "triton" for name in os.listdir(cache))


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--amp", "fp8"], "argument --amp: invalid choice"),
    (["--depth", "42"], "argument --depth: invalid choice"),
    (["--att-type", "eca"], "argument --att-type: invalid choice"),
    (["--cbam-impl", "bogus"], "argument --cbam-impl: invalid choice"),
    (["--cbam-impl", "triton"], "implementation 'triton'"),  # no CUDA here: resolved once the device is known
    (["--compile", "fast"], "argument --compile: invalid choice"),
    (["--compile", "model", "--compile-cache", "/proc/no-cache-here"],
     "--compile-cache folder cannot be created: /proc/no-cache-here"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--ngpu", "2", "--batch-size", "15"], "--batch-size 15 is the global batch and must divide by the world size 2"),
    (["--evaluate"], "--evaluate needs --resume"),
    (["--resume", "/nonexistent/ckpt.pth.tar"], "--resume checkpoint not found: /nonexistent/ckpt.pth.tar"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_exit_2_with_one_line(shards, flags, message, capsys):
    import train  # in-process: a process per case cost a minute (the exit status of a real one: the tests below)
    status = train.cli([*flags, str(shards)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], lines


@pytest.mark.slow
def test_unusable_backend_or_damaged_shards_exit_2_with_one_line(shards, tmp_path):
    result = run([PY, "train.py", *COMMON, "--backend", "dali", str(shards)])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "backend 'dali'" in lines[0] and "GPU" in lines[0], lines
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in shards.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    first_train = sorted(broken.glob("train-*.tar"))[0]
    first_train.write_bytes(first_train.read_bytes()[:-2048])  # cut short
    result = run([PY, "train.py", *COMMON, str(broken)])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and first_train.name in lines[0], lines


@pytest.mark.slow
def test_missing_data_folder_exits_2(tmp_path):
    result = run([PY, "train.py", str(tmp_path / "nope")])
    assert result.returncode == 2 and "DATA folder not found" in result.stderr


@pytest.mark.slow
def test_learnability_reaches_90_percent(tmp_path):
    from shards.synthetic import write_tree
    write_tree(str(tmp_path / "images"), classes=5, train_per_class=60, val_per_class=12, size=48, seed=7)
    make_shards(tmp_path / "images", tmp_path / "shards", per_shard=100)
    result = run([PY, "train.py", "--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--backend",
                  "torch", "--workers", "2", "--batch-size", "32", "--lr", "0.1", "--lr-schedule", "cosine",
                  "--warmup-epochs", "1", "--epochs", "6", "--print-freq", "5", "--prefix", "T",
                  "--output-dir", str(tmp_path / "out"), str(tmp_path / "shards")], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    val = metrics(tmp_path / "out", "val")
    assert max(r["top1"] for r in val) >= 90.0, [r["top1"] for r in val]


@pytest.mark.slow
def test_evaluate_loads_a_checkpoint_of_the_authors_code(reference_run, shards, tmp_path):
    """A checkpoint saved by the original repository (its key names, 'module.' prefix, no config) evaluates
    through the model's key mapping and gives the same top-1 as our own checkpoint of the same weights."""
    from test_model import _to_original_names
    out, _ = reference_run
    ours = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    original = {"epoch": 2, "arch": "resnet18", "best_prec1": 0.0, "state_dict": _to_original_names(ours["model"])}
    assert any(k.startswith("module.layer1.0.cbam.ChannelGate.mlp.1.") for k in original["state_dict"])
    torch.save(original, tmp_path / "original.pth.tar")
    result = run([PY, "train.py", *COMMON, "--evaluate", "--resume", str(tmp_path / "original.pth.tar"),
                  str(shards)])
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(" * Prec@1"))
    assert float(line.split()[2]) == pytest.approx(metrics(out, "val")[-1]["top1"], abs=5e-4)


@pytest.mark.slow
def test_plot_metrics_renders_a_png(reference_run, tmp_path):
    out, _ = reference_run
    png = tmp_path / "metrics.png"
    result = run([PY, "tools/plot_metrics.py", str(out / "T_metrics.jsonl"), "-o", str(png)])
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "train"}\nnot json\n')
    result = run([PY, "tools/plot_metrics.py", str(bad)])
    assert result.returncode != 0 and f"{bad}:2: not a JSON line" in result.stderr


@pytest.mark.slow
def test_evaluate_needs_only_a_val_split(reference_run, shards, tmp_path):
    out, _ = reference_run
    images = tmp_path / "images"
    from shards.synthetic import write_tree
    write_tree(str(images), classes=4, train_per_class=1, val_per_class=3, size=40, seed=5)
    result = run([PY, "tools/make_shards.py", str(images), str(tmp_path / "val_only"), "--splits", "val"])
    assert result.returncode == 0, result.stderr
    result = run([PY, "train.py", *COMMON, "--evaluate", "--resume", str(out / "T_checkpoint.pth.tar"),
                  str(tmp_path / "val_only")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(loss" in result.stdout and "12 images)" in result.stdout


@pytest.mark.slow
def test_ngpu_launcher_passes_on_the_workers_exit_status(shards):
    result = run([PY, "train.py", *COMMON, "--ngpu", "2", "--backend", "dali", str(shards)])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "backend 'dali'" in result.stderr


@pytest.mark.slow
def test_unusable_resume_files_are_named_in_one_line(reference_run, shards, tmp_path):
    out, _ = reference_run
    empty = tmp_path / "empty.pth.tar"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.pth.tar"
    noise.write_bytes(os.urandom(4096))
    other = tmp_path / "other.pth.tar"
    ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    torch.save(ckpt, other)
    damaged = tmp_path / "damaged.pth.tar"  # our own checkpoint with 2 kB of noise inside its weights
    damaged.write_bytes((out / "T_checkpoint.pth.tar").read_bytes())
    damage_tensor_bytes(damaged, 2048, at=0.7)
    cases = [(empty, [], "the file is empty (0 bytes)"),
             (damaged, [], "is damaged: its content does not match the sha256 it was saved with"),
             (noise, [], "not a checkpoint of plain tensors and numbers, or damaged"),
             (other, ["--depth", "34", "--att-type", "none"],
              "is ResNet-18 CBAM, this run asks for --depth 34, --att-type none: pass the checkpoint's --arch")]
    for path, flags, message in cases:
        result = run([PY, "train.py", *COMMON, *flags, "--evaluate", "--resume", str(path), str(shards)])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert str(path) in lines[0] and message in lines[0] and "weights_only=False" not in lines[0], lines[0]


@pytest.mark.slow
def test_a_bad_flag_under_torchrun_is_reported_once(shards):
    """Every rank finds the same bad flag; only the node's first rank prints it (torchrun adds its own report)."""
    result = torchrun(["--lr", "-1", str(shards)])
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("train.py: error:")]
    assert errors == ["train.py: error: --lr must be > 0, got -1.0"], result.stderr[-3000:]


@pytest.mark.slow
def test_a_class_without_train_samples_is_named_at_start(tmp_path):
    from shards.synthetic import write_tree
    write_tree(str(tmp_path / "images"), classes=4, train_per_class=16, val_per_class=4, size=40, seed=5)
    empty = sorted(os.listdir(tmp_path / "images" / "train"))[2]
    for name in os.listdir(tmp_path / "images" / "train" / empty):
        os.remove(tmp_path / "images" / "train" / empty / name)
    run_make_shards(tmp_path / "images", tmp_path / "shards", 20, "--allow-empty-classes")
    result = run([PY, "train.py", *COMMON, "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                  str(tmp_path / "shards")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: the train split has no sample of 1 of 4 classes: {empty}" in result.stdout
    assert "warning: the val split" not in result.stdout
