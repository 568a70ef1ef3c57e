"""One writer per run: a training run holds its --output-dir/--prefix while it lives (training/output_dir.py
hold_run), so a second run of the prefix, started together with it or later with --resume auto, is refused in one
line naming the live one; a killed run keeps nothing."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from training import output_dir
from training.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
HOLDER = ("import sys, time; from training.output_dir import hold_run; hold_run(sys.argv[1], sys.argv[2]); "
          "print('held', flush=True); time.sleep(600)")


def start_holder(folder, prefix):
    holder = subprocess.Popen([PY, "-c", HOLDER, str(folder), prefix], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_live_holder_is_named_and_a_killed_one_keeps_nothing(tmp_path, capsys):
    import train
    holder = start_holder(tmp_path, "P7")
    try:
        with pytest.raises(UsageError) as refused:
            output_dir.hold_run(str(tmp_path), "P7")
        message = str(refused.value)
        assert f"prefix P7 is in use by a live run (pid {holder.pid} on " in message and "\n" not in message
        # The advice of the "folder holds a run" refusal, --resume auto, does not start a second writer either.
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "manifest.json").write_text("{}")
        assert train.cli(["--resume", "auto", "--prefix", "P7", "--output-dir", str(tmp_path),
                          str(tmp_path / "data")]) == 2
        assert capsys.readouterr().err == f"train.py: error: {message}\n"
        other = start_holder(tmp_path, "P8")  # another prefix in the same folder is another run
        other.kill()
        other.wait()
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean exit: its lock file stays, its lock does not
        holder.wait()
    assert os.path.exists(output_dir.lock_path(str(tmp_path), "P7"))
    assert output_dir.hold_run(str(tmp_path), "P7") == output_dir.lock_path(str(tmp_path), "P7")


@pytest.mark.slow
def test_a_clean_exit_removes_the_lock_file(tmp_path):
    subprocess.run([PY, "-c", "import sys; from training.output_dir import hold_run; hold_run(sys.argv[1], 'Q')",
                    str(tmp_path)], cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_two_runs_of_one_prefix_started_together_leave_one_writer(generated_shards, tmp_path):
    """Started 0.3 s apart, both would pass the "folder holds a run" check: exactly one trains, the other is
    refused in one line naming it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [PY, "train.py", "--depth", "18", "--att-type", "CBAM", "--image-size", "32", "--backend", "torch",
               "--workers", "1", "--batch-size", "12", "--epochs", "1", "--print-freq", "1", "--prefix", "W",
               "--output-dir", str(tmp_path), generated_shards]
    runs = []
    for _ in range(2):
        runs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
        time.sleep(0.3)
    lock = output_dir.lock_path(str(tmp_path), "W")
    results = [(run, *run.communicate(timeout=300)) for run in runs]
    winners = [r for r in results if r[0].returncode == 0]
    losers = [r for r in results if r[0].returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(r[0].returncode, r[2][-2000:]) for r in results]
    winner, loser = winners[0][0], losers[0]
    lines = loser[2].strip().splitlines()
    assert loser[0].returncode == 2 and len(lines) == 1, loser[2][-2000:]
    assert re.search(rf"prefix W is in use by a live run \(pid {winner.pid} on .*; lock file {re.escape(lock)}\)",
                     lines[0]), lines[0]
    steps = [(row["epoch"], row["step"]) for row in map(json.loads, open(tmp_path / "W_metrics.jsonl"))
             if row["kind"] == "train"]
    assert len(steps) == len(set(steps)) == 4  # 48 samples / 12 = 4 steps, each row once
    assert not os.path.exists(lock)  # the winner ended cleanly
