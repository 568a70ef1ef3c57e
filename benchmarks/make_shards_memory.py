"""Peak memory of tools/make_shards.py as the input grows: what its main process holds per image, and the CPU
time it spends per image (main process and workers together).

Each size N is a fresh tree of N tiny JPEGs (16x16 px, SRC/train/<wnid>/, --classes class folders) converted
into a fresh OUT by the tool's own main() in a child process of this script, which then reports
- its peak resident set (getrusage RUSAGE_SELF ru_maxrss, the kernel's VmHWM): the conversion's main process,
- the largest peak among its workers (RUSAGE_CHILDREN: the pool's processes, waited for when the pool closes),
- CPU seconds (user + system) of both, per image.
The growth per image is the difference of the main process' peaks between two sizes over the difference of their
image counts: interpreter, imports and the per-class state are the same at every size and cancel out. Tiny images
keep the run short and leave the bookkeeping, which is what grows with ImageNet, as the part to measure; the files
are hard links of a few rendered JPEGs (the tool reads each path as its own input and stores each once).

    .venv/bin/python benchmarks/make_shards_memory.py [--sizes 8000,32000] [--classes 1000] [--workers 2] [--record]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import ROOT, markdown_table, record
from shards.synthetic import class_names, render

DISTINCT_IMAGES = 8  # rendered JPEGs that the tree's files are hard links of

# Runs in a child process: the conversion through the tool's main(), then its own peak and its workers'.
_RUNNER = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from tools import make_shards
assert make_shards.__file__.startswith(sys.argv[1]), make_shards.__file__
start = time.perf_counter()
status = make_shards.main(sys.argv[2:])
wall = time.perf_counter() - start
own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
with open("/proc/self/status") as f:
    hwm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), None)
print(json.dumps({"status": status, "wall_s": wall, "main_peak_bytes": own.ru_maxrss * 1024, "main_vmhwm_bytes": hwm,
                  "worker_peak_bytes": workers.ru_maxrss * 1024, "main_cpu_s": own.ru_utime + own.ru_stime,
                  "worker_cpu_s": workers.ru_utime + workers.ru_stime}))
"""


def tiny_tree(dest, images, classes):
    """dest/train/<wnid>/<wnid>_<k>.JPEG: `images` files over `classes` folders, hard links of a few JPEGs."""
    rng = np.random.default_rng(0)
    os.makedirs(dest)
    originals = []
    for k in range(DISTINCT_IMAGES):
        path = os.path.join(dest, f"original_{k}.JPEG")
        render(k, DISTINCT_IMAGES, rng, 16).save(path, quality=90)
        originals.append(path)
    wnids = class_names(classes)
    for wnid in wnids:
        os.makedirs(os.path.join(dest, "train", wnid))
    for i in range(images):
        wnid = wnids[i % classes]
        os.link(originals[i % DISTINCT_IMAGES], os.path.join(dest, "train", wnid, f"{wnid}_{i // classes:05d}.JPEG"))
    return dest


def convert(src, out, workers):
    """The runner's figures for one conversion of SRC's train split into a fresh OUT."""
    result = subprocess.run([sys.executable, "-c", _RUNNER, ROOT, src, out, "--splits", "train", "--workers",
                             str(workers), "--skip-bad"], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines or json.loads(lines[-1])["status"] != 0:
        sys.exit(f"benchmarks/make_shards_memory.py: error: make_shards failed:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8000,32000", help="comma list of image counts (at least two)")
    parser.add_argument("--classes", type=int, default=1000, help="class folders of every tree (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="make_shards --workers (default 2)")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.sizes = sorted(int(n) for n in args.sizes.split(","))
    if len(args.sizes) < 2 or args.sizes[0] < 1 or len(set(args.sizes)) != len(args.sizes):
        parser.error("--sizes needs at least two different positive image counts")
    if args.classes < 1 or args.workers < 1:
        parser.error("--classes and --workers must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    runs = {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench_shards_memory_") as tmp:
            start = time.perf_counter()
            src = tiny_tree(os.path.join(tmp, "src"), n, args.classes)
            print(f"{n} images: tree in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            runs[n] = convert(src, os.path.join(tmp, "out"), args.workers)
            print(f"{n} images: {json.dumps(runs[n])}", file=sys.stderr)
    low, high = args.sizes[0], args.sizes[-1]
    growth = (runs[high]["main_peak_bytes"] - runs[low]["main_peak_bytes"]) / (high - low)
    worker_growth = (runs[high]["worker_peak_bytes"] - runs[low]["worker_peak_bytes"]) / (high - low)
    cpu = {n: r["main_cpu_s"] + r["worker_cpu_s"] for n, r in runs.items()}
    cpu_per_image = (cpu[high] - cpu[low]) / (high - low)  # start-up and per-class work cancel out
    rows = [[f"{n:,}", f"{r['main_peak_bytes'] / 1e6:.1f}", f"{r['main_peak_bytes'] / n:.0f}",
             f"{r['worker_peak_bytes'] / 1e6:.1f}", f"{1e3 * r['main_cpu_s'] / n:.3f}",
             f"{1e3 * (r['main_cpu_s'] + r['worker_cpu_s']) / n:.3f}", f"{r['wall_s']:.1f}"]
            for n, r in runs.items()]
    table = markdown_table(["images", "main process peak MB", "main peak bytes / image", "largest worker peak MB",
                            "main CPU ms / image", "all CPU ms / image", "wall s"], rows)
    summary = (f"growth of the main process' peak from {low:,} to {high:,} images: {growth:.0f} bytes per image "
               f"(largest worker: {worker_growth:.0f}); CPU time per image (main process and workers, the "
               f"same difference) {1e3 * cpu_per_image:.3f} ms; {args.classes} classes, 16x16 px JPEGs, --workers "
               f"{args.workers}, {os.cpu_count()} CPUs")
    print(table)
    print(summary)
    print(json.dumps({"benchmark": "make_shards_memory", "sizes": args.sizes, "classes": args.classes,
                      "workers": args.workers, "main_growth_bytes_per_image": round(growth, 1),
                      "worker_growth_bytes_per_image": round(worker_growth, 1),
                      "cpu_ms_per_image": round(1e3 * cpu_per_image, 4), "runs": runs}))
    if args.record:
        record("make_shards peak memory (benchmarks/make_shards_memory.py)", table,
               note=summary + f". Command: `.venv/bin/python benchmarks/make_shards_memory.py --sizes "
                              f"{','.join(map(str, args.sizes))} --classes {args.classes} --workers {args.workers}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
