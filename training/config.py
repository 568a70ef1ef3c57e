"""train.py's configuration: the command line parsed (training/flags.py, with a --config recipe's values as
defaults: training/recipe.py) and its values checked, then the RunConfig they resolve to on this machine, once,
before anything else runs.

An invalid value raises UsageError (one line; train.py exits 2). train.py and the tools import the parser from here
too (build_parser, OneLineParser).
"""
import importlib.util
import json
import math
import os
import sys
import types
from dataclasses import dataclass

import torch

from model.attention import canonical_attention
from model.networks import Network
from pipeline import BackendUnavailable, ShardError, resolve_backend
from pipeline.augment import image_size_problem
from pipeline.folder import folder_problem
from shards.storage import is_remote, normalize
from training.checkpoint import checkpoint_path, latest_checkpoints, name_after_prefix
from training.compile import resolve_cbam, resolve_compile, resolve_cuda_graphs, use_cache_dir
from training.elastic import batch_plan, launch_id
from training.errors import UsageError
from training.flags import OneLineParser, build_parser
from training.recipe import with_recipe

__all__ = ["AMP_DTYPES", "OneLineParser", "RunConfig", "UsageError", "build_parser", "check_world", "parse_args",
           "resolve"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def _recipe_switch_checks(args):
    """The checks of the "ResNet strikes back" switches (training/flags.py's recipes group)."""
    return [
        (args.clip_grad >= 0, f"--clip-grad must be >= 0 (0 = off), got {args.clip_grad}"),
        (args.bce_target_thresh is None or 0 < args.bce_target_thresh < 1,
         f"--bce-target-thresh must be in (0, 1), got {args.bce_target_thresh}"),
        (args.bce_target_thresh is None or args.loss == "bce", "--bce-target-thresh needs --loss bce"),
        (0 <= args.reprob <= 1, f"--reprob must be in [0, 1], got {args.reprob}"),
        (args.keep_epochs >= 0, f"--keep-epochs must be >= 0, got {args.keep_epochs}"),
    ]


def _image_size_problem(schedule):
    """Why an --image-size schedule (one side, or a ramp from one to another) is refused, or None."""
    for side in (schedule.start, schedule.end):
        problem = image_size_problem("--image-size", side)
        if problem:
            return f"{problem}{'' if schedule.start == schedule.end else f' (in {schedule})'}"
    return None


def parse_args(argv=None):
    """Parsed and validated flags as an argparse.Namespace; UsageError (one line) on any invalid value."""
    return parse_command_line(argv)[0]


def parse_command_line(argv=None):
    """(parse_args' Namespace, the training.load.Trained that --evaluate scores, else None): the checkpoint is
    read here once, for the architecture it records, and handed on rather than read again."""
    argv = sys.argv[1:] if argv is None else argv
    parser, name_origin = with_recipe(build_parser(), argv)
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
        (args.shuffle_block is None or args.shuffle_block >= 0,
         f"--shuffle-block must be >= 0 samples (0 = storage order), got {args.shuffle_block}"),
        (args.ngpu >= 1, f"--ngpu must be >= 1, got {args.ngpu}"),
        (args.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {args.warmup_epochs}"),
        (0 <= args.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {args.label_smoothing}"),
        (_image_size_problem(args.image_size) is None, _image_size_problem(args.image_size)),
        (args.accum_steps >= 1, f"--accum-steps must be >= 1, got {args.accum_steps}"),
        (args.save_every >= 0, f"--save-every must be >= 0 minutes (0 = only at epoch ends), got {args.save_every}"),
        (args.collective_timeout >= 1, f"--collective-timeout must be >= 1 second, got {args.collective_timeout}"),
        (args.ema_decay == 0 or 0 < args.ema_decay < 1, f"--ema-decay must be in (0, 1) or 0 (off), got "
                                                         f"{args.ema_decay}"),
        (args.mixup >= 0, f"--mixup must be >= 0, got {args.mixup}"),
        (args.cutmix >= 0, f"--cutmix must be >= 0, got {args.cutmix}"),
        (args.val_image_size is None or image_size_problem("--val-image-size", args.val_image_size) is None,
         args.val_image_size and image_size_problem("--val-image-size", args.val_image_size)),
        (args.benchmark_warmup >= 0, f"--benchmark-warmup must be >= 0, got {args.benchmark_warmup}"),
        (args.benchmark_steps >= 1, f"--benchmark-steps must be >= 1, got {args.benchmark_steps}"),
        (not (args.evaluate and not args.resume), "--evaluate needs --resume PATH (the checkpoint to evaluate)"),
        (args.resume in ("", "auto") or os.path.isfile(args.resume), f"--resume checkpoint not found: {args.resume}"),
        (args.cache_size > 0, f"--cache-size must be > 0 GiB, got {args.cache_size}"),
        (not (args.overwrite and args.resume), "--overwrite and --resume exclude each other (replace the run in "
                                               "--output-dir, or continue it)"),
        *_recipe_switch_checks(args),
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
    _resolve_network(args, argv, name_origin)
    trained = None
    if args.evaluate:
        trained = _take_architecture_from_checkpoint(args, _given(argv, (*NETWORK_FLAGS, "att_type", "image_size",
                                                                         "val_image_size")))
    if args.val_image_size is None:
        args.val_image_size = args.image_size.end
    if args.prefix is None:
        args.prefix = f"{network_of(args).tag.upper()}_{args.att_type.upper()}"
    if not args.prefix or "/" in args.prefix or ".." in args.prefix or "\0" in args.prefix:
        raise UsageError(name_origin(f"--prefix must be a plain file-name part, without '/' or '..', got "
                                     f"{args.prefix!r}", args))
    if args.config:
        args.config = os.path.abspath(args.config)  # recorded in the resolved configuration
    return args, trained


NETWORK_FLAGS = ("arch", "depth", "widen", "width_mult")  # what names the network (model/networks.py Network)


def network_of(flags):
    """The model.networks.Network of resolved flags (a Namespace or a RunConfig)."""
    return Network(flags.arch, flags.depth, flags.widen, flags.width_mult)


def _resolve_network(args, argv, name_origin):
    """--arch with --depth, --widen and --width-mult checked (one line naming the flag and value) and filled in
    with the family's defaults. A --depth from a recipe, which is written for a ResNet, does not apply to MobileNet
    and is left out; one on the command line is refused."""
    depth = args.depth
    if args.arch == "mobilenet" and depth is not None and "depth" not in _given(argv, ("depth",)):
        depth = None
    try:
        network = Network.of(args.arch, depth, args.widen, args.width_mult)
    except ValueError as exc:
        raise UsageError(name_origin(str(exc), args)) from None
    args.depth, args.widen, args.width_mult = network.depth, network.widen, network.width_mult


def check_world(args, world_size):
    """Checks that need the world size (a fresh start's batch split, training/elastic.py); UsageError like
    parse_args."""
    check_rank_batch(args, batch_plan(args.batch_size, args.accum_steps, world_size)[0], world_size)


def check_rank_batch(args, global_batch, world_size):
    """Training needs two images per rank at least: BatchNorm normalises each rank's batch on its own (without
    --sync-bn), and one image's statistics are itself (at the last stage of a small crop, a single value per
    channel, which BatchNorm refuses outright)."""
    if not args.evaluate and global_batch // world_size < 2:
        raise UsageError(f"--batch-size {args.batch_size} over {world_size} rank{'s' if world_size > 1 else ''} "
                         f"leaves {global_batch // world_size} image per rank: BatchNorm cannot train on one image; "
                         f"give at least {2 * world_size}")


def _given(argv, dests):
    """The flags among `dests` that the command line sets (not left at their default)."""
    probe = build_parser()
    probe.set_defaults(**dict.fromkeys(dests))
    given = probe.parse_args(argv)
    return {dest for dest in dests if getattr(given, dest) is not None}


def _evaluated_checkpoint(args):
    """The file --evaluate scores: --resume PATH, or with 'auto' the latest checkpoint of --prefix in --output-dir
    (with no --prefix: the folder's only run's). UsageError when there is none: never score initial weights."""
    if args.resume != "auto":
        return args.resume
    folder = args.output_dir
    if args.prefix is not None:
        path = checkpoint_path(folder, args.prefix)
        if not os.path.isfile(path):
            raise UsageError(f"--evaluate --resume auto: no checkpoint {path}")
        return path
    found = latest_checkpoints(folder)
    suffix = name_after_prefix(checkpoint_path)
    if len(found) != 1:
        names = ", ".join(os.path.basename(path) for path in found)
        raise UsageError(f"--evaluate --resume auto: {len(found) or 'no'} checkpoints (*{suffix}) in {folder}"
                         f"{': ' + names if found else ''}; pass --resume PATH or --prefix")
    return found[0]


def _take_architecture_from_checkpoint(args, given):
    """--evaluate: the network, attention type and val image size are the checkpoint's; an explicit --arch,
    --depth, --widen, --width-mult or --att-type that differs from it is refused (its weights would not fit), an
    explicit image size is honoured."""
    from .load import read
    args.resume = _evaluated_checkpoint(args)
    trained = read(args.resume)
    recorded = {**vars(trained.network), "att_type": trained.att_type}
    differ = [f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest in (*NETWORK_FLAGS, "att_type")
              if dest in given and getattr(args, dest) != recorded[dest]]
    if differ:
        raise UsageError(f"checkpoint {args.resume} is {trained.arch}, this run asks for {', '.join(differ)}: pass "
                         "the checkpoint's --arch, --depth, --widen, --width-mult and --att-type, or none of them "
                         "(--evaluate reads them from the checkpoint)")
    args.arch, args.depth, args.widen, args.width_mult = (recorded[dest] for dest in NETWORK_FLAGS)
    args.att_type = trained.att_type
    if "val_image_size" not in given:
        args.val_image_size = args.image_size.end if "image_size" in given else trained.image_size
    return trained


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
    global_batch: int = 0     # one loader step over all ranks: --batch-size, or the resumed run's (training/elastic.py)
    accum: int = 1            # accumulation steps: --accum-steps, or the resumed run's
    notes: tuple = ()         # lines for the log about what was resolved
    shuffle_block: int = 0    # --shuffle-block, or the backend's default for where DATA is (pipeline/backends.py)
    parameters: int = 0       # the model's parameter count, set once it is built (train.py), to hold against papers

    def __getattr__(self, name):
        try:
            return self.flags[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def amp_dtype(self):
        return AMP_DTYPES[self.amp]

    @property
    def network(self):
        """The model.networks.Network the flags name."""
        return network_of(self)

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def as_dict(self):
        resolved = {"amp_resolved": self.amp, "cbam_impl_resolved": self.cbam_impl,
                    "compile_resolved": self.compile, "cuda_graphs_resolved": self.cuda_graphs,
                    "cudnn_benchmark_resolved": self.cudnn_benchmark,
                    "backend_resolved": self.backend.name, "world_size": self.world.size,
                    "batch_size_resolved": self.global_batch, "accum_steps_resolved": self.accum,
                    "workers_per_rank": self.loader_workers, "shuffle_block_resolved": self.shuffle_block,
                    "device": str(self.world.device), "launch_id": launch_id(), "parameters": self.parameters}
        return json.loads(json.dumps({**self.flags, **resolved}, default=str))


def resolve(args, world, resumed_config=None):
    """The RunConfig of `args` on `world`; UsageError when a choice cannot run here (triton without CUDA, dali
    without DALI or a GPU, a batch that does not divide over the ranks). resumed_config: the configuration of the
    checkpoint the run goes on from, whose global batch a world of another size keeps (training/elastic.py)."""
    global_batch, accum, batch_note = batch_plan(args.batch_size, args.accum_steps, world.size, resumed_config)
    check_rank_batch(args, global_batch, world.size)
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
        # Accumulation a resized world brought in (not the flag's) turns CUDA graphs off, as "auto" does, rather
        # than failing every restart of the run.
        graphs = "auto" if args.cuda_graphs == "on" and accum != args.accum_steps else args.cuda_graphs
        cuda_graphs = resolve_cuda_graphs(graphs, device, compile_how, accum)
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
        per_rank_batch=global_batch // world.size, global_batch=global_batch, accum=accum,
        loader_workers=max(1, args.workers // world.local_size) if args.workers else 0,
        shuffle_block=backend.shuffle_block(is_remote(normalize(args.data))) if args.shuffle_block is None
        else args.shuffle_block,
        notes=(batch_note,) if batch_note else ())
