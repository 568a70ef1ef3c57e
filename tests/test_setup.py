"""The set-up script is idempotent, and CI runs the README's test command."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")


def _tree_state(folder):
    """(path, size, mtime) of every entry directly in `folder`: what an install would change."""
    return sorted((name, os.stat(os.path.join(folder, name)).st_size, os.stat(os.path.join(folder, name)).st_mtime_ns)
                  for name in os.listdir(folder))


@pytest.mark.skipif(not os.path.isfile(os.path.join(VENV, ".setup-stamp")),
                    reason="no .venv/.setup-stamp: the tests are not running from the project's own set-up")
def test_second_setup_run_changes_nothing():
    site_packages = next(os.path.join(VENV, "lib", name, "site-packages")
                         for name in os.listdir(os.path.join(VENV, "lib")) if name.startswith("python"))
    before = _tree_state(site_packages), _tree_state(VENV)
    result = subprocess.run(["bash", "tools/setup_env.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # nothing to install, nothing to say
    assert (_tree_state(site_packages), _tree_state(VENV)) == before


def test_ci_runs_make_test_and_make_test_lints_then_tests(tmp_path):
    recorder = tmp_path / "bin" / "make"
    recorder.parent.mkdir()
    recorder.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/make-args\n')
    recorder.chmod(0o755)
    env = dict(os.environ, PATH=f"{recorder.parent}:{os.environ['PATH']}")
    subprocess.run(["bash", os.path.join(ROOT, ".ci", "run")], env=env, check=True, timeout=60)
    assert (tmp_path / "make-args").read_text().split() == ["test"]
    dry_run = subprocess.run(["make", "-n", "-C", ROOT, "test"], capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    commands = dry_run.stdout
    assert "setup_env.sh" in commands and "-m ruff check ." in commands and "-m pytest" in commands
    assert commands.index("-m ruff check .") < commands.index("-m pytest")
    assert sys.version_info >= (3, 10)
