"""ImageNet folder -> WebDataset shards (+ DALI index and member checksums per shard, classes.txt, manifest.json),
nothing lost. The format: shards/format.py; the conversion: shards/convert.py.

    python tools/make_shards.py SRC OUT [--splits train,val] [--workers N] [--max-count N] [--max-size SIZE]
                                [--max-side PX] [--quality Q] [--seed S] [--skip-bad] [--allow-empty-classes]
                                [--overwrite]

Input: SRC/train/<wnid>/* and SRC/val/<wnid>/* (ImageFolder layout), or SRC/train_list.txt / SRC/val_list.txt
with lines `relative/path label` (paths relative to SRC; the label is the last field, so paths may hold spaces).
When a split has both, its list file wins. Class index = position of the wnid in the sorted train wnids.
Names the outputs cannot store (not UTF-8, control characters; see name_problem): a class folder is refused before
any work (exit 2), an image file is skipped with the reason under its escaped name.

Each split is done in two phases: (1) check every file in parallel (a 1/8-scale decode that still reads all
entropy-coded data, see shards/imagecheck.py); (2) shuffle the good samples with a permutation from --seed, cut
them into shards whose sample counts differ by at most one, and write whole shards in parallel. A shard appears
under its final name only when complete (written as *.tmp, then renamed) and a record of it goes into
OUT/.make_shards/, so a run killed at any moment and started again with the same arguments reuses every shard it
can verify (re-hashing it) and rewrites the rest; OUT/manifest.json is written last, after every shard and index
has been fsynced.

Exit status: 0 done; 1 done, but some files could not be read or decoded and were skipped (listed in the manifest;
pass --skip-bad to accept that), or a class has no train sample (--allow-empty-classes accepts that); 2 bad
arguments or environment (one line on stderr).
"""
import argparse
import re
import sys

from pipeline.augment import MIN_IMAGE_SIZE, val_resize_size
from shards.convert import convert
from shards.errors import ConvertError
from shards.sources import SPLITS
from shards.workers import usable_cpus

# The smallest --max-side, 37 px: the shorter side the val transform resizes to (pipeline/augment.py
# val_resize_size) at the smallest crop train.py takes (pipeline/augment.py MIN_IMAGE_SIZE). An image stored
# with a longer side below it is upsampled by the val transform at every --image-size train.py accepts, and its
# train crops (8% to 100% of it) more still, so such a value only throws detail away. At the default 224 px crop
# the val resize is 256 px: choose --max-side from the size you will train at.
MIN_MAX_SIDE = val_resize_size(MIN_IMAGE_SIZE)

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
                 "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12}


# ---------------------------------------------------------------------------------------------------- arguments

def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def max_side(text):
    value = positive_int(text)
    if value < MIN_MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_MAX_SIDE} pixels (the val resize at the smallest "
                                         f"--image-size train.py takes, {MIN_IMAGE_SIZE}), got {value}")
    return value


def jpeg_quality(text):
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {value}")
    return value


def byte_size(text):
    """'500M' -> 524288000; K/M/G/T are powers of 1024, KB/MB/GB/TB powers of 1000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", text.upper())
    if not match or match.group(2) == "B":
        raise argparse.ArgumentTypeError(f"expected a size like 500M or 1G, got {text!r}")
    value = int(float(match.group(1)) * SIZE_SUFFIXES[match.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def split_list(text):
    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown or len(set(splits)) != len(splits):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of train,val, got {text!r}")
    return splits


class OneLineParser(argparse.ArgumentParser):
    """A bad flag value is one line naming the flag, the value and what it must be (argparse's own message), not
    the whole usage block before it; exit status 2 as argparse's."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv):
    parser = OneLineParser(
        prog="make_shards.py",
        description="Convert an ImageNet-layout folder into WebDataset shards (.tar + DALI .idx), classes.txt and "
                    "manifest.json. If interrupted, run the same command again: complete shards are verified and "
                    "reused, the rest is rewritten.",
        epilog="Exit status: 0 done; 1 done but some files were undecodable and skipped (see manifest.json); "
               "2 bad arguments, input or output folder.")
    parser.add_argument("src", metavar="SRC",
                        help="dataset root: train/<wnid>/*, val/<wnid>/* and/or train_list.txt, val_list.txt "
                             "(lines 'relative/path label'; a list file wins over the folder)")
    parser.add_argument("out", metavar="OUT", help="output folder for the shards (created if missing)")
    parser.add_argument("--splits", type=split_list, metavar="SPLITS", default=list(SPLITS),
                        help="comma-separated splits to convert (default: train,val)")
    parser.add_argument("--workers", type=positive_int, metavar="N", default=usable_cpus(),
                        help="worker processes that check images and write shards (default: %(default)s, "
                             "the CPUs available)")
    parser.add_argument("--max-count", type=positive_int, metavar="N", default=1000,
                        help="maximum samples per shard (default: %(default)s, about 110 MB of ImageNet train)")
    parser.add_argument("--max-size", type=byte_size, metavar="SIZE", default=None,
                        help="maximum shard size in bytes; suffixes K, M, G, T are powers of 1024, KB, MB, GB, "
                             "TB powers of 1000 (default: no limit). Planned from source sizes: a shard may run "
                             "over by what re-encoding adds, and always holds at least one sample")
    parser.add_argument("--max-side", type=max_side, metavar="PX", default=None,
                        help=f"downscale images whose longer side exceeds this many pixels to exactly that "
                             f"(aspect ratio kept, Lanczos) and re-encode them at --quality; at least "
                             f"{MIN_MAX_SIDE} (default: off, valid JPEGs are stored byte for byte)")
    parser.add_argument("--quality", type=jpeg_quality, metavar="Q", default=95,
                        help="JPEG quality 1-100 for re-encoded images: converted ones and, with --max-side, "
                             "downscaled ones (default: %(default)s)")
    parser.add_argument("--seed", type=int, metavar="S", default=0,
                        help="seed of the permutation that shuffles samples across shards (default: %(default)s)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="exit 0 even if undecodable files were skipped (they are listed in the manifest "
                             "either way)")
    parser.add_argument("--allow-empty-classes", action="store_true",
                        help="exit 0 even if a class has no train sample (no files, or only skipped ones); such "
                             "classes are named on stderr either way")
    parser.add_argument("--overwrite", action="store_true",
                        help="if OUT holds shards of a different run (other source or options), delete them "
                             "first; without it that is an error. Output of the same run is always resumed. "
                             "Files this tool does not write are left alone")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        return convert(args)
    except (ConvertError, OSError) as exc:  # OSError: disk full, permissions, a source changed while converting
        print(f"make_shards.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_shards.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
