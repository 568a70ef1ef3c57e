"""A trained checkpoint -> what it is (network, attention, classes, image size, epoch) and a model to run.

One reader for every use after training: train.py --evaluate and --pretrained, tools/validate.py, predict.py,
export.py and attention_maps.py. It reads our checkpoints (their config, whose arch, depth, widen and width_mult
name the network, and class list; a checkpoint from before --arch had other choices is a ResNet's), the state dicts
released with the CBAM authors' code (github.com/Jongchan/attention-module; key names mapped by
model/authors_checkpoint.py) and plain ResNet, ResNeXt (32x4d) and WideResNet-18 state dicts in torchvision's
layout; for the last two the network is read off the keys and shapes (blocks per stage, bottlenecks, grouped
convs, widths, attention modules) and the image size is the authors' 224 px. Errors are UsageError, one line
naming the file.
"""
import os
from dataclasses import dataclass

import torch

from model import Network, build_network, original_to_ours
from model.resnet import DEPTHS

from . import checkpoint
from .errors import UsageError

AUTHORS_IMAGE_SIZE = 224  # their validation: resize to 256, centre crop 224
# (blocks in layer3, bottleneck blocks) -> depth, from model/resnet.py's DEPTHS.
DEPTH_OF = {(layers[2], block.expansion == 4): depth for depth, (block, layers) in DEPTHS.items()}


@dataclass(frozen=True)
class Trained:
    path: str
    network: Network        # arch, depth, widen, width_mult (model/networks.py)
    att_type: str           # model.ATTENTION_TYPES
    num_classes: int
    classes: tuple          # class names in label order, or None when the checkpoint records none
    image_size: int         # val crop side in pixels the weights were evaluated at
    epoch: int              # the epoch training would go on from (= epochs trained when batch is 0)
    batch: int              # batches of that epoch trained (a mid-epoch checkpoint)
    weights: dict           # "raw" (and "ema" with --ema-decay) -> state dict in our key names
    averaged_from: tuple = ()  # the checkpoints cbam-average-checkpoints averaged into this one

    @property
    def arch(self):
        return f"{self.network.name} {self.att_type}"

    def summary(self):
        trained = "" if self.epoch is None else f"; saved at epoch {self.epoch}, batch {self.batch}"
        if self.averaged_from:
            trained = f"; an average of {len(self.averaged_from)} checkpoints ({', '.join(self.averaged_from)})"
        return f"{self.arch}, {self.num_classes} classes, {self.image_size} px{trained}"

    def class_name(self, label):
        return self.classes[label] if self.classes else str(label)

    def build(self, cbam_impl="torch", weights="raw"):
        """The model with these weights, in eval mode on the CPU."""
        model = build_network(self.network, self.att_type, num_classes=self.num_classes, cbam_impl=cbam_impl)
        self.load_into(model, weights)
        return model.eval()

    def load_into(self, model, weights="raw"):
        """Copies the trained ("raw") weights or their moving average ("ema") into `model`, a build_model() of
        this network."""
        if weights not in self.weights:
            raise UsageError(f"checkpoint {self.path} holds no weight average (it was trained without "
                             "--ema-decay): use --eval-weights raw")
        model.load_state_dict(self.weights[weights])


def read(path):
    """The Trained of the checkpoint file at `path` (read once: hand the Trained on rather than reading again)."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    ckpt = checkpoint.load(path)
    if not isinstance(ckpt, dict):
        raise UsageError(f"checkpoint {path} is not a dict of weights (got {type(ckpt).__name__})")
    cfg = ckpt.get("config")
    if "model" in ckpt and isinstance(cfg, dict):  # ours
        weights = {"raw": ckpt["model"], **({"ema": ckpt["ema"]} if "ema" in ckpt else {})}
        for key, state in (("model", ckpt["model"]), ("ema", ckpt.get("ema") or {})):
            checkpoint.check_finite_weights(state, path, key)
        classes = tuple(ckpt["classes"]) if ckpt.get("classes") else None
        return Trained(path, _network(cfg, path), cfg["att_type"], _num_classes(ckpt["model"], path), classes,
                       int(cfg.get("val_image_size") or AUTHORS_IMAGE_SIZE), ckpt.get("epoch"), ckpt.get("batch", 0),
                       weights, tuple(map(str, ckpt.get("averaged_from") or ())))
    state = ckpt.get("state_dict", ckpt)  # the authors' {'state_dict': ...}, or a bare state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"checkpoint {path} holds neither our 'model' and 'config' nor a state dict of "
                                "tensors (bare or under 'state_dict')")
    checkpoint.check_finite_weights(state, path, "state_dict")
    state = {original_to_ours(key): value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    network, att_type = architecture_of(state, path)
    epoch = ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None
    return Trained(path, network, att_type, _num_classes(state, path), None, AUTHORS_IMAGE_SIZE, epoch, 0,
                   {"raw": _complete(state, network, att_type, path)})


def _network(config, path):
    """The Network a checkpoint's configuration records (no "arch": a ResNet's, from before --arch had other
    choices)."""
    try:
        return Network.from_config(config)
    except ValueError as exc:
        raise UsageError(f"checkpoint {path} records no network this code builds: {exc}") from None


def architecture_of(state, path):
    """(Network, attention type) of a state dict in our key names that has no configuration (the authors', or a
    torchvision- or timm-layout one): a ResNet, a ResNeXt (a grouped 3x3 conv in the bottleneck; 32x4d alone)
    or a WideResNet-18 (a first stage wider than 64 channels), read off the keys and shapes."""
    stage3 = {key.split(".")[1] for key in state if key.startswith("layer3.")}
    bottleneck = any(key.startswith("layer1.0.conv3.") for key in state)
    depth = DEPTH_OF.get((len(stage3), bottleneck))
    if depth is None:
        raise UsageError(f"checkpoint {path} is not a ResNet-18/34/50/101 state dict ({len(stage3)} blocks "
                                f"in layer3{', bottleneck' if bottleneck else ''}; keys like {next(iter(state), '')})")
    conv = state.get("layer1.0.conv2.weight" if bottleneck else "layer1.0.conv1.weight")
    network = Network(depth=depth)
    if conv is not None and bottleneck and conv.dim() == 4 and conv.shape[1] != conv.shape[0]:
        network = Network("resnext", depth)
    elif conv is not None and not bottleneck and conv.dim() == 4 and conv.shape[0] != 64 and depth == 18:
        network = Network("wrn", depth, widen=conv.shape[0] / 64)
    if any(key.startswith("bam1.") for key in state):
        return network, "BAM"
    if any(".attn.spatial_gate." in key for key in state):
        return network, "CBAM"
    return network, "SE" if any(".attn." in key for key in state) else "none"


def _num_classes(state, path):
    if "fc.weight" not in state:
        raise UsageError(f"checkpoint {path} has no classifier (fc.weight): not a ResNet state dict")
    return int(state["fc.weight"].shape[0])


def _complete(state, network, att_type, path):
    """`state` checked against the model (shapes, missing keys), with BatchNorm's counters that checkpoints
    of PyTorch < 0.4.1 lack filled in."""
    model = build_network(network, att_type, num_classes=_num_classes(state, path), cbam_impl="torch")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise UsageError(f"checkpoint {path} does not fit {network.name} {att_type}: missing "
                                f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}")
    return {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}


def read_words(path):
    """{wnid: readable name}, in file order, from ImageNet's words.txt ("n01440764<TAB>tench, Tinca tinca") or
    LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca")."""
    words = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.strip().split(None, 1)
                if len(parts) != 2:
                    raise UsageError(f"{path}:{number}: expected 'WNID NAME', got {line.strip()[:60]!r}")
                words[parts[0]] = parts[1].strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read words file {path}: {exc}") from None
    return words


def class_names(trained, words):
    """(class id, readable name or '') of each label: the checkpoint's class list, else a words file listing
    exactly as many classes (LOC_synset_mapping.txt lists ImageNet's in label order), else the label numbers."""
    ids = list(trained.classes) if trained.classes else None
    if ids is None and words and len(words) == trained.num_classes:
        ids = list(words)
    ids = ids or [str(i) for i in range(trained.num_classes)]
    return [(name, words.get(name, "")) for name in ids]


def load_pretrained(model, path, classes=None):
    """Copies the weights of checkpoint `path` into `model`, a fresh build_model() of the same network: what the
    checkpoint lacks (attention modules a plain network has not; the classifier when the class count, or the
    class list, differs) keeps model/resnet.py's initialisation, the authors'. Returns (the names of the
    parameters loaded, one line saying what was loaded, what is new and what was dropped)."""
    source = read(path)
    own = model.state_dict()
    network, att_type = model.network, model.att_type
    if source.network != network:
        flags = " ".join(f"--{dest.replace('_', '-')} {value}" for dest, value in vars(source.network).items()
                         if value is not None)
        raise UsageError(f"--pretrained {path} is {source.arch}, this run {network.name}: pass {flags}")
    classifier_fits = source.num_classes == own["fc.weight"].shape[0] and \
        (source.classes is None or classes is None or tuple(source.classes) == tuple(classes))
    weights = source.weights["raw"]
    taken = {k: v for k, v in weights.items()
             if k in own and v.shape == own[k].shape and (classifier_fits or not k.startswith("fc."))}
    model.load_state_dict(taken, strict=False)
    new = _modules(k for k in own if k not in taken and not k.endswith("num_batches_tracked") and
                   not k.startswith("fc."))
    dropped = _modules(k for k in weights if k not in own)
    line = f"=> pretrained weights from {path} ({source.summary()}): {len(taken)} tensors loaded"
    if new:
        line += f"; new, initialised as model/resnet.py does: {len(new)} modules ({_span(new)})"
    if not classifier_fits:
        line += f"; classifier replaced ({source.num_classes} -> {own['fc.weight'].shape[0]} classes" + \
            (", other class names)" if source.num_classes == own["fc.weight"].shape[0] else ")")
    if dropped:
        line += f"; not in {network.name} {att_type}, dropped: {len(dropped)} modules ({_span(dropped)})"
    parameters = {name for name, _ in model.named_parameters()}
    return {name for name in taken if name in parameters}, line


def _modules(keys):
    """The modules of state-dict keys, in order: attention modules whole (layer1.0.attn, bam1), else the
    key's own module."""
    found = []
    for key in keys:
        if ".attn." in key:
            module = key[:key.index(".attn.") + len(".attn")]
        elif key.startswith("bam"):
            module = key.split(".")[0]
        else:
            module = key.rsplit(".", 1)[0]
        if module not in found:
            found.append(module)
    return found


def _span(modules):
    return ", ".join(modules) if len(modules) <= 3 else f"{modules[0]}, {modules[1]}, ..., {modules[-1]}"
