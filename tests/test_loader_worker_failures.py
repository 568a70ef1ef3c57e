"""A torch-backend loader worker that fails for another reason than a damaged shard (a cache folder it cannot
write, killed by the system for memory) ends the run with one line and exit status 1, and leaves no process
behind: the workers ignore SIGTERM (the rank saves on it), so nothing at interpreter exit could end them."""
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
from object_stores import HttpServer

from pipeline import LoaderFailed, build_loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_a_worker_that_cannot_write_the_cache_ends_train_py_with_one_line(generated_shards, tmp_path):
    with HttpServer(generated_shards, str(tmp_path)) as server:
        cache = tmp_path / "cache"
        cache.mkdir()
        # Where the shard cache keeps this URL's shards, a file: the worker's makedirs fails (FileExistsError).
        (cache / hashlib.sha256(server.url.encode()).hexdigest()[:16]).write_text("in the way")
        command = [sys.executable, "train.py", "--depth", "18", "--image-size", "32", "--backend", "torch",
                   "--workers", "2", "--batch-size", "8", "--epochs", "1", "--cache-dir", str(cache),
                   "--output-dir", str(tmp_path / "out"), server.url]
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("train.py: error: torch loader worker ") and "FileExistsError" in lines[0] \
        and "pipeline/shard_cache.py:" in lines[0], lines[0]
    assert time.monotonic() - started < 120


def test_a_worker_killed_by_the_system_is_one_error_and_no_worker_outlives_the_epoch(generated_shards):
    loader = build_loader(generated_shards, "train", 4, backend="torch", workers=2, device="cpu", image_size=16)
    loader.set_epoch(0)
    batches = iter(loader)
    next(batches)
    victim = multiprocessing.active_children()[0]
    os.kill(victim.pid, signal.SIGKILL)  # as the kernel's OOM killer does
    # The DataLoader words it "(pid N) is killed by signal" or "(pid(s) N) exited unexpectedly", as it notices.
    with pytest.raises(LoaderFailed, match=rf"torch loader: DataLoader worker \(pid(\(s\))? {victim.pid}\) "):
        for _ in batches:
            pass
    assert multiprocessing.active_children() == []


def test_a_worker_killed_between_epochs_is_one_error_when_the_next_epoch_starts(generated_shards):
    """The workers serve every epoch, so one can die while they wait for the next (the system kills it for
    memory): nothing is raised into whatever the rank does meanwhile (torch's SIGCHLD handler would raise it
    anywhere in a training step), the next epoch starts with one LoaderFailed naming it, and no worker is left."""
    loader = build_loader(generated_shards, "train", 4, backend="torch", workers=2, device="cpu", image_size=16)
    loader.set_epoch(0)
    assert sum(1 for _ in loader) == len(loader)
    victim, survivor = multiprocessing.active_children()[:2]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)
    time.sleep(0.5)  # meanwhile the rank trains or validates: no error may surface here
    loader.set_epoch(1)
    with pytest.raises(LoaderFailed, match=rf"torch loader: DataLoader worker \(pid {victim.pid}\) exited "
                                           "unexpectedly while the workers waited for the next epoch"):
        next(iter(loader))
    assert multiprocessing.active_children() == [] and not survivor.is_alive()
    loader.set_epoch(2)  # the loader still works: a new epoch starts new workers
    assert sum(1 for _ in loader) == len(loader)
    loader.close()
    assert multiprocessing.active_children() == []
