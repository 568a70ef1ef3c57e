"""Speed of tools/make_shards.py against named baselines on the same image files:

  tar cf        `tar cf` of the split folders: the cost of reading and writing the bytes, nothing checked
  full decode   Pillow `Image.open(...).load()` of every file in one process: the honest check we replace
  check         shards/imagecheck.check_file in one process: the 1/8-scale decode make_shards uses, which still
                entropy-decodes every byte (truncated and corrupt files are caught like with a full decode); and
                the same over 2 processes the way make_shards runs it (its Workers pool, pool start included)
  make_shards   the whole tool (`python tools/make_shards.py SRC OUT --workers N --max-count 50`, a fresh OUT
                each time): process start, check, shuffle, shard writing with fsync, index and manifest. 50
                samples per shard make the 500 sample photographs 10 shards, so that shard writing runs in
                parallel as it does for ImageNet's 1,281 shards
  start-up      `python tools/make_shards.py --help`: interpreter start and imports, a fixed cost per run that
                weighs on a 500-image run and not on ImageNet; the 2-vs-1-worker ratio is given with and without it
  its phases    the check and write phase times make_shards itself prints for those runs (write = reading the
                sources again, tar and index, sha256, fsync'd writes), to show how each phase scales

All figures are medians over --repeats; in every repeat each measurement runs once, in an order that rotates
from repeat to repeat, so that baseline and candidates share the same machine state. MB/s counts source bytes.
By default the images are the shared ImageNet photographs (../shared/data/imagenet-sample, copied into an
ImageFolder tree in a temporary folder); --src takes any ImageFolder tree (SRC/train/<wnid>/*, SRC/val/...).
--copies N lists every file N times (copies under new names, so N distinct inputs of the same bytes): the
per-run costs that do not split over workers (interpreter start, pool start, scanning, the manifest) then weigh
as little as they do on a real dataset, where they are a fraction of a second in an hour-long run.

    .venv/bin/python benchmarks/make_shards.py [--src DIR] [--copies 1] [--repeats 5] [--workers 1,2] [--record]
"""
import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image, features

from benchmarks.common import ROOT, markdown_table, record
from shards.imagecheck import check_file
from shards.workers import Workers

SAMPLE_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "imagenet-sample"))
TOOL = os.path.join(ROOT, "tools", "make_shards.py")
TARGET_CHECK_VS_FULL = 1.5  # issue 6: the honest check at >= 1.5x a full decode per worker
TARGET_TWO_VS_ONE = 1.7  # issue 6: 2 workers >= 1.7x 1 worker


def sample_tree(dest, copies=1):
    """Copies the shared `<wnid>_<name>.JPEG` photographs into dest/train/<wnid>/ (ImageFolder layout), each
    `copies` times."""
    if not os.path.isdir(SAMPLE_DIR):
        sys.exit(f"benchmarks/make_shards.py: error: {SAMPLE_DIR} not found; pass --src with an ImageFolder tree")
    for name in sorted(os.listdir(SAMPLE_DIR)):
        folder = os.path.join(dest, "train", name.split("_")[0])
        os.makedirs(folder, exist_ok=True)
        place(os.path.join(SAMPLE_DIR, name), folder, copies)
    return dest


def replicated_tree(src, dest, copies):
    """dest/<split>/<class>/ holding every file of SRC's splits `copies` times."""
    for split in ("train", "val"):
        for folder, _, names in os.walk(os.path.join(src, split)):
            target = os.path.join(dest, os.path.relpath(folder, src))
            os.makedirs(target, exist_ok=True)
            for name in names:
                place(os.path.join(folder, name), target, copies)
    return dest


def place(path, folder, copies):
    """`copies` copies of `path` in `folder` (real copies, not links: `tar cf` would store a link as a link)."""
    stem, ext = os.path.splitext(os.path.basename(path))
    for k in range(copies):
        shutil.copy(path, os.path.join(folder, os.path.basename(path) if k == 0 else f"{stem}_copy{k}{ext}"))


def split_files(src):
    splits = [s for s in ("train", "val") if os.path.isdir(os.path.join(src, s))]
    if not splits:
        sys.exit(f"benchmarks/make_shards.py: error: {src} has no train/ or val/ folder")
    files = [os.path.join(d, f) for s in splits for d, _, names in os.walk(os.path.join(src, s)) for f in names]
    return splits, sorted(files)


def full_decode(files):
    for path in files:
        with open(path, "rb") as f:
            Image.open(io.BytesIO(f.read())).load()


def draft_check(files):
    for path in files:
        check_file(path)


def pooled_check(files, workers):
    with Workers(workers) as pool:
        for _ in pool.imap(check_file, files):
            pass


PHASES = re.compile(r"\(check ([0-9.]+) s, write ([0-9.]+) s\)")  # from make_shards' per-split summary line


def time_make_shards(src, out, splits, workers, max_count, phases):
    """Seconds for the whole tool; appends (check seconds, write seconds), summed over splits, to `phases`."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh OUT: an existing one would be reused, not rewritten
    start = time.perf_counter()
    result = subprocess.run([sys.executable, TOOL, src, out, "--splits", ",".join(splits), "--workers",
                             str(workers), "--max-count", str(max_count), "--skip-bad"],
                            check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = time.perf_counter() - start
    found = [(float(c), float(w)) for c, w in PHASES.findall(result.stdout)]
    if len(found) != len(splits):
        sys.exit(f"benchmarks/make_shards.py: error: no phase times in make_shards' output:\n{result.stdout[-2000:]}")
    phases.append((sum(c for c, _ in found), sum(w for _, w in found)))
    return seconds


def _ratio_text(ratio):
    return "n/a (a run shorter than the start-up)" if ratio is None else f"{ratio:.2f}x"


def time_startup():
    start = time.perf_counter()
    subprocess.run([sys.executable, TOOL, "--help"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_tar(src, splits, archive):
    start = time.perf_counter()
    subprocess.run(["tar", "cf", archive, "-C", src, *splits], check=True)
    return time.perf_counter() - start


def timing(samples, files, megabytes):
    """Median, min and max seconds of `samples`, and the median's images/s and MB/s."""
    median = statistics.median(samples)
    return {"seconds": median, "seconds_min": min(samples), "seconds_max": max(samples),
            "images_per_s": len(files) / median, "mb_per_s": megabytes / median}


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def parse_args(argv):
    """The flags, checked (argparse's own error and exit status 2 otherwise)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="ImageFolder tree to convert (default: the shared ImageNet samples)")
    parser.add_argument("--copies", type=int, default=1,
                        help="list every file this many times (default 1); 4 makes the 500 samples 2,000 inputs")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement; medians are reported")
    parser.add_argument("--workers", default="1,2", help="comma list of make_shards --workers values")
    parser.add_argument("--max-count", type=int, default=50, help="make_shards --max-count (samples per shard)")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)
    for flag in ("repeats", "copies"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return args


def measure(args):
    """Every measurement, repeats interleaved: (worker counts, seconds per measurement, the tool's own phase
    times per worker count, the files read, their megabytes)."""
    worker_counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        if not args.src:
            src = sample_tree(os.path.join(tmp, "src"), args.copies)
        elif args.copies > 1:
            src = replicated_tree(os.path.abspath(args.src), os.path.join(tmp, "src"), args.copies)
        else:
            src = os.path.abspath(args.src)
        splits, files = split_files(src)
        megabytes = sum(os.path.getsize(f) for f in files) / 1e6
        measurements = {"tar cf": lambda: time_tar(src, splits, os.path.join(tmp, "all.tar")),
                        "full decode (1 process)": lambda: timed(full_decode, files),
                        "check, 1/8-scale decode (1 process)": lambda: timed(draft_check, files),
                        "check, 1/8-scale decode (2 processes)": lambda: timed(pooled_check, files, 2),
                        "start-up": time_startup}
        phases = {w: [] for w in worker_counts}  # per run: (check s, write s) as the tool reports them
        for w in worker_counts:
            measurements[f"make_shards --workers {w}"] = (
                lambda w=w: time_make_shards(src, os.path.join(tmp, f"out{w}"), splits, w, args.max_count,
                                            phases[w]))
        for measure in measurements.values():  # warm-up: page cache, imports, first-run effects
            measure()
        for times in phases.values():
            times.clear()
        names = list(measurements)
        seconds = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                seconds[name].append(measurements[name]())

    return worker_counts, seconds, phases, files, megabytes


def results_and_ratios(worker_counts, seconds, phases, files, megabytes):
    """Timings per measurement and phase, and the ratios the targets are judged by."""
    results = {name: timing(s, files, megabytes) for name, s in seconds.items()}
    full = results["full decode (1 process)"]["seconds"]
    check = results["check, 1/8-scale decode (1 process)"]["seconds"]
    ratios = {"check_vs_full_decode": full / check,
              "check_two_processes_vs_one": check / results["check, 1/8-scale decode (2 processes)"]["seconds"]}
    if 1 in worker_counts and 2 in worker_counts:
        one, two = (results[f"make_shards --workers {w}"]["seconds"] for w in (1, 2))
        startup = results["start-up"]["seconds"]
        ratios["two_workers_vs_one"] = one / two
        # Only meaningful when both runs outlast the start-up estimate (tiny inputs on a busy machine may not).
        ratios["two_workers_vs_one_after_startup"] = ((one - startup) / (two - startup)
                                                      if min(one, two) > startup else None)
    for w in worker_counts:
        for i, phase in enumerate(("check", "write")):
            times = [phase_times[i] for phase_times in phases[w]]
            results[f"make_shards --workers {w}: {phase} phase"] = timing(times, files, megabytes)
    if 1 in worker_counts and 2 in worker_counts:
        for phase in ("check", "write"):
            ratios[f"{phase}_phase_two_vs_one"] = (results[f"make_shards --workers 1: {phase} phase"]["seconds"]
                                                   / results[f"make_shards --workers 2: {phase} phase"]["seconds"])

    return results, ratios


def report(args, results, ratios, files, megabytes):
    """The table, the summary with the targets and the JSON line; --record appends them."""
    rows = [[name, f"{r['images_per_s']:.0f}", f"{r['mb_per_s']:.1f}",
             f"{r['seconds']:.3f} ({r['seconds_min']:.3f}-{r['seconds_max']:.3f})"] for name, r in results.items()]
    table = markdown_table(["measurement", "images/s", "MB/s", "seconds: median (min-max)"], rows)
    summary = (f"{len(files)} files ({args.copies} cop{'y' if args.copies == 1 else 'ies'} of each), "
               f"{megabytes:.1f} MB, {args.repeats} repeats, {os.cpu_count()} CPUs; "
               f"check vs full decode {ratios['check_vs_full_decode']:.2f}x (target >= {TARGET_CHECK_VS_FULL}x); "
               f"check on 2 vs 1 process {ratios['check_two_processes_vs_one']:.2f}x")
    if "two_workers_vs_one" in ratios:
        summary += (f"; 2 vs 1 worker {ratios['two_workers_vs_one']:.2f}x, "
                    f"{_ratio_text(ratios['two_workers_vs_one_after_startup'])} without start-up "
                    f"(target >= {TARGET_TWO_VS_ONE}x); the tool's own phase times, 2 vs 1 worker: check "
                    f"{ratios['check_phase_two_vs_one']:.2f}x, write {ratios['write_phase_two_vs_one']:.2f}x")
    print(table)
    print(summary)
    print(json.dumps({"benchmark": "shards", "files": len(files), "copies": args.copies,
                      "megabytes": round(megabytes, 2),
                      "repeats": args.repeats, "cpus": os.cpu_count(), "pillow": Image.__version__,
                      "libjpeg_turbo": features.version("libjpeg_turbo"),
                      "results": {k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()},
                      **{k: None if v is None else round(v, 3) for k, v in ratios.items()}}))
    if args.record:
        record("make_shards throughput (benchmarks/make_shards.py)", table,
               note=summary + ". make_shards times include interpreter start-up; other work may share the "
                              "machine.")


def main(argv=None):
    args = parse_args(argv)
    worker_counts, seconds, phases, files, megabytes = measure(args)
    results, ratios = results_and_ratios(worker_counts, seconds, phases, files, megabytes)
    report(args, results, ratios, files, megabytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
