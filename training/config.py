"""train.py's configuration: the flags (the CBAM authors' train_imagenet.py flags, with their meaning and defaults,
plus ours) and the RunConfig they resolve to on this machine, once, before anything else runs.

Every default lives here, with its unit. An invalid value raises UsageError (one line; train.py exits 2).
"""
import argparse
import importlib.util
import json
import os
import types
from dataclasses import dataclass

import torch

from model import CBAM_IMPLS
from model.cbam import resolve_impl
from pipeline import (
    BACKENDS,
    DEFAULT_CACHE_BYTES,
    VERIFY_MODES,
    BackendUnavailable,
    ShardError,
    default_record_dir,
    resolve_backend,
)
from pipeline.folder import folder_problem
from pipeline.storage import is_remote, normalize
from training.compile import COMPILE_CHOICES, default_cache_dir, resolve_compile, use_cache_dir
from training.schedule import AUTHORS_LR_STEPS, epoch_list, image_size_schedule

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


class UsageError(Exception):
    """A flag, file or setting the user must change: one line naming it; train.py exits 2 (argparse's status)."""


def _flag_type(parse, name):
    """An argparse type from a parser that raises ValueError: argparse then names the flag and the value."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; we raise a one-line UsageError instead."""

    def error(self, message):
        raise UsageError(message)


def build_parser():
    p = OneLineParser(prog="train.py", description="ImageNet training of ResNet + CBAM/BAM/SE with DDP.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DATA", help="shard folder written by tools/make_shards.py, or where it was "
                   "uploaded: s3://bucket/prefix (AWS environment, AWS_ENDPOINT_URL for S3-compatible stores), "
                   "http(s)://host/path, file://path")
    # The CBAM authors' flags (github.com/Jongchan/attention-module, train_imagenet.py).
    p.add_argument("-a", "--arch", default="resnet", choices=["resnet"], help="architecture family")
    p.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101], help="ResNet depth")
    p.add_argument("--att-type", default="none", type=str.lower, choices=["none", "se", "bam", "cbam"],
                   help="attention module (any case)")
    p.add_argument("--epochs", type=int, default=90, help="total epochs to run")
    p.add_argument("--start-epoch", type=int, default=0, help="epoch number to start at (useful on restarts)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="GLOBAL batch size (images per step, all ranks)")
    p.add_argument("--lr", "--learning-rate", type=float, default=0.1,
                   help="peak learning rate for --batch-size images per step")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", "--wd", type=float, default=1e-4, help="L2 weight decay")
    p.add_argument("-p", "--print-freq", type=int, default=10, help="log every N steps (the only host syncs)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="checkpoint to resume from, or 'auto' for {output-dir}/{prefix}_checkpoint.pth.tar")
    p.add_argument("--evaluate", action="store_true",
                   help="only evaluate the --resume checkpoint on val (its depth, attention type and val image "
                        "size come from the checkpoint); DATA may also be a folder of val/<class>/*.JPEG")
    p.add_argument("--seed", type=int, default=1234, help="random seed (model init, data order, augmentation)")
    p.add_argument("--prefix", default=None, help="checkpoint/metrics name prefix (default RESNET{depth}_{ATT})")
    p.add_argument("-j", "--workers", type=int, default=4,
                   help="data-loading worker processes per node, shared among the node's ranks")
    p.add_argument("--ngpu", type=int, default=1,
                   help="processes to start on this node when not launched by torchrun (one per GPU)")
    # Ours.
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="data loader: auto = dali with DALI+CUDA, else torch")
    p.add_argument("--verify-shards", default="background", choices=VERIFY_MODES,
                   help="check every shard against the sha256 in the manifest: background = while training (a "
                        "damaged shard stops the run at the next step, checkpoint saved), before = before each "
                        "epoch reads it, off")
    p.add_argument("--verify-record", default=default_record_dir(), metavar="DIR",
                   help="folder recording shards found intact (by inode, size, mtime), so each is hashed once per "
                        "machine; 'none' records nothing")
    p.add_argument("--cache-dir", default="", metavar="DIR",
                   help="with DATA in object storage: keep verified local copies of the shards the torch backend "
                        "reads here (shared by the ranks and runs of a machine), so later epochs read local disk; "
                        "default: ranged requests every epoch. The DALI backends keep their index files here")
    p.add_argument("--cache-size", type=float, default=DEFAULT_CACHE_BYTES / 2**30, metavar="GIB",
                   help="--cache-dir holds at most this many GiB of shards; the least recently used go first")
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
                        "model = the whole model as one graph, off; auto = blocks on CUDA, except CBAM with the fused "
                        "Triton kernels (faster eager on an H100), off elsewhere; "
                        "a bare --compile means blocks")
    p.add_argument("--no-compile", action="store_const", const="off", dest="compile", help="same as --compile off")
    p.add_argument("--compile-cache", default=default_cache_dir(), metavar="DIR",
                   help="folder of the compiled-code cache kept between runs (inductor graphs, Triton binaries); "
                        "'none' leaves torch's own default")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its convolution algorithms once for the fixed shapes (CUDA only)")
    p.add_argument("--lr-schedule", default="step", choices=["step", "cosine"],
                   help="step = x0.1 at each --lr-steps epoch; cosine = per-step cosine to 0")
    p.add_argument("--lr-steps", type=_flag_type(epoch_list, "epochs"), default=AUTHORS_LR_STEPS, metavar="E1,E2,..",
                   help="epochs where --lr-schedule step multiplies the LR by 0.1 (default: the authors' 30,60,90)")
    p.add_argument("--accum-steps", type=int, default=1, metavar="N",
                   help="gradient accumulation: one optimizer step per N batches, so the effective batch is N x "
                        "--batch-size (DDP synchronises gradients on the last of the N only)")
    p.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                   help="keep an exponential moving average of the weights with this decay per optimizer step "
                        "(e.g. 0.9998), evaluated beside the raw weights and saved in checkpoints; 0 = off")
    p.add_argument("--eval-weights", default="raw", choices=["raw", "ema"],
                   help="--evaluate: the checkpoint's trained weights or their moving average (--ema-decay)")
    p.add_argument("--pretrained", default="", metavar="PATH",
                   help="start a new run (epoch 0, fresh optimizer) from these weights: a checkpoint of ours, one "
                        "released with the authors' code, or a torchvision-layout ResNet state dict (attention "
                        "modules it lacks start fresh; the classifier is replaced when the classes differ)")
    p.add_argument("--pretrained-lr-scale", type=float, default=1.0, metavar="S",
                   help="--pretrained: the loaded parameters learn at S times the learning rate, new ones at 1x")
    p.add_argument("--tta", default="none", choices=["none", "flip"],
                   help="--evaluate: flip = average the logits of each image and its mirror image")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup with lam ~ Beta(ALPHA, ALPHA) on the device batch (e.g. 0.2); 0 = off")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="cutmix with lam ~ Beta(ALPHA, ALPHA) (e.g. 1.0); with --mixup too, each step uses one "
                        "of the two at random; 0 = off")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to {output-dir}/{prefix}_tensorboard "
                        "(needs the tensorboard package: pip install -e '.[tensorboard]')")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear LR warm-up length, in epochs")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--no-bn-weight-decay", "--no-bn-wd", action="store_true", dest="no_bn_weight_decay",
                   help="no weight decay on BatchNorm parameters and biases")
    p.add_argument("--image-size", type=_flag_type(image_size_schedule, "size"), default=image_size_schedule("224"),
                   metavar="PX|START:END@E0:E1",
                   help="train crop side in pixels, or a progressive schedule: START px until epoch E0, then a "
                        "linear ramp to END px at epoch E1, in steps of 32 (e.g. 160:192@28:34)")
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
        (min(args.image_size.start, args.image_size.end) >= 32,
         f"--image-size must be >= 32 pixels, got {args.image_size}"),
        (args.accum_steps >= 1, f"--accum-steps must be >= 1, got {args.accum_steps}"),
        (args.ema_decay == 0 or 0 < args.ema_decay < 1, f"--ema-decay must be in (0, 1) or 0 (off), got "
                                                         f"{args.ema_decay}"),
        (args.mixup >= 0, f"--mixup must be >= 0, got {args.mixup}"),
        (args.cutmix >= 0, f"--cutmix must be >= 0, got {args.cutmix}"),
        (args.val_image_size is None or args.val_image_size >= 32,
         f"--val-image-size must be >= 32 pixels, got {args.val_image_size}"),
        (args.benchmark_warmup >= 0, f"--benchmark-warmup must be >= 0, got {args.benchmark_warmup}"),
        (args.benchmark_steps >= 1, f"--benchmark-steps must be >= 1, got {args.benchmark_steps}"),
        (not (args.evaluate and not args.resume), "--evaluate needs --resume PATH (the checkpoint to evaluate)"),
        (args.resume in ("", "auto") or os.path.isfile(args.resume), f"--resume checkpoint not found: {args.resume}"),
        (args.cache_size > 0, f"--cache-size must be > 0 GiB, got {args.cache_size}"),
        (args.tta == "none" or args.evaluate, "--tta needs --evaluate"),
        (not (args.pretrained and args.evaluate), "--pretrained starts training; --evaluate scores --resume PATH"),
        (not args.pretrained or os.path.isfile(args.pretrained), f"--pretrained file not found: {args.pretrained}"),
        (args.pretrained_lr_scale > 0, f"--pretrained-lr-scale must be > 0, got {args.pretrained_lr_scale}"),
        (_data_problem(args.data, args.evaluate) is None, _data_problem(args.data, args.evaluate)),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    args.att_type = {"none": "none", "se": "SE", "bam": "BAM", "cbam": "CBAM"}[args.att_type]
    if args.evaluate:
        _take_architecture_from_checkpoint(args, _given(argv, ("depth", "att_type", "image_size", "val_image_size")))
    if args.val_image_size is None:
        args.val_image_size = args.image_size.end
    if args.prefix is None:
        args.prefix = f"RESNET{args.depth}_{args.att_type.upper()}"
    return args


def check_world(args, world_size):
    """Checks that need the world size; UsageError like parse_args."""
    if args.batch_size % world_size:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch and must divide by the "
                         f"world size {world_size}")


def _given(argv, dests):
    """The flags among `dests` that the command line sets (not left at their default)."""
    probe = build_parser()
    probe.set_defaults(**dict.fromkeys(dests))
    given = probe.parse_args(argv)
    return {dest for dest in dests if getattr(given, dest) is not None}


def _evaluated_checkpoint(args):
    """The file --evaluate scores: --resume PATH, or with 'auto' {prefix}_checkpoint.pth.tar in --output-dir (with
    no --prefix: the folder's only checkpoint). UsageError when there is none: never score initial weights."""
    if args.resume != "auto":
        return args.resume
    folder = args.output_dir
    if args.prefix is not None:
        path = os.path.join(folder, f"{args.prefix}_checkpoint.pth.tar")
        if not os.path.isfile(path):
            raise UsageError(f"--evaluate --resume auto: no checkpoint {path}")
        return path
    found = sorted(name for name in os.listdir(folder) if name.endswith("_checkpoint.pth.tar")) \
        if os.path.isdir(folder) else []
    if len(found) != 1:
        raise UsageError(f"--evaluate --resume auto: {len(found) or 'no'} checkpoints (*_checkpoint.pth.tar) in "
                         f"{folder}{': ' + ', '.join(found) if found else ''}; pass --resume PATH or --prefix")
    return os.path.join(folder, found[0])


def _take_architecture_from_checkpoint(args, given):
    """--evaluate: depth, attention type and val image size are the checkpoint's; an explicit --depth or
    --att-type that differs is refused (its weights would not fit), an explicit image size is honoured."""
    from .load import read
    args.resume = _evaluated_checkpoint(args)
    trained = read(args.resume)
    flags = (args.depth, args.att_type)
    args.depth, args.att_type = trained.depth, trained.att_type
    if {"depth", "att_type"} & given and flags != (trained.depth, trained.att_type):
        raise UsageError(f"checkpoint {args.resume} is {trained.arch}, this run is ResNet-{flags[0]} {flags[1]}: "
                         "pass the same --depth and --att-type, or neither (--evaluate reads them from the checkpoint)")
    if "val_image_size" not in given:
        args.val_image_size = args.image_size.end if "image_size" in given else trained.image_size


def _data_problem(data, evaluate=False):
    """Why DATA cannot be a shard folder (or, for --evaluate, a folder of images), checked before any process
    starts, or None. A URL is checked when its manifest is read."""
    try:
        location = normalize(data)
    except ShardError as exc:
        return str(exc)
    if is_remote(location):
        return None
    if not os.path.isdir(location):
        return f"DATA folder not found: {data}"
    if not os.path.isfile(os.path.join(location, "manifest.json")) and evaluate:
        return folder_problem(location)
    if not os.path.isfile(os.path.join(location, "manifest.json")):
        return f"DATA has no manifest.json (write it with tools/make_shards.py): {data}"
    return None


@dataclass(frozen=True)
class RunConfig:
    """The flags plus what they resolve to on this machine, decided once. Flags read as attributes (`run.lr`);
    `as_dict()` is what the config line, the config file and every checkpoint record."""
    flags: types.MappingProxyType
    world: object             # training.distributed.World
    amp: str                  # 'bf16' | 'fp16' | 'off'
    cbam_impl: str            # model.cbam.CBAM_IMPLS without 'auto'
    compile: str              # 'blocks' | 'model' | 'off'
    cudnn_benchmark: bool
    backend: str              # the loader backend that runs: 'dali' | 'dali-cpu' | 'torch'
    per_rank_batch: int
    loader_workers: int       # per rank (the --workers flag counts per node)

    def __getattr__(self, name):
        try:
            return self.flags[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def amp_dtype(self):
        return AMP_DTYPES[self.amp]

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def as_dict(self):
        resolved = {"amp_resolved": self.amp, "cbam_impl_resolved": self.cbam_impl,
                    "compile_resolved": self.compile, "cudnn_benchmark_resolved": self.cudnn_benchmark,
                    "backend_resolved": self.backend, "world_size": self.world.size, "device": str(self.world.device)}
        return json.loads(json.dumps({**self.flags, **resolved}, default=str))


def resolve(args, world):
    """The RunConfig of `args` on `world`; UsageError when a choice cannot run here (triton without CUDA, dali
    without DALI or a GPU, a batch that does not divide over the ranks)."""
    check_world(args, world.size)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'")
    device = world.device
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    try:
        cbam_impl = resolve_impl(args.cbam_impl, device)
        backend = resolve_backend(args.backend, device, data=args.data)
    except (RuntimeError, BackendUnavailable) as exc:
        raise UsageError(str(exc)) from None
    compile_how = resolve_compile(args.compile, device, args.att_type, cbam_impl)
    if compile_how != "off" and args.compile_cache != "none":
        try:
            use_cache_dir(args.compile_cache)  # before anything compiles
        except OSError as exc:
            raise UsageError(str(exc)) from None
    return RunConfig(
        flags=types.MappingProxyType(dict(vars(args))), world=world, amp=amp, cbam_impl=cbam_impl,
        compile=compile_how,
        # Fixed input shapes: cuDNN may time its convolution algorithms once and keep the fastest.
        cudnn_benchmark=args.cudnn_benchmark and device.type == "cuda", backend=backend,
        per_rank_batch=args.batch_size // world.size,
        loader_workers=max(1, args.workers // world.local_size) if args.workers else 0)
