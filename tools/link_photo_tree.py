#!/usr/bin/env python
"""An ImageNet-shaped folder of real photographs for benchmarks, made of links to a few hundred JPEGs.

    python tools/link_photo_tree.py PHOTOS OUT [--classes 100] [--train-per-class 320] [--val-per-class 10]

PHOTOS is a folder of JPEGs (for example the shared ImageNet samples); OUT/train/<class>/ and OUT/val/<class>/
receive hard links to them (symbolic links where OUT is on another file system), each photograph used many times
over, round robin, so every class mixes all of them. Photographs, not generated images: decode cost, file sizes
and aspect ratios are ImageNet's. Class folders are named class0000, class0001, ...; link names are unique.
Re-running with the same arguments into the same OUT is a no-op; OUT holding anything else is an error.
"""
import argparse
import os
import sys

JPEG_SUFFIXES = (".jpeg", ".jpg")


def photos_in(folder):
    """Sorted paths of the JPEG files directly inside `folder`; ValueError naming it when there are none."""
    if not os.path.isdir(folder):
        raise ValueError(f"photo folder not found: {folder}")
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if name.lower().endswith(JPEG_SUFFIXES) and os.path.isfile(os.path.join(folder, name)))
    if not paths:
        raise ValueError(f"no .jpg/.jpeg files in {folder}")
    return paths


def plan(photos, classes, train_per_class, val_per_class):
    """[(relative link path, photo path)]: photos taken round robin across splits, classes and slots."""
    links, next_photo = [], 0
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            for i in range(per_class):
                photo = photos[next_photo % len(photos)]
                next_photo += 1
                name = f"{split}_{c:04d}_{i:06d}{os.path.splitext(photo)[1]}"
                links.append((os.path.join(split, f"class{c:04d}", name), photo))
    return links


def link(photo, dest):
    try:
        os.link(photo, dest)
    except OSError:  # another file system, or hard links not allowed there
        os.symlink(os.path.abspath(photo), dest)


def make_tree(photos_dir, out, classes, train_per_class, val_per_class):
    """Creates the tree; returns the number of links made (0 when it was already complete)."""
    links = plan(photos_in(photos_dir), classes, train_per_class, val_per_class)
    made = 0
    for relative, photo in links:
        dest = os.path.join(out, relative)
        if os.path.lexists(dest):
            if os.path.realpath(dest) != os.path.realpath(photo) and not os.path.samefile(dest, photo):
                raise ValueError(f"{dest} exists and is not a link to {photo}: choose an empty OUT folder")
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        link(photo, dest)
        made += 1
    return made


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", help="folder of JPEG photographs")
    p.add_argument("out", help="output folder (train/ and val/ are created inside)")
    p.add_argument("--classes", type=int, default=100, help="number of class folders (default 100)")
    p.add_argument("--train-per-class", type=int, default=320, help="train links per class (default 320)")
    p.add_argument("--val-per-class", type=int, default=10, help="val links per class (default 10)")
    args = p.parse_args(argv)
    for flag in ("classes", "train_per_class"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.val_per_class < 0:
        p.error(f"--val-per-class must be >= 0, got {args.val_per_class}")
    try:
        made = make_tree(args.photos, args.out, args.classes, args.train_per_class, args.val_per_class)
    except (ValueError, OSError) as exc:
        print(f"link_photo_tree.py: error: {exc}", file=sys.stderr)
        return 2
    total = args.classes * (args.train_per_class + args.val_per_class)
    print(f"{args.out}: {total} photographs in {args.classes} classes ({made} links made now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
