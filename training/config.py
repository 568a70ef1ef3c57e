"""train.py's configuration: the flags (the CBAM authors' train_imagenet.py flags, with their meaning and defaults,
plus ours) and the RunConfig they resolve to on this machine, once, before anything else runs.

Every default lives here, with its unit. An invalid value raises UsageError (one line; train.py exits 2).
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import types
from dataclasses import dataclass

import torch
import yaml

from model import ATTENTION, CBAM_IMPLS
from model.attention import canonical_attention
from pipeline import (
    BACKEND_CHOICES,
    BACKENDS,
    DEFAULT_CACHE_BYTES,
    VERIFY_MODES,
    BackendUnavailable,
    ShardError,
    default_record_dir,
    resolve_backend,
)
from pipeline.augment import parse_auto_augment
from pipeline.backends import AUTO_ORDER
from pipeline.folder import folder_problem
from shards.storage import is_remote, normalize
from training.compile import (
    COMPILE_CHOICES,
    CUDA_GRAPH_CHOICES,
    default_cache_dir,
    resolve_cbam,
    resolve_compile,
    resolve_cuda_graphs,
    use_cache_dir,
)
from training.errors import UsageError
from training.losses import LOSSES
from training.optim import OPTIMIZERS
from training.schedule import AUTHORS_LR_STEPS, epoch_list, image_size_schedule

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def _flag_type(parse, name):
    """An argparse type from a parser that raises ValueError: argparse then names the flag and the value."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help only where the help does not state its default itself and there is
    one to state (not for switches that default to off)."""

    def _get_help_string(self, action):
        default = action.default
        if "default" in (action.help or "") or default is None or default is False or default == "" \
                or default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; we raise a one-line UsageError instead."""

    def error(self, message):
        raise UsageError(message)


def build_parser():
    """train.py's flags in groups; the CBAM authors' train_imagenet.py flags keep their names, short forms and
    defaults."""
    p = OneLineParser(prog="train.py", description="ImageNet training of ResNet + CBAM/BAM/SE with DDP.",
                      formatter_class=_HelpFormatter)
    _add_data_flags(p.add_argument_group("DATA and how it is read"))
    _add_model_flags(p.add_argument_group("the model"))
    _add_optimisation_flags(p.add_argument_group("optimisation"))
    _add_schedule_flags(p.add_argument_group("schedule"))
    _add_speed_flags(p.add_argument_group("speed (auto values resolved for this machine in the config line)"))
    _add_output_flags(p.add_argument_group("output, resume and launch"))
    _add_evaluate_flags(p.add_argument_group("evaluation only"))
    _add_benchmark_flags(p.add_argument_group("benchmark"))
    _add_recipe_flags(p.add_argument_group("recipes (\"ResNet strikes back\" switches)"))
    return p


def _add_data_flags(p):
    p.add_argument("data", metavar="DATA", help="shard folder written by tools/make_shards.py, or where it was "
                   "uploaded: s3://bucket/prefix (AWS environment, AWS_ENDPOINT_URL for S3-compatible stores), "
                   "http(s)://host/path, file://path")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help=f"data loader (pipeline/backends.py): auto = the first of {', '.join(AUTO_ORDER)} that runs "
                        "here and reads DATA; " + "; ".join(f"{b.name} = {b.summary}" for b in BACKENDS.values()))
    p.add_argument("-j", "--workers", type=int, default=4,
                   help="data-loading worker processes per node, shared among the node's ranks")
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
    p.add_argument("--image-size", type=_flag_type(image_size_schedule, "size"), default=image_size_schedule("224"),
                   metavar="PX|START:END@E0:E1",
                   help="train crop side in pixels, or a progressive schedule: START px until epoch E0, then a "
                        "linear ramp to END px at epoch E1, in steps of 32 (e.g. 160:192@28:34)")
    p.add_argument("--val-image-size", type=int, default=None, help="val crop side in pixels (default: --image-size)")
    p.add_argument("--seed", type=int, default=1234, help="random seed (model init, data order, augmentation)")


def _add_model_flags(p):
    p.add_argument("-a", "--arch", default="resnet", choices=["resnet"], help="architecture family")
    p.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101], help="ResNet depth")
    p.add_argument("--att-type", default="none", type=str.lower, choices=[name.lower() for name in ATTENTION],
                   help="attention module (any case)")
    p.add_argument("--cbam-impl", default="auto", choices=CBAM_IMPLS,
                   help="how CBAM is computed (same parameters and numbers for all): triton = fused Triton "
                        "kernels (CUDA); torch = plain PyTorch ops, with the block's last BatchNorm folded into the "
                        "gates when compiled; reference = the authors' formulation; auto = torch when the model is "
                        "compiled on CUDA, triton when it runs eager there, torch elsewhere")
    p.add_argument("--pretrained", default="", metavar="PATH",
                   help="start a new run (epoch 0, fresh optimizer) from these weights: a checkpoint of ours, one "
                        "released with the authors' code, or a torchvision-layout ResNet state dict (attention "
                        "modules it lacks start fresh; the classifier is replaced when the classes differ)")


def _add_optimisation_flags(p):
    p.add_argument("-b", "--batch-size", type=int, default=256, help="GLOBAL batch size (images per step, all ranks)")
    p.add_argument("--lr", "--learning-rate", type=float, default=0.1,
                   help="peak learning rate for --batch-size images per step")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", "--wd", type=float, default=1e-4, help="L2 weight decay")
    p.add_argument("--no-bn-weight-decay", "--no-bn-wd", action="store_true", dest="no_bn_weight_decay",
                   help="no weight decay on BatchNorm parameters and biases")
    p.add_argument("--accum-steps", type=int, default=1, metavar="N",
                   help="gradient accumulation: one optimizer step per N batches, so the effective batch is N x "
                        "--batch-size (DDP synchronises gradients on the last of the N only)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup with lam ~ Beta(ALPHA, ALPHA) on the device batch (e.g. 0.2); 0 = off")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="cutmix with lam ~ Beta(ALPHA, ALPHA) (e.g. 1.0); with --mixup too, each step uses one "
                        "of the two at random; 0 = off")
    p.add_argument("--ema-decay", type=float, default=0.0, metavar="D",
                   help="keep an exponential moving average of the weights with this decay per optimizer step "
                        "(e.g. 0.9998), evaluated beside the raw weights and saved in checkpoints; 0 = off")
    p.add_argument("--pretrained-lr-scale", type=float, default=1.0, metavar="S",
                   help="--pretrained: the loaded parameters learn at S times the learning rate, new ones at 1x")


def _add_schedule_flags(p):
    p.add_argument("--epochs", type=int, default=90, help="total epochs to run")
    p.add_argument("--start-epoch", type=int, default=0, help="epoch number to start at (useful on restarts)")
    p.add_argument("--lr-schedule", default="step", choices=["step", "cosine"],
                   help="step = x0.1 at each --lr-steps epoch; cosine = per-step cosine to 0")
    p.add_argument("--lr-steps", type=_flag_type(epoch_list, "epochs"), default=AUTHORS_LR_STEPS, metavar="E1,E2,..",
                   help="epochs where --lr-schedule step multiplies the LR by 0.1 (default: the authors' 30,60,90)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear LR warm-up length, in epochs")


def _add_speed_flags(p):
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 on a GPU that supports it, off on CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for the model (the loader always delivers channels_last images)")
    p.add_argument("--compile", nargs="?", const="blocks", default="auto", choices=COMPILE_CHOICES,
                   help="torch.compile: blocks = each residual block (identical blocks share one compilation), "
                        "model = the whole model as one graph, off; auto = blocks on CUDA (off with --cbam-impl "
                        "triton, whose opaque op runs faster eager), off elsewhere; a bare --compile means blocks")
    p.add_argument("--no-compile", action="store_const", const="off", dest="compile", help="same as --compile off")
    p.add_argument("--cuda-graphs", default="auto", choices=CUDA_GRAPH_CHOICES,
                   help="replay the compiled model's forward and backward from CUDA graphs (torch.compile's "
                        "reduce-overhead mode: no per-kernel launch cost); on needs CUDA, --compile and "
                        "--accum-steps 1; auto = off until a GPU measurement shows them faster (BENCHMARKS.md)")
    p.add_argument("--compile-cache", default=default_cache_dir(), metavar="DIR",
                   help="folder of the compiled-code cache kept between runs (inductor graphs, Triton binaries); "
                        "'none' leaves torch's own default")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its convolution algorithms once for the fixed shapes (CUDA only)")


def _add_output_flags(p):
    p.add_argument("--output-dir", default="checkpoints", help="where checkpoints and metrics go")
    p.add_argument("--prefix", default=None, help="checkpoint/metrics name prefix (default RESNET{depth}_{ATT})")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --output-dir that holds a run of this --prefix, replacing it (without "
                        "this or --resume such a folder is refused)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="checkpoint to resume from, or 'auto' for {output-dir}/{prefix}_checkpoint.pth.tar")
    p.add_argument("-p", "--print-freq", type=int, default=10, help="log every N steps (the only host syncs)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to {output-dir}/{prefix}_tensorboard "
                        "(needs the tensorboard package: pip install -e '.[tensorboard]')")
    p.add_argument("--ngpu", type=int, default=1,
                   help="processes to start on this node when not launched by torchrun (one per GPU)")


def _add_evaluate_flags(p):
    p.add_argument("--evaluate", action="store_true",
                   help="only evaluate the --resume checkpoint on val (its depth, attention type and val image "
                        "size come from the checkpoint); DATA may also be a folder of val/<class>/*.JPEG")
    p.add_argument("--eval-weights", default="raw", choices=["raw", "ema"],
                   help="--evaluate: the checkpoint's trained weights or their moving average (--ema-decay)")
    p.add_argument("--tta", default="none", choices=["none", "flip"],
                   help="--evaluate: flip = average the logits of each image and its mirror image")


def _add_benchmark_flags(p):
    p.add_argument("--benchmark", action="store_true",
                   help="measure images/sec (end to end, loader alone, model alone); no training, no checkpoints")
    p.add_argument("--benchmark-warmup", type=int, default=10, help="--benchmark: untimed steps first")
    p.add_argument("--benchmark-steps", type=int, default=30, help="--benchmark: timed steps")


def _add_recipe_flags(p):
    """Recipes as files, and the optimizer, loss, gradient, augmentation and weight-averaging switches of
    "ResNet strikes back" (Wightman et al., 2021)."""
    p.add_argument("--config", default="", metavar="FILE.yaml",
                   help="a recipe: YAML mapping of flag names (with _ or -) to values; flags given on the command "
                        "line override it (recipes/ holds the project's)")
    p.add_argument("--opt", default="sgd", choices=OPTIMIZERS,
                   help="optimizer: sgd (momentum --momentum), adamw or lamb (betas 0.9, 0.999; lamb is timm's, "
                        "which clips the gradient norm to 1.0 itself); --lr, --weight-decay and the schedule apply")
    p.add_argument("--loss", default="ce", choices=LOSSES,
                   help="ce = softmax cross-entropy; bce = binary cross-entropy per class over the smoothed, mixed "
                        "targets (RSB)")
    p.add_argument("--bce-target-thresh", type=float, default=None, metavar="T",
                   help="--loss bce: targets above T become 1, the rest 0 (RSB: 0.2); default: soft targets")
    p.add_argument("--clip-grad", type=float, default=0.0, metavar="NORM",
                   help="clip the gradients' global L2 norm to NORM before each optimizer step (after unscaling "
                        "fp16's loss scale); 0 = off")
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronise BatchNorm statistics over all ranks (SyncBatchNorm; CUDA devices with NCCL)")
    p.add_argument("--auto-augment", type=_flag_type(parse_auto_augment, "policy"), default=None,
                   metavar="rand-m9-mstd0.5|trivial|imagenet",
                   help="automatic augmentation of train images in every backend: timm's RandAugment in timm's "
                        "notation (m magnitude 0-10, n layers, mstd magnitude noise, p each layer's probability), "
                        "TrivialAugmentWide or AutoAugment's ImageNet policy; default off")
    p.add_argument("--reprob", type=float, default=0.0, metavar="P",
                   help="random erasing: each train sample gets a box of normal noise (2-33%% of its area) with "
                        "probability P, on the device after normalisation; 0 = off")
    p.add_argument("--keep-epochs", type=int, default=0, metavar="K",
                   help="also keep the checkpoints of the last K epochs as {prefix}_epoch{E}.pth.tar (E 0-based), "
                        "for cbam-average-checkpoints; 0 = only the latest and the best")


def _recipe_checks(args):
    return [
        (args.clip_grad >= 0, f"--clip-grad must be >= 0 (0 = off), got {args.clip_grad}"),
        (args.bce_target_thresh is None or 0 < args.bce_target_thresh < 1,
         f"--bce-target-thresh must be in (0, 1), got {args.bce_target_thresh}"),
        (args.bce_target_thresh is None or args.loss == "bce", "--bce-target-thresh needs --loss bce"),
        (0 <= args.reprob <= 1, f"--reprob must be in [0, 1], got {args.reprob}"),
        (args.keep_epochs >= 0, f"--keep-epochs must be >= 0, got {args.keep_epochs}"),
    ]


# --config: a YAML recipe becomes the parser's defaults, so the command line overrides it key by key.

def _config_defaults(parser, path):
    """({dest: value}, {dest: key as written}) of the recipe at `path`, each value converted and checked as its
    flag would be."""
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if recipe is None:
        return {}, {}
    if not isinstance(recipe, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values, got {type(recipe).__name__}")
    defaults, keys = {}, {}
    for key, value in recipe.items():
        flag = "--" + str(key).replace("_", "-")
        action = parser._option_string_actions.get(flag)
        if action is None or action.dest in ("config", "help"):
            raise UsageError(f"--config {path}: unknown key {key!r} (keys are train.py flags; DATA goes on the "
                             "command line)")
        if action.nargs == 0 and value is False and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # a switch left off: the flag's own default stands
        try:
            defaults[action.dest] = _flag_value(action, flag, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"--config {path}: key {key!r}: {exc}") from None
        keys[action.dest] = key
    return defaults, keys


def _flag_value(action, flag, value):
    """What `flag VALUE` (or, for a switch, `flag` when VALUE is true) on the command line would set."""
    if action.nargs == 0:  # a switch: store_true, store_const, --x/--no-x
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value != flag.startswith("--no-")
        return action.const
    if isinstance(value, (dict, bool)) or value is None:
        raise ValueError(f"expected a value for {flag}, got {value!r}")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    try:
        converted = action.type(text) if action.type else text
    except ValueError:  # as argparse says it (a _flag_type raises ArgumentTypeError with its own reason)
        raise ValueError(f"invalid {getattr(action.type, '__name__', 'value')} value: {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice {text!r} (choose from {', '.join(map(str, action.choices))})")
    return converted


def _with_recipe(parser, argv):
    """The parser with --config's values as defaults (a command-line flag still wins), and a function that
    names the file and key in a check's message about a value the recipe set."""
    known, _ = _ConfigOnly().parse_known_args(argv)
    if not known.config:
        return parser, lambda message, args: message
    defaults, keys = _config_defaults(parser, known.config)
    parser.set_defaults(**defaults)

    def name_origin(message, args):
        dest = message.split()[0].lstrip("-").replace("-", "_") if message.startswith("--") else ""
        if dest in keys and getattr(args, dest) == defaults[dest]:
            return f"--config {known.config}: key {keys[dest]!r}: {message}"
        return message
    return parser, name_origin


class _ConfigOnly(argparse.ArgumentParser):
    def __init__(self):
        super().__init__(add_help=False)
        self.add_argument("--config", default="")

    def error(self, message):
        raise UsageError(message)


def parse_args(argv=None):
    """Parsed and validated flags as an argparse.Namespace; exits 2 with one line on any invalid value."""
    argv = sys.argv[1:] if argv is None else argv
    parser, name_origin = _with_recipe(build_parser(), argv)
    args = parser.parse_args(argv)
    for name, value in vars(args).items():  # inf and nan compare as valid to some bounds below
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (0 <= args.start_epoch < args.epochs or args.evaluate or args.benchmark,
         f"--start-epoch must be in [0, --epochs={args.epochs}), got {args.start_epoch}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.print_freq >= 1, f"--print-freq must be >= 1, got {args.print_freq}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
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
        (not (args.overwrite and args.resume), "--overwrite and --resume exclude each other (replace the run in "
                                               "--output-dir, or continue it)"),
        *_recipe_checks(args),
        (args.tta == "none" or args.evaluate, "--tta needs --evaluate"),
        (not (args.pretrained and args.evaluate), "--pretrained starts training; --evaluate scores --resume PATH"),
        (not args.pretrained or os.path.isfile(args.pretrained), f"--pretrained file not found: {args.pretrained}"),
        (args.pretrained_lr_scale > 0, f"--pretrained-lr-scale must be > 0, got {args.pretrained_lr_scale}"),
        (_data_problem(args.data, args.evaluate) is None, _data_problem(args.data, args.evaluate)),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(name_origin(message, args))
    args.att_type = canonical_attention(args.att_type)
    if args.evaluate:
        _take_architecture_from_checkpoint(args, _given(argv, ("depth", "att_type", "image_size", "val_image_size")))
    if args.val_image_size is None:
        args.val_image_size = args.image_size.end
    if args.prefix is None:
        args.prefix = f"RESNET{args.depth}_{args.att_type.upper()}"
    if not args.prefix or "/" in args.prefix or ".." in args.prefix or "\0" in args.prefix:
        raise UsageError(f"--prefix must be a plain file-name part, without '/' or '..', got {args.prefix!r}")
    if args.config:
        args.config = os.path.abspath(args.config)  # recorded in the resolved configuration
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
    cuda_graphs: bool         # the compiled model replayed from CUDA graphs
    cudnn_benchmark: bool
    backend: object           # the pipeline.Backend that runs ('dali' | 'dali-cpu' | 'torch'), resolved once
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
                    "compile_resolved": self.compile, "cuda_graphs_resolved": self.cuda_graphs,
                    "cudnn_benchmark_resolved": self.cudnn_benchmark,
                    "backend_resolved": self.backend.name, "world_size": self.world.size,
                    "device": str(self.world.device)}
        return json.loads(json.dumps({**self.flags, **resolved}, default=str))


def resolve(args, world):
    """The RunConfig of `args` on `world`; UsageError when a choice cannot run here (triton without CUDA, dali
    without DALI or a GPU, a batch that does not divide over the ranks)."""
    check_world(args, world.size)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'")
    device = world.device
    if args.sync_bn and world.size > 1 and device.type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA devices (NCCL): PyTorch's SyncBatchNorm does not run on "
                         f"{device.type} tensors, as these {world.size} processes have")
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    compile_how = resolve_compile(args.compile, device, args.att_type, args.cbam_impl)
    try:
        cbam_impl = resolve_cbam(args.cbam_impl, device, compile_how)
        backend = resolve_backend(args.backend, device, data=args.data)
        cuda_graphs = resolve_cuda_graphs(args.cuda_graphs, device, compile_how, args.accum_steps)
    except (RuntimeError, ValueError, BackendUnavailable) as exc:
        raise UsageError(str(exc)) from None
    if compile_how != "off" and args.compile_cache != "none":
        try:
            use_cache_dir(args.compile_cache)  # before anything compiles
        except OSError as exc:
            raise UsageError(str(exc)) from None
    return RunConfig(
        flags=types.MappingProxyType(dict(vars(args))), world=world, amp=amp, cbam_impl=cbam_impl,
        compile=compile_how, cuda_graphs=cuda_graphs,
        # Fixed input shapes: cuDNN may time its convolution algorithms once and keep the fastest.
        cudnn_benchmark=args.cudnn_benchmark and device.type == "cuda", backend=backend,
        per_rank_batch=args.batch_size // world.size,
        loader_workers=max(1, args.workers // world.local_size) if args.workers else 0)
