"""WebDataset tars someone else wrote (timm's `imagenet-1k-wds`, `webdataset.ShardWriter` output, ...) -> the side
files this trainer reads, without rewriting, copying or changing a tar. The adoption: shards/adopt.py.

    python tools/adopt_shards.py SRC [OUT] [--label auto|cls|json:FIELD] [--class-field FIELD] [--classes FILE]
                                 [--train GLOB] [--val GLOB] [--workers N] [--skip-bad]

SRC: a folder, s3:// prefix or http(s):// URL of .tar files. Splits: from timm's split-info file SRC/_info.json
when there is one (its train and validation splits), else from the tars' names (a word train, or val/validation,
in each), or the --train/--val patterns. Per tar OUT (default SRC; a local folder, which a remote SRC needs) gets
its DALI index (.idx), member checksums (.crc32) and labels (.labels), and OUT/manifest.json the splits, classes,
sample counts, each tar's size and sha256, and every sample left out (undecodable or unusable images, by shard
and key with the reason). Train on OUT exactly as on make_shards' output: `train.py ... OUT`.

Every image is checked as make_shards checks its inputs (shards/imagecheck.py). Restartable: run the same command
again after an interruption; tars done are reused (by their size and modification time or ETag), and a rerun of a
finished adoption changes nothing.

Exit status: 0 done; 1 done, but samples were left out (listed in the manifest; --skip-bad accepts that); 2 bad
arguments or input (one line on stderr).
"""
import argparse
import sys

from shards.adopt import adopt
from shards.errors import ConvertError
from shards.workers import usable_cpus
from tools.make_shards import OneLineParser, positive_int


def label_source(text):
    if text in ("auto", "cls") or (text.startswith("json:") and len(text) > len("json:")):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cls or json:FIELD, got {text!r}")


def parse_args(argv):
    parser = OneLineParser(
        prog="adopt_shards.py",
        description="Adopt WebDataset tars in place: write the DALI index, member checksums, labels and manifest "
                    "this trainer needs beside them (or in OUT), checking every image; the tars are not changed.",
        epilog="Exit status: 0 done; 1 done but samples were left out (see manifest.json); 2 bad arguments or input.")
    parser.add_argument("src", metavar="SRC", help="folder, s3://bucket/prefix or http(s):// URL of the .tar files")
    parser.add_argument("out", metavar="OUT", nargs="?", default=None,
                        help="local folder for the side files and manifest.json (default: SRC; needed when SRC is "
                             "remote)")
    parser.add_argument("--label", type=label_source, default="auto", metavar="SOURCE",
                        help="where each sample's class number is: 'cls' (the .cls member), 'json:FIELD' (a field "
                             "of the .json member: the torch backend alone reads such a split), or 'auto' (.cls "
                             "when the first sample has one, else json:label) (default: %(default)s)")
    parser.add_argument("--class-field", default=None, metavar="FIELD",
                        help="field of the .json members naming the sample's class, for the class list (default: "
                             "class_name when the first sample's .json has it)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="class names, one a line in label order (default: from --class-field, else numbers "
                             "up to the num_classes of _info.json or the largest label)")
    parser.add_argument("--train", default=None, metavar="GLOB", help="names of the train split's tars "
                        "(default: from _info.json, else the tars whose name holds the word train)")
    parser.add_argument("--val", default=None, metavar="GLOB", help="names of the val split's tars (default: from "
                        "_info.json, else the tars whose name holds the word val or validation)")
    parser.add_argument("--workers", type=positive_int, metavar="N", default=usable_cpus(),
                        help="processes that read tars in parallel (default: %(default)s, the CPUs available)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="exit 0 even if samples were left out (they are listed in the manifest either way)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        return adopt(args)
    except (ConvertError, OSError) as exc:
        print(f"adopt_shards.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adopt_shards.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
