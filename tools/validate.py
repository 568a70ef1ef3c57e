#!/usr/bin/env python
"""Top-1/top-5 of a checkpoint on shards or on a plain folder of images, from the checkpoint alone.

    python tools/validate.py CHECKPOINT DATA [--tta flip] [any train.py flag: --batch-size, --workers, ...]

= `train.py --evaluate --resume CHECKPOINT DATA`: the network, attention type and val image size come from the
checkpoint (ours, or one released with the CBAM authors' code); DATA is a shard folder (or its URL) or an
ImageNet-style folder (DATA/val/<wnid>/*.JPEG or DATA/<wnid>/*.JPEG; class order = the checkpoint's class
list, else the sorted folder names). Runs under torchrun too. Errors are one line, exit 2 (1 for a damaged file).
"""
import argparse
import os
import sys

import train
from training.config import OneLineParser, UsageError


def main(argv=None):
    parser = OneLineParser(prog="validate.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .pth.tar of train.py, or a state dict of the authors' code")
    parser.add_argument("data", metavar="DATA", help="shard folder or URL, or a folder of <class>/*.JPEG")
    parser.add_argument("--tta", default="none", choices=["none", "flip"],
                        help="flip = average the logits of each image and its mirror image")
    try:
        args, rest = parser.parse_known_args(argv)
        if not os.path.isfile(args.checkpoint):
            raise UsageError(f"checkpoint not found: {args.checkpoint}")
    except UsageError as exc:
        sys.stderr.write(f"validate.py: error: {exc}\n")
        return 2
    return train.cli(["--evaluate", "--resume", args.checkpoint, "--tta", args.tta, *rest, args.data],
                     prog="validate.py")


if __name__ == "__main__":
    sys.exit(main())
