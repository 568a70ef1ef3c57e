#!/usr/bin/env python
"""Top-k classes of images under a checkpoint, with probabilities.

    python tools/predict.py --checkpoint CKPT IMAGE_OR_FOLDER... [--top-k 5] [--words words.txt] [--json]

Images get the val transform the checkpoint was evaluated with (pipeline/folder.py); folders are searched
recursively. Class names are the shards' class list stored in the checkpoint (wnids for ImageNet);
`--words FILE` adds readable names from ImageNet's words.txt ("n01440764<TAB>tench, Tinca tinca") or
LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca"); for a checkpoint without a class list (the authors'),
a words file of exactly as many lines as classes gives the class order too. Output: a table, or one JSON
object per image (`--json`). An image that cannot be read or decoded (over the pixel limit, truncated, not an
image) is named on stderr and skipped; the exit status is then 1. Usage errors (a folder without image files
among them): one line, exit 2.
"""
import argparse
import json
import os
import sys

import torch

from pipeline.augment import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, image_size_problem
from pipeline.folder import IMAGE_SUFFIXES, images_under, load_image, stack_images
from training import load
from training.config import OneLineParser, UsageError
from training.errors import run_reporting_usage_errors


def predict(model, arrays, device, top_k):
    """(probabilities, labels), each (N, top_k), for a list of uint8 HWC arrays."""
    with torch.no_grad():
        probs = torch.softmax(model(stack_images(arrays, device)).float(), dim=1)
    return probs.topk(top_k, dim=1)


def report(path, probs, labels, names, as_json):
    top = [{"label": int(label), "class": names[label][0], "name": names[label][1], "prob": round(float(p), 6)}
           for p, label in zip(probs, labels)]
    if as_json:
        print(json.dumps({"image": path, "top": top}))
        return
    print(path)
    for rank, entry in enumerate(top, 1):
        print(f"  {rank:>2}  {entry['prob']:.4f}  {entry['class']:<12} {entry['name']}".rstrip())


def parse_args(argv):
    p = OneLineParser(prog="predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of them")
    p.add_argument("--checkpoint", required=True, help="a .pth.tar of train.py, or a state dict of the authors' code")
    p.add_argument("--top-k", type=int, default=5, help="classes per image")
    p.add_argument("--words", default="", metavar="FILE", help="ImageNet words.txt or LOC_synset_mapping.txt")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"crop side in pixels, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = p.parse_args(argv)
    for flag in ("top_k", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.image_size is not None and image_size_problem("--image-size", args.image_size):
        p.error(image_size_problem("--image-size", args.image_size))
    return args


def image_files(arguments):
    """The image files the IMAGE_OR_FOLDER arguments name; UsageError naming every folder that holds none (a
    typo or the wrong folder, which would otherwise print nothing and succeed)."""
    found, empty = [], []
    for path in arguments:
        files = images_under([path])
        if os.path.isdir(path) and not files:
            empty.append(path)
        found += files
    if empty:
        raise UsageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(empty)}")
    return found


def predict_files(args):
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    paths = image_files(args.images)
    trained = load.read(args.checkpoint)
    names = load.class_names(trained, load.read_words(args.words) if args.words else {})
    model = trained.build("auto").to(args.device)
    size = args.image_size or trained.image_size
    top_k = min(args.top_k, trained.num_classes)
    failed = 0
    for first in range(0, len(paths), args.batch_size):
        batch, arrays = [], []
        for path in paths[first:first + args.batch_size]:
            try:
                arrays.append(load_image(path, size))
                batch.append(path)
            except ValueError as exc:
                failed += 1
                print(f"predict.py: {exc}", file=sys.stderr)
        if batch:
            probs, labels = predict(model, arrays, args.device, top_k)
            for path, p, label in zip(batch, probs.tolist(), labels.tolist()):
                report(path, p, label, names, args.json)
    if failed:
        print(f"predict.py: {failed} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    return run_reporting_usage_errors("predict.py", lambda: predict_files(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
