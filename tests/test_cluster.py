"""Beyond one machine, with real torchrun agents on this machine (gloo, loopback): two nodes, a rank killed
outright, an agent killed outright, a stuck rank, a node lost under elastic membership, and logs that are not a
terminal. Each run is compared with an uninterrupted one, step by step."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ports import unclaimed_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# ResNet-18-CBAM on 32 px crops; the generated shards hold 48 train samples: 12 steps of a global batch of 4.
COMMON = ["--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--backend", "torch", "--workers", "2",
          "--batch-size", "4", "--lr", "0.05", "--lr-schedule", "step", "--print-freq", "1", "--prefix", "T",
          "--epochs", "1"]
STEPS = 12
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
pytestmark = pytest.mark.slow
# Elastic runs as docs/clusters.md gives them: torch 2.14's agents share one store with their workers, and then an agent
# that joins a running job waits for a key of the new round that the first agent never writes (it built its
# store's address in the first round only).
UNSHARED_STORE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def torchrun(*launch):
    return [PY, "-m", "torch.distributed.run", *launch, "train.py"]


def standalone(restarts=0):
    return torchrun("--standalone", "--nproc-per-node=2", f"--max-restarts={restarts}", "--monitor-interval=0.5")


def agent(port, nnodes="2", restarts=0, *extra):
    """One torchrun agent of a multi-node job: one process, c10d rendezvous on loopback. Its runs pass --workers 1
    (per node): the loader workers of a rank, as 2 per node give each of 2 ranks of one agent, so that the order of
    the samples is the one-node run's."""
    return torchrun(f"--nnodes={nnodes}", "--nproc-per-node=1", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=job{port}", f"--max-restarts={restarts}",
                    "--monitor-interval=0.5", *extra)


def start(command, out, *flags, data, env=()):
    return subprocess.Popen([*command, *COMMON, "--output-dir", str(out), *flags, str(data)], cwd=ROOT,
                            env={**ENV, **dict(env)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc, timeout=240):
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return proc.returncode, stdout, stderr


def rows(out, kind="train"):
    path = out / "T_metrics.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in (json.loads(line) for line in f if line.endswith("\n")) if r["kind"] == kind]


def wait_for(condition, proc, what, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"ended before {what}: {proc.stdout.read()[-2000:]}\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.05)


def rank_pid(agent_pid, rank):
    """The pid of the worker with global rank `rank` that the torchrun agent `agent_pid` started."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if parent == agent_pid and f"RANK={rank}".encode() in env:
            return int(entry)
    return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sigterm_pending(pid):
    """True when SIGTERM waits, undelivered, on process `pid` (a stopped process keeps it pending)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = dict(line.split(":", 1) for line in f if line.startswith(("SigPnd", "ShdPnd")))
    except OSError:
        return False
    return any(int(mask, 16) >> (signal.SIGTERM - 1) & 1 for mask in masks.values())


def losses(out):
    return {r["step"]: r["loss"] for r in rows(out)}


def assert_same_steps_as(reference, out):
    """Every step trained exactly once overall, each with the loss of the uninterrupted run."""
    steps = [r["step"] for r in rows(out)]
    assert sorted(steps) == list(range(1, STEPS + 1)) and len(steps) == len(set(steps)), steps
    got = losses(out)
    for step, loss in reference.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), f"step {step}"


def final_checkpoint(out):
    return torch.load(out / "T_checkpoint.pth.tar", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(generated_shards, tmp_path_factory):
    """One epoch on 2 ranks (one agent), uninterrupted: the loss of every step, and its output."""
    out = tmp_path_factory.mktemp("reference")
    code, stdout, stderr = finish(start(standalone(), out, data=generated_shards))
    assert code == 0, stderr[-3000:]
    assert len(rows(out)) == STEPS
    return losses(out), stdout, stderr, out


def test_progress_in_a_log_that_is_not_a_terminal_is_plain_lines_with_step_and_time(reference):
    _, stdout, stderr, _ = reference
    assert "\r" not in stderr and "batch/s" not in stderr and "%|" not in stderr  # no progress-bar frames
    lines = [line for line in stdout.splitlines() if line.startswith("Epoch: [0]")]
    assert len(lines) == STEPS  # --print-freq 1
    assert lines[-1].endswith(f"\tStep {STEPS}\tElapsed " + lines[-1].rsplit("\t", 1)[1].split(" ")[1])
    assert all("\tElapsed 0:0" in line for line in lines)


def test_two_nodes_train_validate_and_resume_exactly(reference, generated_shards, tmp_path):
    """Two torchrun agents (one rank each) rendezvous on loopback; SIGTERM to one node (its agent and rank, as a
    cluster pre-empts a node) stops both ranks at the same step with a checkpoint; both agents again with
    --resume auto finish the epoch with the losses of the one-node run. Rank 0 alone prints and writes."""
    port = unclaimed_port()
    out = tmp_path / "out"
    first = start(agent(port), out, "--save-every", "0", "--workers", "1", data=generated_shards)
    second = start(agent(port), out, "--save-every", "0", "--workers", "1", data=generated_shards)
    wait_for(lambda: len(rows(out)) >= 3, first, "three train steps")
    os.killpg(second.pid, signal.SIGTERM)
    results = [finish(first), finish(second)]
    stopped = final_checkpoint(out)
    assert stopped["epoch"] == 0 and 3 <= stopped["batch"] < STEPS, [r[2][-2000:] for r in results]
    assert stopped["config"]["world_size"] == 2
    assert sum("stop requested: saved" in stdout for _, stdout, _ in results) == 1  # printed by rank 0 alone
    first = start(agent(port), out, "--resume", "auto", "--workers", "1", data=generated_shards)
    second = start(agent(port), out, "--resume", "auto", "--workers", "1", data=generated_shards)
    (code0, stdout0, stderr0), (code1, stdout1, stderr1) = finish(first), finish(second)
    assert code0 == code1 == 0, stderr0[-3000:] + stderr1[-3000:]
    printed = stdout0 + stdout1
    assert printed.count(f"next: epoch 0, batch {stopped['batch']}") == 1 and printed.count("config {") == 1
    assert printed.count(" * Prec@1 ") == 1  # validated once, by both ranks, printed by rank 0
    assert_same_steps_as(reference[0], out)
    assert [r["images"] for r in rows(out, "val")] == [20]  # every val sample counted once over the two nodes
    assert sorted(os.listdir(out)) == sorted(["T_checkpoint.pth.tar", "T_checkpoint.prev.pth.tar", "T_config.json",
                                              "T_metrics.jsonl", "T_model_best.pth.tar"])


def test_nodes_that_do_not_share_the_output_dir_are_refused_before_training(reference, generated_shards, tmp_path):
    """Each rank resumes from the checkpoint in --output-dir; a relative one that names another folder on each
    node (its own working directory) would start the ranks at different points: one line per node, exit 2."""
    import shutil
    port = unclaimed_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    shutil.copytree(reference[3], nodes[0] / "out")
    nodes[1].mkdir()
    command = [*agent(port)[:-1], os.path.join(ROOT, "train.py"), *COMMON, "--epochs", "2", "--resume", "auto",
               "--output-dir", "out", str(generated_shards)]
    procs = [subprocess.Popen(command, cwd=node, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for node in nodes]
    for proc in procs:
        code, _, stderr = finish(proc)
        assert code != 0
        lines = [line for line in stderr.splitlines() if line.startswith("train.py: error: the ranks would start")]
        assert len(lines) == 1, stderr[-3000:]  # once per node
        assert ": step 12, rank " in lines[0] or ": no checkpoint, rank 1: step 12)" in lines[0]
        assert "no checkpoint" in lines[0] and "--output-dir must be one folder that every node sees" in lines[0]


def test_a_rank_killed_outright_restarts_by_itself_from_the_last_save_exactly(reference, generated_shards, tmp_path):
    """SIGKILL of rank 0 mid-epoch under torchrun --max-restarts 1 (no --resume): the restarted ranks find each
    other (not the dead incarnation's addresses, which made most such restarts fail), go on from the newest
    mid-epoch save (--save-every) and train every later step with the loss of the uninterrupted run. (Rank 1
    dies with its node in the elastic test below, and is the stuck one in the test after.)"""
    victim = 0
    out = tmp_path / "out"
    proc = start(standalone(restarts=1), out, "--save-every", "0.005", data=generated_shards)
    wait_for(lambda: (out / "T_checkpoint.pth.tar").exists() and len(rows(out)) >= 4, proc, "a mid-epoch save")
    os.kill(rank_pid(proc.pid, victim), signal.SIGKILL)
    code, stdout, stderr = finish(proc)
    assert code == 0, stdout[-2000:] + stderr[-3000:]
    assert "started this run before: it goes on from its newest intact checkpoint" in stdout
    resumed_at = int(stdout.split("(next: epoch 0, batch ", 1)[1].split(")")[0])
    assert 1 <= resumed_at < STEPS
    assert f"rank {1 - victim}: " in stderr and "another rank is gone" in stderr  # one line from the survivor
    assert_same_steps_as(reference[0], out)
    assert final_checkpoint(out)["epoch"] == 1


def test_ranks_whose_agent_is_killed_save_and_stop_instead_of_training_on(reference, generated_shards, tmp_path):
    """SIGKILL of the torchrun agent alone (its node's supervisor gone): its ranks notice at the next step, save
    it and exit; --resume auto then finishes the epoch exactly."""
    out = tmp_path / "out"
    proc = start(standalone(), out, "--save-every", "0", data=generated_shards)
    wait_for(lambda: len(rows(out)) >= 3, proc, "three train steps")
    ranks = [rank_pid(proc.pid, rank) for rank in (0, 1)]
    os.kill(proc.pid, signal.SIGKILL)
    _, stdout, _ = finish(proc, timeout=60)  # the ranks hold the pipes: it ends when they have exited
    assert not any(alive(pid) for pid in ranks)
    assert "the launcher of this rank" in stdout and "is gone: stopping as for SIGTERM" in stdout
    stopped = final_checkpoint(out)
    assert stopped["epoch"] == 0 and 3 <= stopped["batch"] < STEPS
    assert rows(out)[-1]["step"] == stopped["step"]  # every step taken is saved
    code, _, stderr = finish(start(standalone(), out, "--resume", "auto", data=generated_shards))
    assert code == 0, stderr[-3000:]
    assert_same_steps_as(reference[0], out)


def test_a_stuck_rank_ends_the_run_with_one_line_and_the_restart_finishes(reference, generated_shards, tmp_path):
    """SIGSTOP of one rank: the other waits --collective-timeout, names the collective in one line and ends;
    torchrun stops the group (the stopped rank killed), restarts it, and the run finishes from its last save."""
    out = tmp_path / "out"
    proc = start(standalone(restarts=1), out, "--collective-timeout", "6", "--save-every", "0.005",
                 data=generated_shards)
    wait_for(lambda: (out / "T_checkpoint.pth.tar").exists() and len(rows(out)) >= 3, proc, "a mid-epoch save")
    stuck = rank_pid(proc.pid, 1)
    os.kill(stuck, signal.SIGSTOP)
    try:
        # Once rank 0 has given up, torchrun stops the group: its SIGTERM waits, pending, on the stopped rank, and
        # torchrun would SIGKILL it after a fixed 30 s grace; the test does that at once.
        wait_for(lambda: sigterm_pending(stuck), proc, "torchrun's SIGTERM to the stopped rank", timeout=60)
        os.kill(stuck, signal.SIGKILL)
        code, stdout, stderr = finish(proc)
    finally:
        if alive(stuck):
            os.kill(stuck, signal.SIGKILL)
    assert code == 0, stdout[-2000:] + stderr[-3000:]
    line = next(line for line in stderr.splitlines() if line.startswith("train.py: error: rank 0: "))
    assert "no answer within --collective-timeout 6 s: another rank is stuck" in line
    assert "(epoch 0, step " in line
    assert_same_steps_as(reference[0], out)


def test_a_node_added_then_lost_under_elastic_membership(generated_shards, tmp_path):
    """--nnodes 1:2. A run that started alone is joined by a second agent: torchrun stops the first group (SIGTERM:
    its step is saved) and both nodes go on with the global batch of 4 split over 2 ranks. Then the second agent is
    killed outright with its rank (a node lost) after a mid-epoch save: the first restarts alone from it, keeps the
    global batch (2 per rank x 2 accumulated, no rank's batch larger than before), says that the epoch's order
    changed and how many of its steps it redoes, and finishes."""
    port = unclaimed_port()
    out = tmp_path / "out"
    # The first agent hosts the rendezvous (the node that cannot be lost); a restart waits 1 s for other nodes.
    elastic = "last_call_timeout=1,join_timeout=60,is_host="
    flags = ("--save-every", "0.005", "--workers", "1", "--epochs", "3")
    first = start(agent(port, "1:2", 2, f"--rdzv-conf={elastic}1"), out, *flags, data=generated_shards,
                  env=UNSHARED_STORE)
    wait_for(lambda: len(rows(out)) >= 1, first, "a train step of one rank")
    second = start(agent(port, "1:2", 2, f"--rdzv-conf={elastic}0"), out, *flags, data=generated_shards,
                   env=UNSHARED_STORE)

    def two_ranks_saved():
        config = json.loads((out / "T_config.json").read_text())
        return config["world_size"] == 2 and len(rows(out)) >= trained_alone + 3

    wait_for(lambda: json.loads((out / "T_config.json").read_text())["world_size"] == 2, first, "two ranks")
    trained_alone = len(rows(out))
    wait_for(two_ranks_saved, first, "three steps of two ranks")
    os.killpg(second.pid, signal.SIGKILL)
    finish(second)
    code, stdout, stderr = finish(first)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert "=> stop requested: " in stdout  # torchrun stopped the lone rank for the new node: its step was saved
    assert "=> world size 2, the checkpoint's 1: global batch 4 kept as 2 per rank x 2 ranks x 1 accumulated" \
        in stdout
    assert "=> world size 1, the checkpoint's 2: global batch 4 kept as 2 per rank x 1 ranks x 2 accumulated" \
        in stdout
    redo = stdout.split("the epoch goes on from its start, redoing the ", 1)[1].split(" ", 1)[0]
    assert 1 <= int(redo) < 2 * STEPS
    ckpt = final_checkpoint(out)
    assert ckpt["epoch"] == 3 and ckpt["config"]["world_size"] == 1
    assert (ckpt["config"]["batch_size_resolved"], ckpt["config"]["accum_steps_resolved"]) == (2, 2)
    assert [r["images"] for r in rows(out, "val")] == [20] * 3  # each epoch validated once, every sample once
