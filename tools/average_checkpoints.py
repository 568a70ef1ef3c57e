"""Averages the weights of the last K per-epoch checkpoints of a run (train.py --keep-epochs K) into one checkpoint,
and reports its val top-1 when DATA is given, as timm's avg_checkpoints.py does for its runs.

    cbam-average-checkpoints checkpoints/ --prefix RESNET50_CBAM_RSB_A3 -n 5 [--data DATA] [--weights ema]
    cbam-average-checkpoints A.pth.tar B.pth.tar ... --output AVG.pth.tar

Floating-point tensors (weights and BatchNorm running statistics) are averaged in float64 and stored in their own
dtype; integer ones (BatchNorm's batch counters) are taken from the newest checkpoint. Each input is loaded as
train.py loads a checkpoint (its sha256 checked) and must hold finite weights of the same model; the result holds
`model`, the newest checkpoint's `config`, `epoch` and class list, and its own sha256, so `train.py --evaluate
--resume OUTPUT`, cbam-validate, cbam-predict and cbam-export read it like any checkpoint (it holds no training
state, so training does not resume from it: --pretrained starts from its weights). The output never replaces a
file of a training run. Errors are one line naming the file or flag: exit 2, or 1 for a damaged checkpoint.
"""
import argparse
import json
import os
import sys

import torch

from training import checkpoint
from training.checkpoint import CheckpointError, DamagedCheckpoint, load, parse_epoch_name
from training.config import UsageError
from training.metrics import RunningSums, summarize
from training.output_dir import refuse_run_file


def build_parser():
    p = argparse.ArgumentParser(prog="cbam-average-checkpoints", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", metavar="FOLDER_OR_FILES",
                   help="train.py's --output-dir holding {prefix}_epoch{E}.pth.tar files, or checkpoint files")
    p.add_argument("--prefix", default=None, help="the run's --prefix (default: the only one in the folder)")
    p.add_argument("-n", "--num", type=int, default=0, metavar="K", help="average the last K epochs (0 = all kept)")
    p.add_argument("--weights", default="raw", choices=["raw", "ema"],
                   help="average the trained weights or their moving averages (runs with --ema-decay)")
    p.add_argument("--output", default=None,
                   help="where to write the average (default {folder}/{prefix}_averaged.pth.tar)")
    p.add_argument("--data", default=None, metavar="DATA", help="shard folder: report the average's val top-1")
    p.add_argument("--backend", default="auto", help="loader backend for --data (as train.py's --backend)")
    p.add_argument("--batch-size", type=int, default=64, help="val images per batch for --data")
    p.add_argument("--workers", type=int, default=2, help="loader workers for --data")
    return p


def epoch_files(folder):
    """{prefix: {epoch: path}} of the per-epoch checkpoints in `folder`; two files of one epoch (R_epoch3 and
    R_epoch03) are an error naming both."""
    found = {}
    for name in sorted(os.listdir(folder)):
        parsed = parse_epoch_name(name)
        if not parsed:
            continue
        prefix, epoch = parsed
        epochs = found.setdefault(prefix, {})
        if epoch in epochs:
            raise UsageError(f"{folder}: {os.path.basename(epochs[epoch])} and {name} are both epoch {epoch} of "
                             f"{prefix}: remove one")
        epochs[epoch] = os.path.join(folder, name)
    return found


def the_prefix(found, folder, prefix):
    if prefix is not None:
        return prefix
    if len(found) != 1:
        listed = ", ".join(sorted(found)) or "none"
        raise UsageError(f"{folder}: say which run with --prefix (per-epoch checkpoints found: {listed})")
    return next(iter(found))


def chosen_checkpoints(folder, prefix, num):
    """(the paths to average, oldest first, their prefix)."""
    if not os.path.isdir(folder):
        raise UsageError(f"folder not found: {folder}")
    found = epoch_files(folder)
    prefix = the_prefix(found, folder, prefix)
    epochs = found.get(prefix, {})
    if not epochs:
        raise UsageError(f"{folder} holds no {prefix}_epoch<E>.pth.tar (train with --keep-epochs K)")
    if num > len(epochs):
        raise UsageError(f"-n {num}: {folder} keeps only {len(epochs)} epochs of {prefix} ({sorted(epochs)})")
    return [epochs[e] for e in sorted(epochs)[-num if num else 0:]], prefix


def given_checkpoints(paths):
    """The checkpoint files named on the command line, each once."""
    seen = {}
    for path in paths:
        if os.path.isdir(path):
            raise UsageError(f"{path} is a folder: give one folder alone, or checkpoint files")
        if not os.path.isfile(path):
            raise UsageError(f"checkpoint not found: {path}")
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(f"{path} is given twice ({seen[real]} is the same file): each checkpoint counts once")
        seen[real] = path
    if len(paths) < 2:
        raise UsageError(f"one checkpoint ({paths[0]}): give two or more files, or the run's folder")
    return list(paths)


def load_weights(path, weights):
    """(state dict, the checkpoint) of `path`, checked as train.py checks a checkpoint: its sha256, and finite
    floating-point tensors."""
    ckpt = load(path)  # DamagedCheckpoint: empty, unreadable or not matching its sha256
    key = "model" if weights == "raw" else "ema"
    if not isinstance(ckpt.get(key), dict) or not isinstance(ckpt.get("config"), dict):
        if key == "ema" and "model" in ckpt:
            raise UsageError(f"checkpoint {path} holds no 'ema' weights (trained without --ema-decay): use "
                             "--weights raw")
        raise UsageError(f"checkpoint {path} is not one of train.py's (no {key!r} weights and 'config')")
    state = ckpt[key]
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"checkpoint {path}: {key}[{name!r}] is a {type(value).__name__}, not a tensor")
    checkpoint.check_finite_weights(state, path, key)  # an average would spread them over every weight
    return state, ckpt


def average(paths, weights):
    """(averaged state dict, the newest checkpoint). Every file must hold the same model: the same tensor names
    and shapes (so also the same class count)."""
    total, first, newest, epochs = {}, None, None, {}
    for path in paths:
        state, ckpt = load_weights(path, weights)
        epoch = ckpt.get("epoch")
        if epoch is not None and epoch in epochs:
            raise UsageError(f"{epochs[epoch]} and {path} were both saved at epoch {epoch}: the same point of "
                             "training twice")
        epochs[epoch] = path
        if first is None:
            first = state
        elif state.keys() != first.keys():
            raise UsageError(f"checkpoint {path} holds other tensors than {paths[0]}: not the same model")
        else:
            for key, value in state.items():
                if value.shape != first[key].shape:
                    what = "classes" if key == "fc.weight" else f"{key!r} shape"
                    raise UsageError(f"checkpoint {path} has {_size(key, value)} {what}, {paths[0]} "
                                     f"{_size(key, first[key])}: not the same model")
        for key, value in state.items():
            total[key] = total[key] + value.double() if key in total else value.double()
        newest = (state, ckpt) if newest is None or (epoch or 0) >= (newest[1].get("epoch") or 0) else newest
    state, ckpt = newest
    averaged = {k: (total[k] / len(paths)).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}
    return averaged, ckpt


def _size(key, value):
    return value.shape[0] if key == "fc.weight" else tuple(value.shape)


def averaged_checkpoint(state, newest, paths, weights):
    """What the output file holds: the weights and what reading a checkpoint needs (training/load.py), with its
    sha256 as train.py's checkpoints carry it."""
    content = {"model": state, "config": newest["config"], "epoch": newest.get("epoch"), "batch": 0,
               "classes": list(newest.get("classes") or []), "averaged_from": [os.path.basename(p) for p in paths],
               "averaged_weights": weights}
    return {**content, checkpoint.CHECKSUM_KEY: checkpoint.content_sha256(content)}


def val_top1(state, config, args):
    """(top-1 %, top-5 %, images) of `state` on DATA's val split, one process."""
    import pipeline
    from model import Network, build_network

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        loader = pipeline.build_loader(args.data, "val", args.batch_size, backend=args.backend, workers=args.workers,
                                       device=device, image_size=int(config.get("val_image_size", 224)))
    except (pipeline.ShardError, pipeline.BackendUnavailable, ValueError) as exc:
        raise UsageError(f"--data {args.data}: {exc}") from None
    model = build_network(Network.from_config(config), config["att_type"], num_classes=len(loader.split.classes),
                          cbam_impl="auto")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"--data {args.data}: the average does not fit its {len(loader.split.classes)} classes: "
                         f"{str(exc).splitlines()[0]}") from None
    model = model.to(device, memory_format=torch.channels_last).eval()
    sums = RunningSums(device)
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images)
            sums.add(torch.nn.functional.cross_entropy(logits.float(), labels), logits, labels)
    _, top1, top5, n = summarize(sums.take().cpu())
    return top1, top5, n


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.num < 0:
            raise UsageError(f"-n must be >= 0, got {args.num}")
        if len(args.sources) == 1 and not os.path.isfile(args.sources[0]):
            folder = args.sources[0]
            paths, prefix = chosen_checkpoints(folder, args.prefix, args.num)
            output = args.output or os.path.join(folder, f"{prefix}_averaged.pth.tar")
        else:
            paths = given_checkpoints(args.sources)
            if args.output is None:
                raise UsageError("--output is needed when checkpoint files are given")
            output = args.output
        if os.path.isdir(output):
            raise UsageError(f"--output {output} is a folder: name the file to write")
        refuse_run_file(output, "--output")
        if any(os.path.realpath(output) == os.path.realpath(path) for path in paths):
            raise UsageError(f"--output {output} is one of the checkpoints being averaged")
        state, newest = average(paths, args.weights)
        checkpoint.save_atomic(averaged_checkpoint(state, newest, paths, args.weights), output)
        print(f"averaged {len(paths)} checkpoints ({', '.join(os.path.basename(p) for p in paths)}) -> {output}")
        report = {"averaged": paths, "output": output}
        if args.data:
            top1, top5, n = val_top1(state, newest["config"], args)
            print(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}  ({n} images)")
            report.update(top1=top1, top5=top5, images=n)
        print(json.dumps(report))
    except (UsageError, CheckpointError) as exc:
        sys.stderr.write(f"cbam-average-checkpoints: error: {exc}\n")
        return 2 if isinstance(exc, UsageError) and not isinstance(exc, DamagedCheckpoint) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
