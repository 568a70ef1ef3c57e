"""Writes a small, learnable, photo-like JPEG set as an ImageNet-layout tree (no ImageNet needed; the images are
shards/synthetic.py's). Used by `make demo`.

    python tools/make_demo_data.py OUT [--classes 10] [--train-per-class 80] [--val-per-class 20] [--size 96]
"""
import argparse
import sys

from shards.synthetic import write_tree


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (train/ and val/ are created inside)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--train-per-class", type=int, default=80, help="train images per class (default 80)")
    parser.add_argument("--val-per-class", type=int, default=20, help="val images per class (default 20)")
    parser.add_argument("--size", type=int, default=96, help="nominal image side in pixels (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes writing images (default 1)")
    args = parser.parse_args(argv)
    for flag in ("classes", "train_per_class", "size", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    write_tree(args.out, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed,
               workers=args.workers)
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
