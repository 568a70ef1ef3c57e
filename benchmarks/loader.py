"""Training-loader throughput: pipeline.build_loader backends against a stock torchvision pipeline.

  stock torchvision   ImageFolder + RandomResizedCrop(S) + RandomHorizontalFlip + ToTensor + Normalize, a
                      DataLoader(shuffle, drop_last) with the same worker count and batch size, batches moved
                      to the device (pinned, non_blocking on CUDA). Two rows when our PIL is Pillow-SIMD:
        (a) + Pillow      as a plain user has it: the stock Pillow wheel torchvision depends on (same version,
                          installed with pip into a temporary folder at benchmark time), run in a subprocess
                          whose PYTHONPATH puts it first. The targets are judged against this row.
        (b) + Pillow-SIMD the same code on our Pillow-SIMD (which replaces PIL in place), in this process.
                      When PIL is stock Pillow already, (b) is the stock pipeline and (a) is not run.
  torch               build_loader(backend="torch"): webdataset shards, Pillow(-SIMD) + Image.draft in workers,
                      uint8 batches, normalisation on the device
  dali-cpu            build_loader(backend="dali-cpu"): DALI CPU operators, `workers` threads
  dali                build_loader(backend="dali"): only when a CUDA GPU is present

All read the same JPEG files: the shared ImageNet sample photographs by default, or the train/ split of any
ImageFolder tree with --src, linked into a temporary ImageFolder tree (--copies N lists every file N times, for
epochs long enough to show steady-state throughput) that the script also shards with tools/make_shards.py. The
figure is images delivered on the training device per second over --epochs whole train epochs, worker start-up
included as in training (it weighs more on a 500-image epoch than on ImageNet's). "CPU ms/image" is the CPU time
of the loading process and its workers (getrusage) per image delivered: on a machine whose cores are all busy
loading, it is what bounds images/s. Every figure is the median of
--repeats; in every repeat each loader (the subprocess baseline included) runs once, in an order that rotates from
repeat to repeat, so baselines and candidates share the machine state.

With --src URL (s3://bucket/prefix or http(s)://host/path of a shard folder written by make_shards), the
rows are instead our loaders reading that folder remotely against a local copy of the same shards (downloaded
first), interleaved the same way, plus the torch backend through --cache-dir, and the per-request overhead:
the median time of one 4 KiB ranged read remotely against one pread of the local copy.

    .venv/bin/python benchmarks/loader.py [--src DIR] [--copies 1] [--workers 2] [--image-size 224]
                                          [--batch-size 64] [--repeats 5] [--epochs 2] [--no-stock-pillow]
                                          [--record]
    AWS_ENDPOINT_URL=http://127.0.0.1:5000 .venv/bin/python benchmarks/loader.py --src s3://bucket/shards
"""
import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import pipeline
from benchmarks.common import ROOT, machine, markdown_table, record
from pipeline import augment
from pipeline.info import summary
from shards import storage
from shards.manifest import read_manifest

SAMPLE_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "imagenet-sample"))
TOOL = os.path.join(ROOT, "tools", "make_shards.py")
TARGET_VS_DECODE = 1.3  # the torch backend's CPU per image against its decoder's alone (decode-only row)
TARGET_VS_STOCK = 2.0  # torch and dali-cpu >= 2x the stock torchvision pipeline (CPU, 2 workers, 224 px)
STOCK_PILLOW = "(a) stock torchvision + {pil}"       # row names; the targets are judged against the first
STOCK_ACTIVE_PIL = "(b) stock torchvision + {pil}"   # baseline row present
REQUESTS = 50  # small reads timed for the per-request overhead of --src URL


def sample_files():
    """{wnid: [paths]} of the shared `<wnid>_<name>.JPEG` photographs."""
    if not os.path.isdir(SAMPLE_DIR):
        sys.exit(f"loader.py: error: {SAMPLE_DIR} not found; pass --src with an ImageFolder tree")
    files = {}
    for name in sorted(os.listdir(SAMPLE_DIR)):
        files.setdefault(name.split("_")[0], []).append(os.path.join(SAMPLE_DIR, name))
    return files


def folder_files(src):
    """{class folder: [paths]} of an ImageFolder tree's train/ split."""
    train = os.path.join(src, "train")
    if not os.path.isdir(train):
        sys.exit(f"loader.py: error: --src {src} has no train/ folder")
    return {c: [os.path.join(train, c, f) for f in sorted(os.listdir(os.path.join(train, c)))]
            for c in sorted(os.listdir(train)) if os.path.isdir(os.path.join(train, c))}


def build_tree(files, dest, copies):
    """dest/train/<class>/ holding every file `copies` times (hard links where possible, else copies)."""
    for wnid, paths in files.items():
        folder = os.path.join(dest, "train", wnid)
        os.makedirs(folder, exist_ok=True)
        for path in paths:
            stem, ext = os.path.splitext(os.path.basename(path))
            for k in range(copies):
                target = os.path.join(folder, f"{stem}_{k}{ext}")
                try:
                    os.link(path, target)
                except OSError:  # another file system, or links not allowed: a copy reads the same
                    shutil.copy(path, target)
    return dest


def make_shards(src, out, workers, max_count):
    result = subprocess.run([sys.executable, TOOL, src, out, "--splits", "train", "--workers", str(workers),
                             "--max-count", str(max_count), "--skip-bad"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"loader.py: error: tools/make_shards.py failed:\n{result.stderr[-3000:]}")
    return out


def stock_loader(src, args, device):
    """The baseline every torchvision user starts from, with the same workers and batch size."""
    import torchvision
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(augment.IMAGENET_MEAN, augment.IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(os.path.join(src, "train"), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")

    def epoch(_):
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return epoch, len(loader)


def stock_pillow_folder(tmp):
    """A folder holding the stock Pillow wheel of the active PIL's version, or None (and why) when not needed or
    pip cannot get it. Only for row (a): the venv's PIL is never touched."""
    import PIL

    if ".post" not in PIL.__version__:  # stock Pillow is active: the in-process row already is the stock pipeline
        return None, f"PIL is stock Pillow {PIL.__version__}, so row (b) is the stock pipeline"
    version = PIL.__version__.split(".post")[0]
    target = os.path.join(tmp, "stock-pillow")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--no-deps", "--only-binary", ":all:", "--target", target, f"pillow=={version}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None, f"pip could not install stock pillow=={version}: {result.stderr.strip()[-500:]}"
    return target, None


class StockProcess:
    """The stock pipeline in a child process that imports the stock Pillow in `pillow_folder` first.

    The child builds the loader once, then times epochs on request (one line "first count" in, one line of
    seconds out), so it joins the same interleaved repeats as the in-process loaders. Idle, it blocks on a read."""

    def __init__(self, argv, src, pillow_folder):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pillow_folder,
                                                                        os.environ.get("PYTHONPATH")])))
        self.child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--serve-stock", src],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = json.loads(self._reply())
        self.pil, self.batches = hello["pil"], hello["batches"]
        if not self.pil.startswith("pillow "):
            self.close()
            sys.exit(f"loader.py: error: the stock-Pillow child imported {self.pil}, not stock Pillow")

    def _reply(self):
        line = self.child.stdout.readline()
        if not line:
            sys.exit(f"loader.py: error: the stock-Pillow child exited with status {self.child.wait()}")
        return line

    def time_epochs(self, first, count):
        """(seconds, CPU seconds) of the child's stock loader for `count` epochs from epoch `first`."""
        self.child.stdin.write(f"{first} {count}\n")
        self.child.stdin.flush()
        seconds, cpu = self._reply().split()
        return float(seconds), float(cpu)

    def close(self):
        self.child.stdin.close()
        self.child.wait()


def serve_stock(src, args, device):
    """The child side of StockProcess."""
    from pipeline.info import pillow_flavour

    epoch, batches = stock_loader(src, args, device)
    print(json.dumps({"pil": pillow_flavour(), "batches": batches}), flush=True)
    for line in sys.stdin:
        first, count = (int(x) for x in line.split())
        print(*timed_epochs(epoch, first, count, device), flush=True)
    return 0


def our_loader(shard_dir, backend, args, device, **options):
    loader = pipeline.build_loader(shard_dir, "train", args.batch_size, backend=backend, workers=args.workers,
                                   device=device, image_size=args.image_size, **options)

    def epoch(number):
        loader.set_epoch(number)
        return iter(loader)
    return epoch, len(loader)


DECODE_ONLY = "decode only: the torch backend's decoder, same shards"  # its CPU ms/image is the floor


def decode_only(shard_dir, args):
    """(time_epochs, batches): the torch backend's train decode (pipeline/jpeg_decode.py decode_train, the same
    window decoder) of every JPEG of the epoch, read into memory beforehand, in this process, one thread: the CPU
    time per image that no loader around this decoder can go below."""
    import numpy as np

    from pipeline.jpeg_decode import decode_train, window_decoder
    from pipeline.shard_read import read_samples
    from shards.manifest import load_split

    split = load_split(shard_dir, "train")
    batches = split.num_samples // args.batch_size
    jpegs = [jpeg for shard in split.shards for _, jpeg, _ in read_samples(shard, 0, shard.samples)]
    jpegs = jpegs[:batches * args.batch_size]
    windows = window_decoder()

    def time_epochs(first, count):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        for number in range(first, first + count):
            rng = np.random.default_rng(number)
            for jpeg in jpegs:
                decode_train(jpeg, args.image_size, rng, windows)
        torch.set_num_threads(threads)
        return time.perf_counter() - start, _cpu_seconds() - cpu_start
    return time_epochs, batches


def timed_epochs(epoch, first, count, device):
    """(seconds, CPU seconds) to deliver `count` whole epochs starting at epoch number `first`. CPU time counts
    this process (its DALI threads included) and its worker processes, those that have exited (the stock
    DataLoader's, joined when the epoch's iterator ends) and those still running (the torch backend's, which
    serve every epoch)."""
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    for number in range(first, first + count):
        for images, _ in epoch(number):
            last = images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del last
    return time.perf_counter() - start, _cpu_seconds() - cpu_start


def _cpu_seconds():
    running = _running_children_cpu()  # first: it reaps the children that have exited, which getrusage then counts
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + running


def _running_children_cpu():
    """CPU seconds of this process's children that are still running (getrusage counts a child only once it
    has exited and been waited for), from /proc/PID/stat: utime and stime, fields 14 and 15, in clock ticks. A
    child that exits between two readings moves from this sum to getrusage's: the total stays continuous."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # exited meanwhile: counted by getrusage once reaped
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pil_label(flavour):
    """'pillow-simd 12.1.1.post0' -> 'Pillow-SIMD 12.1.1.post0', 'pillow 12.1.1' -> 'Pillow 12.1.1'."""
    return flavour.replace("pillow-simd", "Pillow-SIMD").replace("pillow", "Pillow")


def in_process(loader, device):
    epoch, batches = loader
    return (lambda first, count: timed_epochs(epoch, first, count, device)), batches


def interleaved_repeats(runners, args):
    """{name: [(seconds, CPU seconds) per repeat]}: one warm-up epoch each (page cache, imports, DALI and worker
    first-run costs), then --repeats rounds in which every runner runs once, the order rotating by one each
    round."""
    for time_epochs, _ in runners.values():
        time_epochs(0, 1)
    names = list(runners)
    seconds = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            seconds[name].append(runners[name][0](1 + repeat * args.epochs, args.epochs))
    return seconds


def download_shard_folder(url, dest):
    """Copies the shard folder at `url` (its manifest and every file it names) to the local folder `dest`."""
    os.makedirs(dest)
    manifest = read_manifest(url)
    names = {"manifest.json"} | {entry[field] for split in manifest["splits"].values() for entry in split["shards"]
                                 for field in ("tar", "index", "checksums") if entry.get(field)}
    for name in sorted(names):
        with open(os.path.join(dest, name), "wb") as handle:
            if name.endswith(".tar"):
                for chunk in storage.copy_chunks(f"{url}/{name}", storage.size(f"{url}/{name}")):
                    handle.write(chunk)
            else:
                handle.write(storage.read_bytes(f"{url}/{name}"))
    return dest


def request_overhead(url, local, count=REQUESTS):
    """Median seconds of one 4 KiB read at a random offset of the first train shard: remote (one ranged request)
    and local (one pread), with the remote median per MiB of a 4 MiB read for the bandwidth."""
    name = read_manifest(local)["splits"]["train"]["shards"][0]["tar"]
    size = os.path.getsize(os.path.join(local, name))
    rng = random.Random(0)
    times = {"remote": [], "local": [], "remote_4mib": []}
    for _ in range(count):
        offset = rng.randrange(0, max(1, size - 4096))
        for key, path in (("remote", f"{url}/{name}"), ("local", os.path.join(local, name))):
            start = time.perf_counter()
            storage.read_range(path, offset, min(size, offset + 4096))
            times[key].append(time.perf_counter() - start)
    for _ in range(max(3, count // 10)):
        start = time.perf_counter()
        storage.read_range(f"{url}/{name}", 0, min(size, 4 << 20))
        times["remote_4mib"].append((time.perf_counter() - start) / (min(size, 4 << 20) / (1 << 20)))
    return {key: statistics.median(values) for key, values in times.items()}


def remote_comparison(url, args, device):
    """--src URL: the shards there read by our loaders against a local copy of the same shards, interleaved as in
    the main benchmark; the torch backend also through --cache-dir (its first, warm-up epoch fills the cache)."""
    backends = args.backends.split(",") if args.backends else ["torch"]
    with tempfile.TemporaryDirectory(prefix="bench_loader_remote_") as tmp:
        local = download_shard_folder(url, os.path.join(tmp, "local"))
        runners = {}
        for backend in backends:
            runners[f"{backend} local"] = in_process(our_loader(local, backend, args, device), device)
            runners[f"{backend} remote"] = in_process(our_loader(url, backend, args, device, verify="off"), device)
            if backend == "torch":
                runners["torch remote + cache"] = in_process(our_loader(
                    url, backend, args, device, verify="off", cache_dir=os.path.join(tmp, "cache")), device)
        seconds = interleaved_repeats(runners, args)
        overhead = request_overhead(url, local)
    batches = {name: b for name, (_, b) in runners.items()}
    rates = {name: statistics.median(batches[name] * args.batch_size * args.epochs / s for s, _ in samples)
             for name, samples in seconds.items()}
    rows = [[name, f"{rates[name]:.0f}", f"{rates[name] / rates[name.split()[0] + ' local']:.2f}"] for name in runners]
    table = markdown_table(["loader", "images/s (median)", "vs the same backend on local disk"], rows)
    note = (f"{url}: {batches[next(iter(runners))] * args.batch_size} images per epoch, {args.image_size} px, batch "
            f"{args.batch_size}, {args.workers} workers, {args.repeats} repeats of {args.epochs} epoch(s); one 4 KiB "
            f"read: {overhead['remote'] * 1000:.2f} ms remote vs {overhead['local'] * 1000:.3f} ms local "
            f"(per-request overhead {1000 * (overhead['remote'] - overhead['local']):.2f} ms); remote bulk read "
            f"{overhead['remote_4mib'] * 1000:.1f} ms per MiB")
    print(table)
    print(note)
    print(json.dumps({"benchmark": "loader-remote", "src": url, "device": str(device), "workers": args.workers,
                      "batch_size": args.batch_size, "image_size": args.image_size, "repeats": args.repeats,
                      "epochs": args.epochs, "images_per_s": {k: round(v, 1) for k, v in rates.items()},
                      "ratio_vs_local": {k: round(rates[k] / rates[k.split()[0] + " local"], 3) for k in rates},
                      "request_seconds": {k: round(v, 6) for k, v in overhead.items()}, "machine": machine()}))
    if args.record:
        record("Loader throughput from object storage (benchmarks/loader.py --src URL)", table, note=note)
    return 0


def parse_args(argv):
    """The flags, checked (argparse's own error and exit status 2 otherwise)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="ImageFolder tree whose train/ split is read (default: the shared samples), "
                        "or the URL of a shard folder in object storage (s3://, http(s)://): then that folder is "
                        "read remotely against a local copy of it, in the same run")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes / DALI threads (default 2)")
    parser.add_argument("--image-size", type=int, default=224, help="output side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; medians are reported (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="whole epochs per timed run (default 2)")
    parser.add_argument("--backends", help="comma list of our backends (default: torch,dali-cpu, +dali on GPU)")
    parser.add_argument("--copies", type=int, default=1,
                        help="each file appears this many times (default 1); 4 makes the 500 samples a 2,000-image "
                             "epoch, so per-epoch worker start-up weighs as little as it does on ImageNet")
    parser.add_argument("--max-count", type=int, default=50, help="samples per shard for make_shards (default 50)")
    parser.add_argument("--no-stock-pillow", action="store_true",
                        help="skip row (a), which downloads the stock Pillow wheel with pip (offline machines); "
                             "the targets are then judged against row (b)")
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    parser.add_argument("--serve-stock", metavar="SRC", help=argparse.SUPPRESS)  # internal: StockProcess's child
    args = parser.parse_args(argv)
    for flag in ("workers", "repeats", "epochs", "batch_size", "max_count", "copies"):
        if getattr(args, flag) < (0 if flag == "workers" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'workers' else 1}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if args.serve_stock:
        return serve_stock(args.serve_stock, args, device)
    if args.src and storage.is_remote(args.src):
        return remote_comparison(storage.normalize(args.src), args, device)
    backends = args.backends.split(",") if args.backends else (
        ["torch", "dali-cpu"] + (["dali"] if device.type == "cuda" else []))

    runners, seconds, active, skipped = measure_local(args, device, backends)
    report(args, device, backends, runners, seconds, active, skipped)
    return 0


def measure_local(args, device, backends):
    """The stock loaders and ours on one tree of local files, repeats interleaved: (runners, seconds, the name
    of the row with the active PIL, why row (a) was skipped or None)."""
    child_argv = [f"--workers={args.workers}", f"--image-size={args.image_size}", f"--batch-size={args.batch_size}"]
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        files = folder_files(os.path.abspath(args.src)) if args.src else sample_files()
        src = build_tree(files, os.path.join(tmp, "src"), args.copies)
        shard_dir = make_shards(src, os.path.join(tmp, "shards"), max(1, args.workers), args.max_count)
        if args.no_stock_pillow:
            pillow_folder, skipped = None, "--no-stock-pillow"
        else:
            pillow_folder, skipped = stock_pillow_folder(tmp)
        # name -> (time_epochs(first, count) -> (seconds, CPU seconds), batches per epoch)
        runners, stock_child = {}, None
        if pillow_folder:
            stock_child = StockProcess(child_argv, src, pillow_folder)
            stock = STOCK_PILLOW.format(pil=pil_label(stock_child.pil))
            runners[stock] = (stock_child.time_epochs, stock_child.batches)
        else:
            print(f"row (a) skipped: {skipped}")
        active = STOCK_ACTIVE_PIL.format(pil=pil_label(summary()["pil"]))
        runners[active] = in_process(stock_loader(src, args, device), device)
        for backend in backends:
            runners[backend] = in_process(our_loader(shard_dir, backend, args, device), device)
        if "torch" in backends:
            runners[DECODE_ONLY] = decode_only(shard_dir, args)
        try:
            seconds = interleaved_repeats(runners, args)
        finally:
            if stock_child is not None:
                stock_child.close()

    return runners, seconds, active, None if pillow_folder else skipped


def report(args, device, backends, runners, seconds, active, skipped):
    """The table, the note with the targets' verdicts and the JSON line; --record appends them."""
    images_per_repeat = {name: batches * args.batch_size * args.epochs for name, (_, batches) in runners.items()}
    rates = {name: [images_per_repeat[name] / s for s, _ in samples] for name, samples in seconds.items()}
    cpu_ms = {name: statistics.median(1000 * cpu / images_per_repeat[name] for _, cpu in samples)
              for name, samples in seconds.items()}
    medians = {name: statistics.median(r) for name, r in rates.items()}
    baselines = [name for name in runners if name.startswith("(")]
    ratios = {base: {name: medians[name] / medians[base] for name in backends} for base in baselines}
    rows = [[name, f"{medians[name]:.0f}", f"{min(rates[name]):.0f}-{max(rates[name]):.0f}", f"{cpu_ms[name]:.2f}"]
            + [f"{medians[name] / medians[base]:.2f}" for base in baselines] for name in runners]
    table = markdown_table(["loader", "images/s (median)", "min-max", "CPU ms/image"]
                           + [f"vs {base.split()[0]}" for base in baselines], rows)
    judged = baselines[0]
    verdicts = ", ".join(f"{name} {ratios[judged][name]:.2f}x "
                         f"({'met' if ratios[judged][name] >= TARGET_VS_STOCK else 'NOT met'})"
                         for name in backends if name in ("torch", "dali-cpu"))
    note = (f"{images_per_repeat[active] // args.epochs} images per epoch ({args.copies} cop"
            f"{'y' if args.copies == 1 else 'ies'} of each file), {args.image_size} px, batch "
            f"{args.batch_size}, {args.workers} workers, device {device}, {args.epochs} epoch(s) per run, "
            f"{args.repeats} repeats, {os.cpu_count()} CPUs (other work may share the machine); "
            f"target >= {TARGET_VS_STOCK}x {judged.split()[0]} for torch and dali-cpu: {verdicts}"
            + ("" if skipped is None else f"; row (a) not run: {skipped}"))
    if DECODE_ONLY in cpu_ms:
        note += (f"; torch backend's CPU per image {cpu_ms['torch'] / cpu_ms[DECODE_ONLY]:.2f}x its decoder's alone "
                 f"(target <= {TARGET_VS_DECODE}x)")
    print(table)
    print(note)
    print(json.dumps({"benchmark": "loader", "device": str(device), "workers": args.workers, "copies": args.copies,
                      "image_size": args.image_size, "batch_size": args.batch_size, "repeats": args.repeats,
                      "epochs": args.epochs, "cpus": os.cpu_count(), "versions": summary(), "machine": machine(),
                      "images_per_s": {k: round(v, 1) for k, v in medians.items()},
                      "images_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                      "cpu_ms_per_image": {k: round(v, 3) for k, v in cpu_ms.items()},
                      "ratios": {base: {k: round(v, 3) for k, v in r.items()} for base, r in ratios.items()}}))
    if args.record:
        record("Loader throughput (benchmarks/loader.py)", table, note=note)


if __name__ == "__main__":
    sys.exit(main())
