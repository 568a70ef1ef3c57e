"""The benchmark scripts still run and report what BENCHMARKS.md quotes (tiny inputs; no timing is asserted:
benchmarks measure speed, tests only check that the instruments work)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, dali_importable

from shards.synthetic import write_tree


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


@pytest.mark.slow
def test_shards_benchmark_reports_every_measurement_and_ratio(tmp_path):
    write_tree(str(tmp_path / "src"), classes=3, train_per_class=4, val_per_class=2, size=48, seed=5)
    stdout, data = run_benchmark("make_shards.py", "--src", tmp_path / "src", "--copies", 2, "--repeats", 1,
                                 "--max-count", 5)
    assert data["files"] == 2 * 3 * (4 + 2) and data["copies"] == 2
    assert set(data["results"]) == {"tar cf", "full decode (1 process)", "check, 1/8-scale decode (1 process)",
                                    "check, 1/8-scale decode (2 processes)", "start-up", "make_shards --workers 1",
                                    "make_shards --workers 2", "make_shards --workers 1: check phase",
                                    "make_shards --workers 1: write phase", "make_shards --workers 2: check phase",
                                    "make_shards --workers 2: write phase"}
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 for r in data["results"].values())
    for ratio in ("check_vs_full_decode", "check_two_processes_vs_one", "two_workers_vs_one",
                  "check_phase_two_vs_one", "write_phase_two_vs_one"):
        assert data[ratio] > 0
    # Start-up subtracted: no figure (None) when a run on this tiny input is shorter than the start-up estimate.
    assert data["two_workers_vs_one_after_startup"] is None or data["two_workers_vs_one_after_startup"] > 0
    assert "| make_shards --workers 2 |" in stdout and "2 vs 1 worker" in stdout


@pytest.mark.slow
def test_model_benchmark_reports_the_cbam_over_none_ratio():
    stdout, data = run_benchmark("model_speed.py", "--networks", "resnet18,mobilenet_0.7", "--batch-size", 2,
                                 "--image-size", 32, "--variants", "CBAM,CBAM-ref,none", "--modes", "eager",
                                 "--repeats", 1, "--steps", 1, "--warmup", 1)
    # A row per network and variant, each network's none first: its baseline.
    assert [(row["network"], row["variant"]) for row in data["results"]] == [
        (network, variant) for network in ("resnet18", "mobilenet_0.7") for variant in ("none", "CBAM", "CBAM-ref")]
    assert [row["parameters"] for row in data["results"] if row["variant"] == "CBAM"] == [11_779_392, 2_712_554]
    mobilenet = {row["variant"]: row for row in data["results"] if row["network"] == "mobilenet_0.7"}
    assert mobilenet["none"]["time_ratio_vs_none"] == 1.0 and mobilenet["CBAM"]["time_ratio_vs_none"] > 0
    assert "| MobileNet (alpha 0.7) CBAM (auto: torch) | 2,712,554 | eager | " in stdout
    rows = {row["variant"]: row for row in data["results"] if row["network"] == "resnet18"}
    assert data["channels_last"] is True
    assert rows["none"]["time_ratio_vs_none"] == 1.0
    assert rows["CBAM"]["time_ratio_vs_none"] > 0 and rows["CBAM"]["images_per_sec"] > 0
    assert all(0 < row["host_ms_per_step"] <= row["ms_per_step"] * 1.05 for row in rows.values())
    assert (rows["CBAM"]["cbam_impl"], rows["CBAM-ref"]["cbam_impl"]) == ("torch", "reference")  # auto on a CPU
    assert "ResNet-18 CBAM-ref" in stdout and "ResNet-18 CBAM (auto: torch)" in stdout
    # Each row printed the moment it was measured, after its warm-up time, and before the final table.
    lines = stdout.splitlines()
    warmup = lines.index(next(line for line in lines if line.startswith("warm-up ResNet-18 CBAM-ref (eager): ")))
    assert lines[warmup + 1].startswith("| ResNet-18 CBAM-ref | 11,779,392 | eager | ")
    assert sum(line.startswith("| ResNet-18 CBAM-ref | 11,779,392 | eager | ") for line in lines) == 2


@pytest.mark.slow
def test_block_benchmark_counts_each_tail_in_passes_of_a_copy():
    stdout, data = run_benchmark("model_speed.py", "--blocks", "--batch-size", 2, "--stage-shapes", "32x8,64x4",
                                 "--variants", "none,CBAM-torch,CBAM-ref", "--modes", "eager", "--repeats", 1,
                                 "--steps", 1, "--warmup", 1)
    assert data["benchmark"] == "model-blocks" and data["channels_last"] is True
    rows = {(tuple(row["stage"]), row["variant"]): row for row in data["results"]}
    for stage in ((32, 8), (64, 4)):
        for variant in ("copy", "none", "CBAM-torch", "CBAM-ref"):
            row = rows[stage, variant]
            assert row["copy_ms"] > 0 and row["ms"] > 0 and row["pass_equivalents"] > 0, row
        assert rows[stage, "copy"]["pass_equivalents"] == 2.0  # one read + one write, by definition
    assert "| 64 x 4x4 | CBAM-ref tail | eager | " in stdout


@pytest.mark.slow
def test_profile_prints_a_table_of_the_top_ops():
    stdout, _ = run_benchmark("model_speed.py", "--blocks", "--batch-size", 1, "--stage-shapes", "32x4", "--variants",
                              "CBAM-torch", "--modes", "eager", "--repeats", 1, "--steps", 1, "--warmup", 1,
                              "--profile")
    lines = stdout.splitlines()
    title = lines.index("profile stage 32 x 4x4: CBAM-torch (eager): top 15 ops by self CPU time over 3 calls")
    assert lines[title + 1] == "| op | calls | self CPU ms per call | share |"
    table = lines[title + 3:title + 18]
    assert len(table) == 15 and all(line.startswith("| ") for line in table), table
    assert any(line.startswith("| aten::convolution") for line in table), table


@pytest.mark.slow
def test_time_limit_skips_the_cases_not_started():
    stdout, data = run_benchmark("model_speed.py", "--blocks", "--stage-shapes", "32x4", "--time-limit", 0)
    assert data["results"] == [] and "skipped stage 32 x 4x4: --time-limit 0 s used up" in stdout


@pytest.mark.slow
def test_model_benchmark_refuses_a_variant_that_cannot_run_here_in_one_line():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "model_speed.py"), "--variants",
                             "none,CBAM-triton"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "variant CBAM-triton" in lines[0] and "'triton'" in lines[0], lines


@pytest.mark.slow
def test_cuda_graph_modes_are_refused_without_a_gpu_in_one_line():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "model_speed.py"), "--modes",
                             "eager,compiled+graph"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "compiled+graph" in lines[0] and "CUDA" in lines[0], lines


@pytest.mark.slow
def test_loader_benchmark_compares_our_backends_with_stock_torchvision(tmp_path):
    write_tree(str(tmp_path / "src"), classes=2, train_per_class=8, val_per_class=0, size=48, seed=6)
    backends = "torch,dali-cpu" if dali_importable() else "torch"
    stdout, data = run_benchmark("loader.py", "--src", tmp_path / "src", "--no-stock-pillow", "--backends", backends,
                                 "--batch-size", 4, "--image-size", 32, "--repeats", 1, "--epochs", 1,
                                 "--max-count", 5)
    rates = data["images_per_s"]
    stock = [name for name in rates if name.startswith("(b) stock torchvision")]
    assert len(stock) == 1 and not any(name.startswith("(a)") for name in rates)  # no download asked for
    decode_only = [name for name in rates if name.startswith("decode only")]  # the torch backend's floor
    assert len(decode_only) == 1 and set(rates) == set(stock) | set(backends.split(",")) | set(decode_only)
    assert all(rate > 0 for rate in rates.values())
    assert set(data["cpu_ms_per_image"]) == set(rates) and all(v > 0 for v in data["cpu_ms_per_image"].values())
    assert set(data["ratios"][stock[0]]) == set(backends.split(","))
    assert "row (a) not run: --no-stock-pillow" in stdout
    assert re.search(r"torch backend's CPU per image \d+\.\d\dx its decoder's alone \(target <= 1\.3x\)", stdout)


def _spin(seconds, done):
    import time
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    done.set()
    time.sleep(30)  # alive, idle, until the parent has read its CPU time and kills it


def test_the_loader_benchmark_counts_the_cpu_of_workers_that_are_still_running():
    """The torch backend's workers outlive each timed epoch, so getrusage (exited children only) would count
    none of their CPU: benchmarks/loader.py adds that of running children from /proc, and the sum stays right
    when a child exits between two readings."""
    import multiprocessing

    sys.path.insert(0, ROOT)
    from benchmarks.loader import _cpu_seconds, _running_children_cpu

    before = _cpu_seconds()
    done = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_spin, args=(0.5, done), daemon=True)
    child.start()
    try:
        assert done.wait(timeout=30)
        assert 0.45 <= _running_children_cpu() <= 1.5
        while_running = _cpu_seconds() - before
        assert 0.45 <= while_running <= 2.0
    finally:
        child.kill()
        child.join()
    assert multiprocessing.active_children() == [] and _running_children_cpu() == 0
    after_exit = _cpu_seconds() - before
    assert while_running - 0.05 <= after_exit <= while_running + 0.5  # moved to getrusage's count, not lost


@pytest.mark.slow
def test_gpu_suite_stages_run_on_photographs_and_keep_their_data(tmp_path):
    """benchmarks/gpu_suite.sh's structure, run on this CPU with tiny sizes: a stage builds the photograph tree and
    its shards once, later calls reuse them; unknown stages are refused before anything runs."""
    from conftest import imagenet_sample_files
    photos = os.path.dirname(imagenet_sample_files()[0])
    env = dict(os.environ, PYTHON=sys.executable, GPU_SUITE_DATA=str(tmp_path / "data"), GPU_SUITE_PHOTOS=photos,
               GPU_SUITE_CLASSES="3", GPU_SUITE_PER_CLASS="8", GPU_SUITE_VAL_PER_CLASS="2",
               GPU_SUITE_TRAIN_FLAGS="--depth 18 --image-size 32 --batch-size 8 --workers 2 --benchmark-warmup 1 "
                                     "--benchmark-steps 1 --compile-cache none",
               GPU_SUITE_BASELINE_FLAGS="--compile off")
    suite = [os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), str(tmp_path / "no-wheels")]

    def stage(name, results):
        return subprocess.run(["bash", *suite, str(results), name], capture_output=True, text=True, env=env,
                              timeout=600, cwd=ROOT)
    refused = stage("torch,warp", tmp_path / "refused.txt")
    assert refused.returncode == 2 and "unknown stage 'warp'" in refused.stderr
    assert not (tmp_path / "data").exists()

    first = stage("torch", tmp_path / "first.txt")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "first.txt.json").read_text().splitlines()]
    # the default flags from a cold and a warm cache, then the baseline flags
    assert [(r["backend"], r["att_type"]) for r in runs] == [("torch", "CBAM")] * 3
    assert all(r["images_per_sec"] > 0 for r in runs)
    manifest = json.loads((tmp_path / "data" / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 3 * 8

    second = stage("data", tmp_path / "second.txt")  # the data stage alone: no training run needed to see it kept
    assert second.returncode == 0 and "kept from an earlier stage" in second.stdout


@pytest.mark.slow
def test_host_steps_benchmark_measures_each_step_against_its_baseline(tmp_path):
    from conftest import imagenet_sample_files
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in imagenet_sample_files()[:4]:
        shutil.copy(path, photos)
    _, data = run_benchmark("host_steps.py", "--batch-size", 4, "--image-size", 32, "--repeats", 1,
                            "--photos", photos)
    steps = data["steps"]
    assert {"normalise float32, output memory", "normalise bfloat16, output memory", "normalise float32, arithmetic",
            "flip a resized window", "read a sample's members", "RandAugment m9 mstd0.5"} <= set(steps)
    for figures in steps.values():
        assert figures["ours_ms"] > 0 and figures["baseline_ms"] > 0
        assert figures["ratio"] == pytest.approx(figures["baseline_ms"] / figures["ours_ms"])
