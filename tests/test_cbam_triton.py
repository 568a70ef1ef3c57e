"""The Triton kernels of the fused CBAM op, checked on the CPU by Triton's interpreter.

TRITON_INTERPRET=1 must be set before Triton is imported, so the checks (tests/interpreted/check_cbam_triton.py)
run in a pytest subprocess: every kernel against its PyTorch counterpart, the fused op and a whole ResNet-18-CBAM
against the authors' formulation in fp32 and bf16, and deliberately wrong kernels that must be caught.
"""
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_triton_kernels_under_the_interpreter():
    import triton  # noqa: F401  (a dependency of torch on Linux x86-64: its absence is a set-up error, not a skip)
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join("tests", "interpreted", "check_cbam_triton.py")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20 and "skipped" not in summary, summary
