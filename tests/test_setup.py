"""The set-up script is idempotent: with .venv/ in place (make test runs it first), a rerun installs nothing."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, ".venv", ".setup-stamp")),
                    reason="no .venv/.setup-stamp: the tests are not running from the project's own set-up")
def test_second_setup_run_installs_nothing_and_takes_seconds():
    start = time.perf_counter()
    result = subprocess.run(["bash", "tools/setup_env.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 10, f"second set-up run took {elapsed:.1f} s"
    assert "Successfully installed" not in result.stdout + result.stderr


def test_make_and_ci_run_the_same_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "make test" in f.read()
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert "test: setup" in makefile and "-m pytest" in makefile
    assert sys.version_info >= (3, 10)
