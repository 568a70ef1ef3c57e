"""Training-loader throughput: pipeline.build_loader backends against a stock torchvision pipeline.

  stock torchvision   ImageFolder + RandomResizedCrop(S) + RandomHorizontalFlip + ToTensor + Normalize, a
                      DataLoader(shuffle, drop_last) with the same worker count and batch size, batches moved
                      to the device (pinned, non_blocking on CUDA)
  torch               build_loader(backend="torch"): webdataset shards, Pillow(-SIMD) + Image.draft in workers,
                      uint8 batches, normalisation on the device
  dali-cpu            build_loader(backend="dali-cpu"): DALI CPU operators, `workers` threads
  dali                build_loader(backend="dali"): only when a CUDA GPU is present

All read the same JPEG files: the shared ImageNet sample photographs by default, or the train/ split of any
ImageFolder tree with --src, linked into a temporary ImageFolder tree (--copies N lists every file N times, for
epochs long enough to show steady-state throughput) that the script also shards with tools/make_shards.py. The
figure is images delivered on the training device per second over --epochs whole train epochs, worker start-up
included as in training (it weighs more on a 500-image epoch than on ImageNet's). Every figure is the median of
--repeats; in every repeat each loader runs once, in an order that rotates from repeat to repeat, so baseline and
candidates share the machine state.

    .venv/bin/python benchmarks/loader.py [--src DIR] [--copies 1] [--workers 2] [--image-size 224]
                                          [--batch-size 64] [--repeats 5] [--epochs 2] [--record]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import pipeline  # noqa: E402
from benchmarks.common import ROOT, machine, markdown_table, record  # noqa: E402
from pipeline import augment  # noqa: E402
from pipeline.info import summary  # noqa: E402

SAMPLE_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "imagenet-sample"))
TOOL = os.path.join(ROOT, "tools", "make_shards.py")
TARGET_VS_STOCK = 2.0  # issue 6: torch and dali-cpu >= 2x the stock torchvision pipeline (CPU, 2 workers, 224 px)
BASELINE = "stock torchvision"


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


def our_loader(shard_dir, backend, args, device):
    loader = pipeline.build_loader(shard_dir, "train", args.batch_size, backend=backend, workers=args.workers,
                                   device=device, image_size=args.image_size)

    def epoch(number):
        loader.set_epoch(number)
        return iter(loader)
    return epoch, len(loader)


def timed_epochs(epoch, first, count, device):
    """Seconds to deliver `count` whole epochs starting at epoch number `first`."""
    start = time.perf_counter()
    for number in range(first, first + count):
        for images, _ in epoch(number):
            last = images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del last
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="ImageFolder tree whose train/ split is read (default: the shared samples)")
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
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args(argv)
    for flag in ("workers", "repeats", "epochs", "batch_size", "max_count", "copies"):
        if getattr(args, flag) < (0 if flag == "workers" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'workers' else 1}")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    backends = args.backends.split(",") if args.backends else (
        ["torch", "dali-cpu"] + (["dali"] if device.type == "cuda" else []))

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        files = folder_files(os.path.abspath(args.src)) if args.src else sample_files()
        src = build_tree(files, os.path.join(tmp, "src"), args.copies)
        shard_dir = make_shards(src, os.path.join(tmp, "shards"), max(1, args.workers), args.max_count)
        loaders = {BASELINE: stock_loader(src, args, device)}
        for backend in backends:
            loaders[backend] = our_loader(shard_dir, backend, args, device)
        images_per_run = {name: batches * args.batch_size * args.epochs for name, (_, batches) in loaders.items()}
        for epoch, _ in loaders.values():  # warm-up: page cache, imports, DALI and worker first-run costs
            timed_epochs(epoch, 0, 1, device)
        names = list(loaders)
        seconds = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                seconds[name].append(timed_epochs(loaders[name][0], 1 + repeat * args.epochs, args.epochs, device))

    rates = {name: [images_per_run[name] / s for s in samples] for name, samples in seconds.items()}
    medians = {name: statistics.median(r) for name, r in rates.items()}
    ratios = {name: medians[name] / medians[BASELINE] for name in names if name != BASELINE}
    rows = [[name, f"{medians[name]:.0f}", f"{min(rates[name]):.0f}-{max(rates[name]):.0f}",
             "1.00" if name == BASELINE else f"{ratios[name]:.2f}"] for name in names]
    table = markdown_table(["loader", "images/s (median)", "min-max", "vs stock"], rows)
    note = (f"{images_per_run[BASELINE] // args.epochs} images per epoch ({args.copies} cop"
            f"{'y' if args.copies == 1 else 'ies'} of each file), {args.image_size} px, batch "
            f"{args.batch_size}, {args.workers} workers, device {device}, {args.epochs} epoch(s) per run, "
            f"{args.repeats} repeats, {os.cpu_count()} CPUs (other work may share the machine); "
            f"target >= {TARGET_VS_STOCK}x stock for torch and dali-cpu")
    print(table)
    print(note)
    print(json.dumps({"benchmark": "loader", "device": str(device), "workers": args.workers, "copies": args.copies,
                      "image_size": args.image_size, "batch_size": args.batch_size, "repeats": args.repeats,
                      "epochs": args.epochs, "cpus": os.cpu_count(), "versions": summary(), "machine": machine(),
                      "images_per_s": {k: round(v, 1) for k, v in medians.items()},
                      "images_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                      "vs_stock": {k: round(v, 3) for k, v in ratios.items()}}))
    if args.record:
        record("Loader throughput (benchmarks/loader.py)", table, note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
