"""Command-line flags of train.py: the seed's flags with their meaning and defaults, plus ours.

Every default lives here, with its unit. Invalid values are one line on stderr and exit status 2.
"""
import argparse
import json
import os
import sys

from model import CBAM_IMPLS
from pipeline import BACKENDS
from training.compile import COMPILE_CHOICES, default_cache_dir

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def fail(message):
    """A user error: one line on stderr, exit status 2 (argparse's convention)."""
    sys.stderr.write(f"train.py: error: {message}\n")
    sys.exit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; we print one line, still exit 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser():
    p = OneLineParser(prog="train.py", description="ImageNet training of ResNet + CBAM/BAM/SE with DDP.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DATA", help="shard folder written by tools/make_shards.py")
    # The seed's flags (github.com/Jongchan/attention-module, train_imagenet.py).
    p.add_argument("--arch", default="resnet", choices=["resnet"], help="architecture family")
    p.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101], help="ResNet depth")
    p.add_argument("--att-type", default="none", type=str.lower, choices=["none", "se", "bam", "cbam"],
                   help="attention module (any case)")
    p.add_argument("--epochs", type=int, default=90, help="total epochs to run")
    p.add_argument("--start-epoch", type=int, default=0, help="epoch number to start at (useful on restarts)")
    p.add_argument("--batch-size", type=int, default=256, help="GLOBAL batch size (images per step, all ranks)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate for --batch-size images per step")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay")
    p.add_argument("--print-freq", type=int, default=10, help="log every N steps (the only host syncs)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="checkpoint to resume from, or 'auto' for {output-dir}/{prefix}_checkpoint.pth.tar")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the --resume checkpoint on val")
    p.add_argument("--seed", type=int, default=1234, help="random seed (model init, data order, augmentation)")
    p.add_argument("--prefix", default=None, help="checkpoint/metrics name prefix (default RESNET{depth}_{ATT})")
    p.add_argument("--workers", type=int, default=4,
                   help="data-loading worker processes per node, shared among the node's ranks")
    p.add_argument("--ngpu", type=int, default=1,
                   help="processes to start on this node when not launched by torchrun (one per GPU)")
    # Ours.
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="data loader: auto = dali with DALI+CUDA, else torch")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 on a GPU that supports it, off on CPU")
    p.add_argument("--cbam-impl", default="auto", choices=CBAM_IMPLS,
                   help="how CBAM is computed (same parameters and numbers for all): auto = fused Triton kernels "
                        "on CUDA when Triton imports, else plain PyTorch; triton; torch; reference = the authors' "
                        "formulation")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for the model (the loader always delivers channels_last images)")
    p.add_argument("--compile", nargs="?", const="blocks", default="auto", choices=COMPILE_CHOICES,
                   help="torch.compile: blocks = each residual block (identical blocks share one compilation), "
                        "model = the whole model as one graph, off; auto = blocks on CUDA, off elsewhere; "
                        "a bare --compile means blocks")
    p.add_argument("--no-compile", action="store_const", const="off", dest="compile", help="same as --compile off")
    p.add_argument("--compile-cache", default=default_cache_dir(), metavar="DIR",
                   help="folder of the compiled-code cache kept between runs (inductor graphs, Triton binaries); "
                        "'none' leaves torch's own default")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its convolution algorithms once for the fixed shapes (CUDA only)")
    p.add_argument("--lr-schedule", default="step", choices=["step", "cosine"],
                   help="step = x0.1 every 30 epochs (the seed's); cosine = per-step cosine to 0")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear LR warm-up length, in epochs")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--no-bn-weight-decay", "--no-bn-wd", action="store_true", dest="no_bn_weight_decay",
                   help="no weight decay on BatchNorm parameters and biases")
    p.add_argument("--image-size", type=int, default=224, help="train crop side in pixels")
    p.add_argument("--val-image-size", type=int, default=None, help="val crop side in pixels (default: --image-size)")
    p.add_argument("--output-dir", default="checkpoints", help="where checkpoints and metrics go")
    p.add_argument("--benchmark", action="store_true",
                   help="measure images/sec (end to end, loader alone, model alone); no training, no checkpoints")
    p.add_argument("--benchmark-warmup", type=int, default=10, help="--benchmark: untimed steps first")
    p.add_argument("--benchmark-steps", type=int, default=30, help="--benchmark: timed steps")
    return p


def parse_args(argv=None):
    """Parsed and validated flags as an argparse.Namespace; exits 2 with one line on any invalid value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (0 <= args.start_epoch < args.epochs or args.evaluate or args.benchmark,
         f"--start-epoch must be in [0, --epochs={args.epochs}), got {args.start_epoch}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.print_freq >= 1, f"--print-freq must be >= 1, got {args.print_freq}"),
        (args.workers >= 0, f"--workers must be >= 0, got {args.workers}"),
        (args.ngpu >= 1, f"--ngpu must be >= 1, got {args.ngpu}"),
        (args.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {args.warmup_epochs}"),
        (0 <= args.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {args.label_smoothing}"),
        (args.image_size >= 32, f"--image-size must be >= 32 pixels, got {args.image_size}"),
        (args.val_image_size is None or args.val_image_size >= 32,
         f"--val-image-size must be >= 32 pixels, got {args.val_image_size}"),
        (args.benchmark_warmup >= 0, f"--benchmark-warmup must be >= 0, got {args.benchmark_warmup}"),
        (args.benchmark_steps >= 1, f"--benchmark-steps must be >= 1, got {args.benchmark_steps}"),
        (not (args.evaluate and not args.resume), "--evaluate needs --resume PATH (the checkpoint to evaluate)"),
        (args.resume in ("", "auto") or os.path.isfile(args.resume), f"--resume checkpoint not found: {args.resume}"),
        (os.path.isdir(args.data), f"DATA folder not found: {args.data}"),
        (not os.path.isdir(args.data) or os.path.isfile(os.path.join(args.data, "manifest.json")),
         f"DATA has no manifest.json (write it with tools/make_shards.py): {args.data}"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    args.att_type = {"none": "none", "se": "SE", "bam": "BAM", "cbam": "CBAM"}[args.att_type]
    if args.val_image_size is None:
        args.val_image_size = args.image_size
    if args.prefix is None:
        args.prefix = f"RESNET{args.depth}_{args.att_type.upper()}"
    return args


def check_world(args, world_size):
    """Checks that need the world size; exits 2 with one line like parse_args."""
    if args.batch_size % world_size:
        fail(f"--batch-size {args.batch_size} is the global batch and must divide by the "
                             f"world size {world_size}")


def as_dict(args):
    """The resolved configuration as plain JSON-able data (saved with every checkpoint and run)."""
    return json.loads(json.dumps(vars(args), default=str))
