"""The networks: one registry, read by build_model, by train.py's --arch, --depth, --widen and --width-mult and
by every checkpoint, which records its network as these four settings (training/load.py).

- resnet: ResNet-18/34/50/101, by depth (He et al., CVPR 2016).
- resnext: ResNeXt-50/101 (32x4d), by depth; cardinality 32 and base width 4 as the CBAM paper's Table 4 (Xie,
  Girshick, Dollar, Tu, He, CVPR 2017).
- wrn: WideResNet-18, by widen (the CBAM paper's 1.5 and 2.0) (Zagoruyko, Komodakis, BMVC 2016).
- mobilenet: MobileNet v1, by width multiplier alpha (the CBAM paper's 0.7; 1.0 by default) (Howard et al., 2017).

Where each attention type sits: model/attention.py for the residual networks, model/mobilenet.py for MobileNet.
"""
import re
from dataclasses import dataclass

from .attention import canonical_attention
from .cbam import check_impl
from .mobilenet import DepthwiseSeparable, MobileNet
from .resnet import DEPTHS, BasicBlock, Bottleneck, ResNet

# The modules `--compile blocks` compiles one by one (training/compile.py): every residual block and MobileNet's
# depthwise separable blocks; identical ones share one compiled graph.
BLOCKS = (BasicBlock, Bottleneck, DepthwiseSeparable)

RESNEXT_GROUPS, RESNEXT_BASE_WIDTH = 32, 4  # "32x4d" (Xie et al., Table 1), the CBAM paper's ResNeXt rows
WIDEN_RANGE = (1.0, 8.0)          # 1 = ResNet-18 itself; the CBAM paper: 1.5 and 2.0
WIDTH_MULT_RANGE = (0.25, 2.0)    # the MobileNet paper: 0.25 to 1; below 0.25 the stem has fewer than 8 channels


@dataclass(frozen=True)
class Family:
    arch: str               # as --arch and the checkpoints spell it
    depths: tuple           # the --depth values; () where depth does not apply
    default_depth: object   # --depth when not given (None: does not apply)
    source: str


FAMILIES = {f.arch: f for f in (
    Family("resnet", (18, 34, 50, 101), 50, "He et al., CVPR 2016"),
    Family("resnext", (50, 101), 50, "Xie, Girshick, Dollar, Tu, He, CVPR 2017 (32x4d)"),
    Family("wrn", (18,), 18, "Zagoruyko, Komodakis, BMVC 2016 (ResNet-18 widened)"),
    Family("mobilenet", (), None, "Howard et al., arXiv:1704.04861, 2017 (MobileNet v1)"),
)}
ARCHS = tuple(FAMILIES)
DEFAULT_WIDEN = 2.0        # Zagoruyko and Komodakis's ImageNet width (WRN-50-2); the CBAM paper has 1.5 too
DEFAULT_WIDTH_MULT = 1.0   # the MobileNet paper's base network


@dataclass(frozen=True)
class Network:
    """A network as the flags, build_model and the checkpoints name it; `widen` only for wrn, `width_mult` only for
    mobilenet, `depth` None for mobilenet. Network.of() fills the defaults and checks the values."""
    arch: str = "resnet"
    depth: object = 50
    widen: object = None
    width_mult: object = None

    @classmethod
    def of(cls, arch="resnet", depth=None, widen=None, width_mult=None):
        """The Network of these settings, a missing one at its family's default; ValueError naming the flag."""
        problem = network_problem(arch, depth, widen, width_mult)
        if problem:
            raise ValueError(problem)
        family = FAMILIES[arch]
        return cls(arch, depth if family.depths and depth is not None else family.default_depth,
                   float(widen if widen is not None else DEFAULT_WIDEN) if arch == "wrn" else None,
                   float(width_mult if width_mult is not None else DEFAULT_WIDTH_MULT) if arch == "mobilenet"
                   else None)

    @classmethod
    def from_config(cls, config):
        """The Network a run's configuration (or a checkpoint's) records; a configuration from before --arch had
        other choices (no "arch" key, or no widen/width_mult) is a ResNet's."""
        return cls.of(config.get("arch") or "resnet", config.get("depth"), config.get("widen"),
                      config.get("width_mult"))

    @classmethod
    def from_tag(cls, tag):
        """The Network of a `tag` (resnet50, resnext101_32x4d, wrn18_1.5, mobilenet_0.7); ValueError otherwise."""
        text = str(tag).lower()
        for pattern, make in (
                (rf"resnext(\d+)(?:_{RESNEXT_GROUPS}x{RESNEXT_BASE_WIDTH}d)?", lambda m: ("resnext", int(m[1]))),
                (r"resnet(\d+)", lambda m: ("resnet", int(m[1]))),
                (r"wrn(\d+)_(\d+(?:\.\d*)?)", lambda m: ("wrn", int(m[1]), float(m[2]))),
                (r"mobilenet_(\d+(?:\.\d*)?)", lambda m: ("mobilenet", None, None, float(m[1])))):
            match = re.fullmatch(pattern, text)
            if match:
                return cls.of(*make(match))
        raise ValueError(f"expected a network such as resnet50, resnext101_32x4d, wrn18_1.5 or mobilenet_0.7, got "
                         f"{tag!r}")

    @property
    def name(self):
        """As the CBAM paper's tables name it: ResNet-50, ResNeXt-50 (32x4d), WideResNet-18 (widen 1.5),
        MobileNet (alpha 0.7)."""
        if self.arch == "resnext":
            return f"ResNeXt-{self.depth} ({RESNEXT_GROUPS}x{RESNEXT_BASE_WIDTH}d)"
        if self.arch == "wrn":
            return f"WideResNet-{self.depth} (widen {_number(self.widen)})"
        if self.arch == "mobilenet":
            return f"MobileNet (alpha {_number(self.width_mult)})"
        return f"ResNet-{self.depth}"

    @property
    def tag(self):
        """A short name for file prefixes and the checkpoints' "arch" key: resnet50, resnext50_32x4d, wrn18_1.5,
        mobilenet_0.7."""
        if self.arch == "resnext":
            return f"resnext{self.depth}_{RESNEXT_GROUPS}x{RESNEXT_BASE_WIDTH}d"
        if self.arch == "wrn":
            return f"wrn{self.depth}_{_number(self.widen)}"
        if self.arch == "mobilenet":
            return f"mobilenet_{_number(self.width_mult)}"
        return f"resnet{self.depth}"

    def build(self, att_type="none", num_classes=1000, cbam_impl="auto"):
        if self.arch == "mobilenet":
            return MobileNet(self.width_mult, num_classes, att_type, cbam_impl)
        block, layers = DEPTHS[self.depth]
        if self.arch == "resnext":
            return ResNet(block, layers, num_classes, att_type, cbam_impl, groups=RESNEXT_GROUPS,
                          base_width=RESNEXT_BASE_WIDTH)
        widen = self.widen if self.arch == "wrn" else 1.0
        return ResNet(block, layers, num_classes, att_type, cbam_impl,
                      widths=tuple(int(width * widen) for width in (64, 128, 256, 512)))


def _number(value):
    """1.5 -> "1.5", 2.0 -> "2.0" (as the paper prints widen=2.0), 0.75 -> "0.75"."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def network_problem(arch, depth=None, widen=None, width_mult=None):
    """Why these settings name no network (one line naming the flag and its value), or None. None for a setting
    means not given (its default)."""
    family = FAMILIES.get(arch)
    if family is None:
        return f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}"
    if depth is not None and not family.depths:
        return f"--depth {depth}: --arch {arch} has no depth setting (its size is --width-mult)"
    if depth is not None and depth not in family.depths:
        return f"--depth {depth}: --arch {arch} has depths {list(family.depths)}"
    if widen is not None and arch != "wrn":
        return f"--widen {widen}: only --arch wrn is widened (this is --arch {arch})"
    if widen is not None and not WIDEN_RANGE[0] <= widen <= WIDEN_RANGE[1]:
        return f"--widen must be in [{WIDEN_RANGE[0]:g}, {WIDEN_RANGE[1]:g}] (x ResNet-18's widths), got {widen}"
    if width_mult is not None and arch != "mobilenet":
        return f"--width-mult {width_mult}: only --arch mobilenet has a width multiplier (this is --arch {arch})"
    if width_mult is not None and not WIDTH_MULT_RANGE[0] <= width_mult <= WIDTH_MULT_RANGE[1]:
        return (f"--width-mult must be in [{WIDTH_MULT_RANGE[0]:g}, {WIDTH_MULT_RANGE[1]:g}] (MobileNet's alpha), "
                f"got {width_mult}")
    return None


def build_model(depth=50, att_type="none", num_classes=1000, cbam_impl="auto", arch="resnet", widen=None,
                width_mult=None):
    """The network `arch` (resnet, resnext, wrn, mobilenet; model.networks.FAMILIES) of `depth` (None for
    mobilenet), `widen` (wrn) or `width_mult` (mobilenet), with attention `att_type` (none, SE, BAM, CBAM;
    case-insensitive). `cbam_impl` picks how CBAM is computed (model.cbam.CBAM_IMPLS; same parameters and numbers
    for all). The model carries its `network` (a Network) and `att_type`."""
    network = Network.of(arch, depth, widen, width_mult)
    canonical = canonical_attention(att_type)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_impl(cbam_impl)
    model = network.build(canonical, num_classes, cbam_impl)
    model.network = network
    return model


def build_network(network, att_type="none", num_classes=1000, cbam_impl="auto"):
    """build_model for a Network (a checkpoint's, a run's)."""
    return build_model(network.depth, att_type, num_classes, cbam_impl, network.arch, network.widen,
                       network.width_mult)


def parameter_count(model):
    """The parameters a model trains (what the papers' tables count; BatchNorm statistics are buffers)."""
    return sum(p.numel() for p in model.parameters())
