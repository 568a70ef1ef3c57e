"""The benchmark scripts still run and report what BENCHMARKS.md quotes (tiny inputs; no timing is asserted:
benchmarks measure speed, tests only check that the instruments work)."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT
from tools.make_demo_data import write_tree


def run_benchmark(script, *args):
    """(stdout, the JSON line) of benchmarks/<script>, which must exit 0 and leave BENCHMARKS.md alone."""
    benchmarks_md = os.path.join(ROOT, "BENCHMARKS.md")
    with open(benchmarks_md, "rb") as f:
        before = f.read()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *map(str, args)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(benchmarks_md, "rb") as f:
        assert f.read() == before, "a run without --record changed BENCHMARKS.md"
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert json_lines, result.stdout[-2000:]
    return result.stdout, json.loads(json_lines[-1])


def test_shards_benchmark_reports_every_measurement_and_ratio(tmp_path):
    write_tree(str(tmp_path / "src"), classes=3, train_per_class=4, val_per_class=2, size=48, seed=5)
    stdout, data = run_benchmark("shards.py", "--src", tmp_path / "src", "--copies", 2, "--repeats", 1,
                                 "--max-count", 5)
    assert data["files"] == 2 * 3 * (4 + 2) and data["copies"] == 2
    assert set(data["results"]) == {"tar cf", "full decode (1 process)", "check, 1/8-scale decode (1 process)",
                                    "check, 1/8-scale decode (2 processes)", "start-up", "make_shards --workers 1",
                                    "make_shards --workers 2", "make_shards --workers 1: check phase",
                                    "make_shards --workers 1: write phase", "make_shards --workers 2: check phase",
                                    "make_shards --workers 2: write phase"}
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 for r in data["results"].values())
    for ratio in ("check_vs_full_decode", "check_two_processes_vs_one", "two_workers_vs_one",
                  "two_workers_vs_one_after_startup", "check_phase_two_vs_one", "write_phase_two_vs_one"):
        assert data[ratio] > 0
    assert "| make_shards --workers 2 |" in stdout and "2 vs 1 worker" in stdout


def test_model_benchmark_reports_the_cbam_over_none_ratio():
    stdout, data = run_benchmark("model.py", "--depth", 18, "--batch-size", 2, "--image-size", 32,
                                 "--variants", "none,CBAM,CBAM-ref", "--modes", "eager", "--repeats", 1,
                                 "--steps", 1, "--warmup", 1)
    rows = {row["variant"]: row for row in data["results"]}
    assert set(rows) == {"none", "CBAM", "CBAM-ref"} and data["channels_last"] is True
    assert rows["none"]["time_ratio_vs_none"] == 1.0
    assert rows["CBAM"]["time_ratio_vs_none"] > 0 and rows["CBAM"]["images_per_sec"] > 0
    assert "ResNet-18 CBAM-ref" in stdout


def test_loader_benchmark_compares_our_backends_with_stock_torchvision(tmp_path):
    write_tree(str(tmp_path / "src"), classes=2, train_per_class=8, val_per_class=0, size=48, seed=6)
    backends = "torch,dali-cpu" if _dali_importable() else "torch"
    stdout, data = run_benchmark("loader.py", "--src", tmp_path / "src", "--no-stock-pillow", "--backends", backends,
                                 "--batch-size", 4, "--image-size", 32, "--repeats", 1, "--epochs", 1,
                                 "--max-count", 5)
    rates = data["images_per_s"]
    stock = [name for name in rates if name.startswith("(b) stock torchvision")]
    assert len(stock) == 1 and not any(name.startswith("(a)") for name in rates)  # no download asked for
    assert set(rates) == set(stock) | set(backends.split(","))
    assert all(rate > 0 for rate in rates.values())
    assert set(data["cpu_ms_per_image"]) == set(rates) and all(v > 0 for v in data["cpu_ms_per_image"].values())
    assert set(data["ratios"][stock[0]]) == set(backends.split(","))
    assert "row (a) not run: --no-stock-pillow" in stdout


def _dali_importable():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True
