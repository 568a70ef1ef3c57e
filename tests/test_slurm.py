"""launch/slurm.sbatch on a real one-node Slurm (tests/slurm_cluster.py), 2 gloo ranks on the CPU: the time-limit
warning (SIGUSR1 to the batch shell, as --signal=B:USR1 sends it) saves and requeues the job, a pre-emption
(scontrol requeue) saves and Slurm requeues it, and each start resumes at the saved batch, so the job ends
COMPLETED having trained every step exactly once, with the losses of an uninterrupted run."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_make_shards
from ports import unclaimed_port
from slurm_cluster import SlurmCluster, Unavailable

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As tests/test_train_end_to_end.py: ResNet-18-CBAM on 32 px crops; 64 samples / global batch 4 = 16 steps, each
# logged (a step takes 0.3 s or more here: time to signal the job between steps).
EPOCHS, STEPS = 1, 16
TRAIN = ["--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--backend", "torch", "--workers", "2",
         "--batch-size", "4", "--lr", "0.05", "--lr-schedule", "step", "--print-freq", "1", "--prefix", "T",
         "--epochs", str(EPOCHS)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except Unavailable as exc:
        pytest.skip(f"no Slurm here: {exc}")
    yield cluster
    cluster.stop()
    assert not cluster.processes_left(), "processes of the test's Slurm outlived it"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from shards.synthetic import write_tree
    base = tmp_path_factory.mktemp("data")
    write_tree(str(base / "images"), classes=4, train_per_class=16, val_per_class=6, size=40, seed=3)
    run_make_shards(base / "images", base / "shards", 20)  # 64 train samples in 4 shards, 24 val in 2
    return base / "shards"


def train_rows(out_dir):
    """The train rows of the metrics file (a last line torn by a kill left out, as a resume does)."""
    try:
        with open(os.path.join(out_dir, "T_metrics.jsonl")) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("kind") == "train":
            rows.append(row)
    return rows


def wait_for(condition, what, timeout, job=None, cluster=None, log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    state = cluster.job(job) if cluster else {}
    tail = open(log).read()[-4000:] if log and os.path.exists(log) else ""
    # Which processes were there and where they waited: a rank that never printed is told from a launcher that
    # never started it.
    processes = subprocess.run(["ps", "-eo", "pid,ppid,stat,etime,wchan:24,args", "--sort", "pid"],
                               capture_output=True, text=True).stdout
    daemons = "".join(f"\n{name}.log:\n{cluster.log(name)[-1500:]}" for name in ("slurmctld", "slurmd")) \
        if cluster else ""
    raise AssertionError(f"no {what} after {timeout} s; job: {state.get('JobState')} {state.get('Reason')} "
                         f"restarts {state.get('Restarts')}; log:\n{tail}\nprocesses:\n{processes[-6000:]}{daemons}")


def test_time_limit_warning_and_preemption_requeue_and_resume_exactly(slurm, shards, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out, ref_out, log = tmp_path / "out", tmp_path / "ref", str(tmp_path / "job.out")
    job_env = dict(slurm.env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GPUS_PER_NODE="2",
                   RDZV_PORT=str(unclaimed_port()))
    job = slurm.command("sbatch", "--parsable", f"--output={log}", "launch/slurm.sbatch", *TRAIN,
                        "--output-dir", str(out), str(shards), cwd=ROOT, env=job_env).stdout.strip().split(";")[0]
    # The uninterrupted reference runs meanwhile (its losses do not depend on the load).
    with open(tmp_path / "ref.out", "w") as ref_log:
        reference_run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc-per-node=2", "train.py", *TRAIN, "--output-dir", str(ref_out),
                                          str(shards)], cwd=ROOT, env=env, stdout=ref_log, stderr=subprocess.STDOUT)
    try:
        def restarts():
            return int(slurm.job(job).get("Restarts", 0))

        def ended():
            state = slurm.job(job)
            return state if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None

        # 1. The time-limit warning, as --signal=B:USR1@300 delivers it: to the batch shell alone.
        wait_for(lambda: len(train_rows(out)) >= 3, "3 train steps", 120, job, slurm, log)
        slurm.command("scancel", "--batch", "--signal=USR1", job)
        wait_for(lambda: restarts() >= 1, "requeue after SIGUSR1", 120, job, slurm, log)
        first_stop = len(train_rows(out))  # the first start has ended: every step it took is in the file
        assert 3 <= first_stop < STEPS, first_stop
        # 2. Pre-emption once the second start has trained 3 more steps.
        wait_for(lambda: len(train_rows(out)) >= first_stop + 3, "3 more train steps", 120, job, slurm, log)
        slurm.command("scontrol", "requeue", job)
        wait_for(lambda: restarts() >= 2, "requeue after scontrol requeue", 120, job, slurm, log)
        final = wait_for(ended, "end of the job", 180, job, slurm, log)
        reference_run.wait(timeout=300)
    finally:
        if reference_run.poll() is None:
            reference_run.kill()
            reference_run.wait()
    text = open(log).read()
    assert (final["JobState"], final["ExitCode"], final["Restarts"]) == ("COMPLETED", "0:0", "2"), text[-4000:]
    assert reference_run.returncode == 0, (tmp_path / "ref.out").read_text()[-3000:]

    assert "slurm.sbatch: time-limit warning (SIGUSR1)" in text and f"job {job} requeued" in text
    assert "slurm.sbatch: stopped by SIGTERM from Slurm (" in text and "slurm.sbatch: training finished" in text
    saved = re.findall(r"stop requested: saved .* at epoch (\d+), batch (\d+);", text)
    resumed = re.findall(r"next: epoch (\d+), batch (\d+)\)", text)
    assert len(saved) == 2 and resumed == saved, text[-4000:]  # each start goes on where the one before saved
    assert saved[0] == ("0", str(first_stop))
    assert re.findall(r"slurm.sbatch: job \d+ start (\d+)", text) == ["0", "1", "2"]

    reference = {row["step"]: row["loss"] for row in train_rows(ref_out)}
    assert sorted(reference) == list(range(1, STEPS + 1))
    steps = [row["step"] for row in train_rows(out)]
    assert steps == list(range(1, STEPS + 1))  # every step exactly once, in order
    for row in train_rows(out):
        assert row["loss"] == pytest.approx(reference[row["step"]], rel=1e-5, abs=1e-6), f"step {row['step']}"
    ckpt = torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (EPOCHS, 0)
