"""The attention types a network can carry: one registry, read by the models (model/resnet.py for ResNet, ResNeXt
and WideResNet, model/mobilenet.py) and by train.py's --att-type flag alike.

An attention module maps x to a tensor of x's shape: forward(x). A block attention module (where = "block") is
built as `cls(channels)` for the block's output channels and sits in every residual block after its last BatchNorm
and before the residual add: model/resnet.py's residual_tail computes relu(attention(bn(z)) + identity). A module
may offer that whole tail in one piece as `fused_tail(z, bn, identity)`, which residual_tail then calls instead;
only CBAM does (model/cbam.py: its compiled and its Triton implementation fuse the BatchNorm, the add and the
ReLU). A stage attention module (where = "stage") sits after a whole stage (BAM: after the first three, on
`cls(stage output channels)`). "none" has no module.
"""
from dataclasses import dataclass

from .bam import BAM
from .cbam import CBAM
from .se import SqueezeExcite


@dataclass(frozen=True)
class Attention:
    name: str        # as the flag and the checkpoints spell it
    module: type     # the nn.Module class, None for "none"
    where: str       # "block", "stage" or "" (none)
    source: str      # the paper


ATTENTION = {a.name: a for a in (
    Attention("none", None, "", "He et al., CVPR 2016 (plain ResNet)"),
    Attention("SE", SqueezeExcite, "block", "Hu, Shen, Sun, CVPR 2018"),
    Attention("BAM", BAM, "stage", "Park, Woo, Lee, Kweon, BMVC 2018"),
    Attention("CBAM", CBAM, "block", "Woo, Park, Lee, Kweon, ECCV 2018"),
)}
ATTENTION_TYPES = tuple(ATTENTION)


def canonical_attention(name):
    """The registered spelling of `name` (any case), or ValueError naming the choices."""
    found = {key.lower(): key for key in ATTENTION}.get(str(name).lower())
    if found is None:
        raise ValueError(f"att_type must be one of {', '.join(ATTENTION)} (any case), got {name!r}")
    return found
