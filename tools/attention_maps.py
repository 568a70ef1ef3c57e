#!/usr/bin/env python
"""Where CBAM attends: spatial gates, channel gates and Grad-CAM of one or more checkpoints, in one picture.

    python tools/attention_maps.py --checkpoint A.pth.tar [--checkpoint B.pth.tar ...] IMAGE... --out grid.png

One row per image and checkpoint (checkpoints side by side as in the CBAM paper's Figure 4, ResNet-50 vs
ResNet-50 + CBAM, each with its probability of the target class). Columns:
- the input, as the network sees it (the val crop);
- the spatial attention of each stage: the sigmoid output of the last SpatialGate of the stage (the
  value that multiplies every channel at each position), upsampled bilinearly and overlaid; the colour scale
  spans the map's own range, printed in the title;
- the channel attention of each stage's last block: its sigmoid gate values sorted, one line per stage (a flat
  line = no selection; a steep one = few channels kept);
- Grad-CAM (Selvaraju et al., ICCV 2017) on the last stage's output for the target class: --class (a class id
  such as n01440764, or a label number), else the first checkpoint's top-1 class, the same for every checkpoint
  (matched by class name; a checkpoint without class names, such as a plain state dict, by label number).
Gates are read from the plain PyTorch path (a checkpoint computed by the fused Triton kernels is switched to
cbam_impl "torch", the same numbers; "reference" stays as it is). Models without CBAM show Grad-CAM only.
"""
import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model import set_cbam_impl
from model.cbam import CBAM
from pipeline.augment import image_size_problem
from pipeline.folder import images_under, load_image, stack_images
from training import load
from training.config import OneLineParser, UsageError
from training.errors import run_reporting_usage_errors
from training.output_dir import refuse_run_file

STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class Explanation:
    """What one model does with a batch: probabilities (N, classes), the target labels (N,), per stage the
    spatial gate (N, h, w) and channel gate (N, C) of its last block (empty without CBAM), Grad-CAM (N, h4, w4)."""
    probs: torch.Tensor
    target: torch.Tensor
    spatial: dict
    channel: dict
    gradcam: torch.Tensor


def last_cbam_of_each_stage(model):
    """{stage name: the last CBAM module of the stage (its last block's; in MobileNet its last pointwise
    layer's)}; empty for a model without CBAM."""
    found = {}
    for stage in STAGES:
        cbams = [module for module in getattr(model, stage).modules() if isinstance(module, CBAM)]
        if cbams:
            found[stage] = cbams[-1]
    return found


def _record_gates(cbams, batch, spatial, channel):
    """Hooks that store each gate's sigmoid output: the spatial gate is sigmoid(bn(conv(pool))), so its value is
    the sigmoid of the BatchNorm's output; the channel gate is sigmoid(mlp(avg) + mlp(max)), its MLP called once
    on the stacked [avg; max] (torch) or once per descriptor (reference)."""
    handles, mlp_outputs = [], {}

    def spatial_hook(stage):
        return lambda module, inputs, output: spatial.__setitem__(stage, torch.sigmoid(output[:, 0]).detach())

    def channel_hook(stage):
        def hook(module, inputs, output):
            mlp_outputs.setdefault(stage, []).append(output.detach())
            logits = torch.cat(mlp_outputs[stage])  # [mlp(avg); mlp(max)] once both are there
            if len(logits) == 2 * batch:
                channel[stage] = torch.sigmoid(logits[:batch] + logits[batch:])
        return hook

    for stage, cbam in cbams.items():
        handles.append(cbam.spatial_gate.bn.register_forward_hook(spatial_hook(stage)))
        handles.append(cbam.channel_gate.mlp.register_forward_hook(channel_hook(stage)))
    return handles


def explain(model, images, target=None):
    """The Explanation of `model` (eval mode) on normalised `images`; `target` labels (N,) or None (= top-1)."""
    for cbam in last_cbam_of_each_stage(model).values():
        if cbam.impl not in ("torch", "reference"):
            set_cbam_impl(model, "torch")  # the fused kernels compute the gates inside one op
    spatial, channel, last_stage = {}, {}, {}
    handles = _record_gates(last_cbam_of_each_stage(model), len(images), spatial, channel)
    handles.append(model.layer4.register_forward_hook(lambda m, i, output: last_stage.__setitem__("out", output)))
    try:
        with torch.enable_grad():
            logits = model(images)
            features = last_stage["out"]
            probs = torch.softmax(logits.detach().float(), dim=1)
            target = probs.argmax(dim=1) if target is None else target
            grads, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), features)
    finally:
        for handle in handles:
            handle.remove()
    # Grad-CAM: the last stage's channels weighted by their spatially averaged gradient, positive part only.
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * features.detach()).sum(dim=1))
    return Explanation(probs, target, spatial, channel, cam)


def upsample(maps, size):
    """(N, h, w) -> (N, size, size), bilinear."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def denormalize(images):
    from pipeline.augment import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return [(image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for image in images]


def draw(rows, pictures, size, out):
    """One PNG: `rows` = [(image index, row label, its model's Explanation, the target's class name)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = ["input", *(f"{stage} spatial gate" for stage in STAGES), "channel gates (sorted)", "Grad-CAM"]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.3 * len(columns), 2.5 * len(rows)), squeeze=False)
    for r, (i, label, exp, target_name) in enumerate(rows):
        picture = pictures[i]
        ax = axes[r]
        ax[0].imshow(picture)
        ax[0].set_ylabel(label, fontsize=8)
        for c, stage in enumerate(STAGES, 1):
            if stage in exp.spatial:
                gate = upsample(exp.spatial[stage][i:i + 1], size)[0].numpy()
                ax[c].imshow(picture)
                ax[c].imshow(gate, cmap="jet", alpha=0.5, vmin=gate.min(), vmax=max(gate.max(), gate.min() + 1e-6))
                ax[c].set_title(f"{stage}: {exp.spatial[stage][i].min():.2f}-{exp.spatial[stage][i].max():.2f}",
                                fontsize=8)
            else:
                ax[c].text(0.5, 0.5, "no CBAM", ha="center", va="center", transform=ax[c].transAxes)
        chan = ax[len(STAGES) + 1]
        for stage, gates in exp.channel.items():
            values = np.sort(gates[i].numpy())[::-1]
            chan.plot(np.linspace(0, 1, len(values)), values, label=f"{stage} ({len(values)})")
        if exp.channel:
            chan.set_ylim(0, 1)
            chan.set_yticks([0, 0.5, 1])
            chan.tick_params(labelsize=6)
            chan.legend(fontsize=6, loc="lower left")
            chan.set_xlabel("channels, fraction", fontsize=7)
        else:
            chan.text(0.5, 0.5, "no CBAM", ha="center", va="center", transform=chan.transAxes)
        cam = upsample(exp.gradcam[i:i + 1], size)[0].numpy()
        ax[-1].imshow(picture)
        ax[-1].imshow(cam / max(cam.max(), 1e-12), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        none = "" if cam.max() > 0 else " (no positive evidence)"
        ax[-1].set_title(f"{target_name[:22]}\nP = {exp.probs[i, exp.target[i]]:.3f}{none}", fontsize=8)
        for a in (*ax[:len(STAGES) + 1], ax[-1], *([] if exp.channel else [chan])):
            a.set_xticks([])
            a.set_yticks([])
        chan.set_xticks([])
    for c, title in enumerate(columns):
        if not axes[0][c].get_title():
            axes[0][c].set_title(title, fontsize=8)
        else:
            axes[0][c].set_title(f"{title}\n{axes[0][c].get_title()}", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=90)
    except OSError as exc:  # a read-only or full folder: one line
        raise UsageError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def target_labels(names, wanted, first, path):
    """Each model's labels of the target classes `wanted` (class ids, or label numbers). A model without class
    names (a plain state dict) takes the first model's labels `first`: the same class order is assumed, which
    needs the same class count."""
    ids = [name for name, _ in names]
    if ids == [str(i) for i in range(len(ids))] and first is not None:
        if len(first[1]) != len(ids):
            raise UsageError(f"checkpoint {path} has {len(ids)} unnamed classes, the first checkpoint "
                             f"{len(first[1])}: no common class to show")
        return first[0]
    labels = []
    for w in wanted:
        if w not in ids and not (w.isdigit() and int(w) < len(ids)):
            raise UsageError(f"class {w} is not among the {len(ids)} classes of checkpoint {path}")
        labels.append(ids.index(w) if w in ids else int(w))
    return torch.tensor(labels)


def parse_args(argv):
    p = OneLineParser(prog="attention_maps.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a .pth.tar of train.py or a state dict of the authors' code; repeat to compare models")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--class", dest="target", default=None,
                   help="class whose Grad-CAM and probability are shown (a class id or label number; default: "
                        "the first checkpoint's top-1 for each image)")
    p.add_argument("--words", default="", metavar="FILE", help="ImageNet words.txt or LOC_synset_mapping.txt")
    p.add_argument("--image-size", type=int, default=None, help="crop side in pixels (default: the first "
                   "checkpoint's val size)")
    p.add_argument("--max-images", type=int, default=8, help="at most this many images (rows per checkpoint)")
    args = p.parse_args(argv)
    if args.image_size is not None and image_size_problem("--image-size", args.image_size):
        p.error(image_size_problem("--image-size", args.image_size))
    return args


def draw_maps(args):
    for path in args.checkpoint:
        if not os.path.isfile(path):
            raise UsageError(f"checkpoint not found: {path}")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder: name the PNG to write")
    refuse_run_file(args.out, "--out")
    models = [load.read(path) for path in args.checkpoint]
    words = load.read_words(args.words) if args.words else {}
    size = args.image_size or models[0].image_size
    paths = images_under(args.images)[:args.max_images]
    try:
        arrays = [load_image(path, size) for path in paths]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not arrays:
        raise UsageError(f"no images in {' '.join(args.images)}")
    images = stack_images(arrays, "cpu").contiguous()
    wanted = None if args.target is None else [args.target] * len(paths)
    explained, first = [], None
    for trained in models:
        names = load.class_names(trained, words)
        target = None if wanted is None else target_labels(names, wanted, first, trained.path)
        exp = explain(trained.build("torch"), images, target)
        explained.append((trained, names, exp))
        if first is None:  # the first model's target (--class, else its top-1) is every model's
            first = (exp.target, names)
            wanted = [names[label][0] for label in exp.target.tolist()]
    rows = []
    for i, path in enumerate(paths):
        for trained, names, exp in explained:
            top = int(exp.probs[i].argmax())
            name = names[int(exp.target[i])][1] or names[int(exp.target[i])][0]
            label = (f"{os.path.basename(path)[:24]}\n{os.path.basename(trained.path)[:24]}\n{trained.arch}\n"
                     f"top-1: {(names[top][1] or names[top][0])[:18]} ({exp.probs[i, top]:.2f})")
            rows.append((i, label, exp, name))
    draw(rows, denormalize(images), size, args.out)
    print(f"{args.out}: {len(paths)} images x {len(models)} checkpoints")
    return 0


def main(argv=None):
    return run_reporting_usage_errors("attention_maps.py", lambda: draw_maps(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
