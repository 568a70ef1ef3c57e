"""The host-side steps of the CPU loaders, each against the simpler way it replaced, in one run on one machine:

  normalise, pooled     Normalizer with its BufferPool (pipeline/normalize.py) vs the same step allocating a fresh
                        output per batch (capacity 0): what recycling the output memory saves on CPU
  normalise, row        the per-row multiply-add Normalizer does vs broadcasting a (1, 3, 1, 1) mean and std over
                        the channels_last batch (the textbook form)
  flip                  mirroring the resized window in Pillow vs copying a reversed numpy view into the batch
  window decode         a train window decoded by the ROI decoder (RoiWindows) vs Pillow's whole-image decode
                        (PillowWindows), both with the DCT-domain downscale, on the shared ImageNet photographs
  read sample           a sample's members read at the .idx offsets (pipeline/shard_read.py) vs streaming the tar
  auto-augment          RandAugment (--auto-augment rand-m9-mstd0.5) grouped by operation over the batch
                        (pipeline/augment.py AutoAugmenter) vs the same operations sample by sample

Figures are medians over --repeats in ms per image (or per sample); the ratio is baseline / ours. Prints every
row the moment it is measured and a JSON line at the end; --record appends the table to BENCHMARKS.md.

    .venv/bin/python benchmarks/host_steps.py [--batch-size 64] [--image-size 224] [--repeats 7] [--record]
"""
import argparse
import json
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from benchmarks.common import ROOT, markdown_table, median_time, record
from pipeline import augment, roi_jpeg
from pipeline.jpeg_decode import PillowWindows, RoiWindows
from pipeline.normalize import Normalizer


def normalise_rows(batch_size, image_size, repeats):
    pixels = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8)
    cpu = torch.device("cpu")
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        pooled, fresh = Normalizer(cpu, dtype), Normalizer(cpu, dtype, reusable=0)
        rows.append((f"normalise {str(dtype)[6:]}, output memory", "pooled", lambda n=pooled: n(pixels),
                     "fresh per batch", lambda n=fresh: n(pixels), batch_size))
    mean = torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1) * 255
    out = torch.empty((batch_size, 3, image_size, image_size)).contiguous(memory_format=torch.channels_last)
    by_rows = Normalizer(cpu, torch.float32)

    def broadcast():
        torch.sub(pixels.permute(0, 3, 1, 2), mean, out=out)
        out.div_(std)

    rows.append(("normalise float32, arithmetic", "per-row pattern", lambda: by_rows(pixels),
                 "(1,3,1,1) broadcast", broadcast, batch_size))
    return rows


def flip_rows(image_size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
    target = np.empty((image_size, image_size, 3), dtype=np.uint8)

    def pillow():
        target[...] = np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))

    def numpy_view():
        target[...] = np.asarray(image)[:, ::-1]

    return [("flip a resized window", "Pillow transpose", pillow, "reversed numpy view", numpy_view, 1)]


def decode_rows(image_size, photographs):
    jpegs = [open(path, "rb").read() for path in photographs]
    if not jpegs or not roi_jpeg.available()[0]:
        print(f"window decode: skipped ({'no photographs' if not jpegs else roi_jpeg.available()[1]})", flush=True)
        return []

    def windows(decoder):
        rng = np.random.default_rng(0)
        for jpeg in jpegs:
            handle, (width, height) = decoder.open(jpeg)
            left, top, w, h = augment.random_resized_crop_box(width, height, rng)
            decoder.resize(handle, (width, height), (left, top, left + w, top + h), image_size)

    roi, pillow = RoiWindows(), PillowWindows()
    return [("decode a train window", "ROI decoder", lambda: windows(roi), "Pillow whole image",
             lambda: windows(pillow), len(jpegs))]


def read_rows(photographs):
    """Shards of the photographs written by the real tools/make_shards.py, read both ways."""
    import subprocess
    import sys

    from pipeline.shard_read import read_indexed_samples, read_streamed_samples
    from shards.manifest import load_split

    if not photographs:
        return []
    work = tempfile.mkdtemp(prefix="host-steps-")
    for i, path in enumerate(photographs):  # 10 classes, the photographs round robin
        folder = os.path.join(work, "src", "train", f"class{i % 10:02d}")
        os.makedirs(folder, exist_ok=True)
        os.symlink(os.path.abspath(path), os.path.join(folder, os.path.basename(path)))
    subprocess.run([sys.executable, "-m", "tools.make_shards", os.path.join(work, "src"), os.path.join(work, "out"),
                    "--workers", "2", "--splits", "train"], check=True, capture_output=True)
    shards = load_split(os.path.join(work, "out"), "train").shards
    count = sum(shard.samples for shard in shards)

    def read(reader):
        for shard in shards:
            for _ in reader(shard, 0, shard.samples):
                pass

    return [("read a sample's members", "at .idx offsets", lambda: read(read_indexed_samples), "tar stream",
             lambda: read(read_streamed_samples), count)]


def auto_augment_rows(batch_size, image_size):
    pixels = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8)
    augmenter = augment.AutoAugmenter(augment.parse_auto_augment("rand-m9-mstd0.5"))

    def augment_batch(grouped):
        rngs = [np.random.default_rng([0, i]) for i in range(batch_size)]
        augmenter.rand_in_place(pixels.permute(0, 3, 1, 2).clone(), rngs, grouped)

    return [("RandAugment m9 mstd0.5", "grouped by operation", lambda: augment_batch(True), "sample by sample",
             lambda: augment_batch(False), batch_size)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--photos", default=os.path.join(ROOT, "..", "shared", "data", "imagenet-sample"),
                        help="folder of JPEG photographs for the decode and read rows (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.image_size < 8 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1, --image-size >= 8")
    photographs = sorted(os.path.join(args.photos, name) for name in os.listdir(args.photos)
                         if name.lower().endswith((".jpeg", ".jpg"))) if os.path.isdir(args.photos) else []
    torch.set_num_threads(1)  # the loaders run these steps on one thread (pipeline/loader.py host_work_threads)
    cases = (normalise_rows(args.batch_size, args.image_size, args.repeats) + flip_rows(args.image_size)
             + decode_rows(args.image_size, photographs) + read_rows(photographs)
             + auto_augment_rows(args.batch_size, args.image_size))
    table, results = [], {}
    for step, ours_name, ours, base_name, baseline, per in cases:
        ours(), baseline()  # warm-up: first-touch pages, lazy imports
        ours_ms = median_time(ours, args.repeats)[0] * 1e3 / per
        base_ms = median_time(baseline, args.repeats)[0] * 1e3 / per
        row = [step, ours_name, f"{ours_ms:.4f}", base_name, f"{base_ms:.4f}", f"{base_ms / ours_ms:.2f}x"]
        print(" | ".join(row), flush=True)
        table.append(row)
        results[step] = {"ours_ms": ours_ms, "baseline_ms": base_ms, "ratio": base_ms / ours_ms}
    print(json.dumps({"benchmark": "host_steps", "batch_size": args.batch_size, "image_size": args.image_size,
                      "steps": results}))
    if args.record:
        record("Host steps of the CPU loaders (benchmarks/host_steps.py)",
               markdown_table(["step", "ours", "ms/image", "baseline", "ms/image", "baseline / ours"], table),
               f"batch {args.batch_size}, {args.image_size} px, median of {args.repeats}, one intra-op thread")


if __name__ == "__main__":
    main()
