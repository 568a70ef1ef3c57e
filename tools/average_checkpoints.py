"""Averages the weights of the last K per-epoch checkpoints of a run (train.py --keep-epochs K) into one checkpoint,
and reports its val top-1 when DATA is given, as timm's avg_checkpoints.py does for its runs.

    cbam-average-checkpoints checkpoints/ --prefix RESNET50_CBAM_RSB_A3 -n 5 [--data DATA] [--weights ema]

Floating-point tensors (weights and BatchNorm running statistics) are averaged in float64 and stored in their own
dtype; integer ones (BatchNorm's batch counters) are taken from the newest checkpoint. The result holds `model`
and the newest checkpoint's `config`, so `train.py --evaluate --resume OUTPUT` evaluates it as well. Errors are one
line naming the file or flag (exit 2).
"""
import argparse
import json
import os
import sys

import torch

from training.checkpoint import CheckpointError, kept_epochs, save_atomic
from training.config import UsageError
from training.metrics import RunningSums, summarize

EPOCH_SUFFIX = ".pth.tar"


def build_parser():
    p = argparse.ArgumentParser(prog="cbam-average-checkpoints", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="train.py's --output-dir holding {prefix}_epoch{E}.pth.tar files")
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


def the_prefix(folder, prefix):
    if prefix is not None:
        return prefix
    prefixes = {name.rsplit("_epoch", 1)[0] for name in os.listdir(folder)
                if "_epoch" in name and name.endswith(EPOCH_SUFFIX)}
    if len(prefixes) != 1:
        found = ", ".join(sorted(prefixes)) or "none"
        raise UsageError(f"{folder}: say which run with --prefix (per-epoch checkpoints found: {found})")
    return prefixes.pop()


def chosen_checkpoints(folder, prefix, num):
    if not os.path.isdir(folder):
        raise UsageError(f"folder not found: {folder}")
    epochs = kept_epochs(folder, prefix)
    if not epochs:
        raise UsageError(f"{folder} holds no {prefix}_epoch<E>.pth.tar (train with --keep-epochs K)")
    if num > len(epochs):
        raise UsageError(f"-n {num}: {folder} keeps only {len(epochs)} epochs of {prefix} ({sorted(epochs)})")
    return [epochs[e] for e in sorted(epochs)[-num if num else 0:]]


def load_weights(path, weights):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one line naming it
        raise UsageError(f"cannot load checkpoint {path}: {type(exc).__name__}") from None
    key = "model" if weights == "raw" else "ema"
    if key not in ckpt:
        raise UsageError(f"checkpoint {path} holds no {key!r} weights" +
                         (" (trained without --ema-decay): use --weights raw" if key == "ema" else ""))
    return ckpt[key], ckpt.get("config", {})


def average(paths, weights):
    """(averaged state dict, the newest checkpoint's config)."""
    total, newest, config = {}, None, {}
    for path in paths:
        state, config = load_weights(path, weights)
        if newest is not None and state.keys() != newest.keys():
            raise UsageError(f"checkpoint {path} holds other tensors than {paths[0]}: not the same model")
        for key, value in state.items():
            total[key] = total[key] + value.double() if key in total else value.double()
        newest = state
    averaged = {k: (total[k] / len(paths)).to(v.dtype) if v.is_floating_point() else v for k, v in newest.items()}
    return averaged, config


def val_top1(state, config, args):
    """(top-1 %, top-5 %, images) of `state` on DATA's val split, one process."""
    import pipeline
    from model import build_model

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        loader = pipeline.build_loader(args.data, "val", args.batch_size, backend=args.backend, workers=args.workers,
                                       device=device, image_size=int(config.get("val_image_size", 224)))
    except (pipeline.ShardError, pipeline.BackendUnavailable, ValueError) as exc:
        raise UsageError(f"--data {args.data}: {exc}") from None
    model = build_model(config["depth"], config["att_type"], num_classes=len(loader.split.classes),
                        cbam_impl="auto")
    model.load_state_dict(state)
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
        prefix = the_prefix(args.folder, args.prefix) if os.path.isdir(args.folder) else args.prefix or ""
        paths = chosen_checkpoints(args.folder, prefix, args.num)
        state, config = average(paths, args.weights)
        output = args.output or os.path.join(args.folder, f"{prefix}_averaged.pth.tar")
        save_atomic({"model": state, "config": config, "averaged_from": paths, "averaged_weights": args.weights},
                    output)
        print(f"averaged {len(paths)} checkpoints ({', '.join(os.path.basename(p) for p in paths)}) -> {output}")
        report = {"averaged": paths, "output": output}
        if args.data:
            top1, top5, n = val_top1(state, config, args)
            print(f" * Prec@1 {top1:.3f} Prec@5 {top5:.3f}  ({n} images)")
            report.update(top1=top1, top5=top5, images=n)
        print(json.dumps(report))
    except (UsageError, CheckpointError) as exc:
        sys.stderr.write(f"cbam-average-checkpoints: error: {exc}\n")
        return 2 if isinstance(exc, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
