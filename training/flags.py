"""train.py's flags, in groups: the CBAM authors' train_imagenet.py flags (names, short forms, meaning and
defaults) plus ours, and the one-line parser the tools build theirs on.

Every default lives here, with its unit. A value argparse refuses raises UsageError (one line; train.py exits 2);
the checks argparse cannot make (ranges, flags that need or exclude each other) are training/config.py's.
"""
import argparse

from model import ARCHS, ATTENTION, CBAM_IMPLS, FAMILIES
from model.networks import DEFAULT_WIDEN, DEFAULT_WIDTH_MULT
from pipeline import BACKEND_CHOICES, BACKENDS, DEFAULT_CACHE_BYTES, VERIFY_MODES, default_record_dir
from pipeline.augment import parse_auto_augment
from pipeline.backends import AUTO_ORDER
from training.compile import COMPILE_CHOICES, CUDA_GRAPH_CHOICES, default_cache_dir
from training.errors import UsageError
from training.losses import LOSSES
from training.optim import OPTIMIZERS
from training.schedule import AUTHORS_LR_STEPS, epoch_list, image_size_schedule

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


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
    p.add_argument("--shuffle-block", type=int, default=None, metavar="SAMPLES",
                   help="each train epoch reads the samples in a fresh order, a function of (--seed, epoch): "
                        "blocks of this many consecutive samples of a shard, permuted. 1 = a fresh permutation "
                        "(DistributedSampler's randomness); larger blocks read longer runs per request; 0 = the "
                        "storage order of every epoch. Default: 1 for the torch backend on local shards, 64 in "
                        "object storage, 128 for DALI (BENCHMARKS.md, Order quality)")


def _add_model_flags(p):
    p.add_argument("-a", "--arch", default="resnet", choices=ARCHS,
                   help="network (model/networks.py): resnet (ResNet), resnext (ResNeXt 32x4d), wrn (WideResNet: "
                        "ResNet-18 widened), mobilenet (MobileNet v1)")
    p.add_argument("--depth", type=int, default=None,
                   choices=sorted({d for family in FAMILIES.values() for d in family.depths}),
                   help="layers: " + "; ".join(f"--arch {f.arch} {'/'.join(map(str, f.depths))}"
                                               for f in FAMILIES.values() if f.depths)
                        + "; none for mobilenet; when not given: " + ", ".join(
                            f"{f.default_depth} ({f.arch})" for f in FAMILIES.values() if f.depths))
    p.add_argument("--widen", type=float, default=None, metavar="K",
                   help=f"--arch wrn: every stage's channels x K (the CBAM paper's 1.5 and 2.0; default "
                        f"{DEFAULT_WIDEN})")
    p.add_argument("--width-mult", type=float, default=None, metavar="ALPHA",
                   help=f"--arch mobilenet: every layer's channels x ALPHA, truncated (the CBAM paper's 0.7; default "
                        f"{DEFAULT_WIDTH_MULT})")
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
    p.add_argument("--prefix", default=None,
                   help="checkpoint/metrics name prefix (default: the network and attention type, e.g. "
                        "RESNET50_CBAM, RESNEXT101_32X4D_SE, WRN18_1.5_NONE, MOBILENET_0.7_CBAM)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --output-dir that holds a run of this --prefix, replacing it (without "
                        "this or --resume such a folder is refused)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="checkpoint to resume from, or 'auto' for {output-dir}/{prefix}_checkpoint.pth.tar")
    p.add_argument("-p", "--print-freq", type=int, default=10, help="log every N steps (the only host syncs)")
    p.add_argument("--save-every", type=float, default=30.0, metavar="MINUTES",
                   help="also save a checkpoint mid-epoch once this many minutes have passed since the last save, "
                        "at a step the ranks agree on, so that a rank killed outright loses at most this much "
                        "training; 0 = only at epoch ends")
    p.add_argument("--collective-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="how long a rank waits for the others in one collective (and at start-up) before the run "
                        "ends with one line naming it, for a launcher such as torchrun to restart: above the "
                        "slowest legitimate wait (a first step that compiles, a checkpoint write, validation)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to {output-dir}/{prefix}_tensorboard "
                        "(needs the tensorboard package: pip install -e '.[tensorboard]')")
    p.add_argument("--ngpu", type=int, default=1,
                   help="processes to start on this node when not launched by torchrun (one per GPU)")


def _add_evaluate_flags(p):
    p.add_argument("--evaluate", action="store_true",
                   help="only evaluate the --resume checkpoint on val (its network, attention type and val image "
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
                   help="a recipe: YAML mapping of flag names (with _ or -) to values, each flag once; flags given "
                        "on the command line override it; --overwrite only on the command line (recipes/ holds "
                        "the project's)")
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
