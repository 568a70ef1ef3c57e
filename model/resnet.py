"""ResNet 18/34/50/101 (He et al., CVPR 2016) with pluggable attention: none, SE, BAM or CBAM; and the two
residual networks of the CBAM paper's Table 4 built from the same blocks and stages (model/networks.py):

- ResNeXt (Xie, Girshick, Dollar, Tu, He, CVPR 2017): the bottleneck's 3x3 conv grouped (`groups` = cardinality,
  `base_width` = channels per group at the first stage; 32x4d: 32 groups of 4, i.e. 128 channels, doubling per
  stage), the block's output unchanged (planes * 4), as the ResNeXt paper's Table 1 and torchvision's
  resnext50_32x4d.
- WideResNet (Zagoruyko, Komodakis, BMVC 2016) on ResNet-18's basic blocks: every stage's width multiplied by
  `widen` (`widths`), the 7x7 stem left at 64 channels. The CBAM paper does not say which layers it widens; the
  stages alone give its Table 4 counts to the printed digit (25.88 M at 1.5, 45.62 M at 2.0), a widened stem
  too would give 25.90 M and 45.69 M.

Layout as torchvision's and the CBAM authors' ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global
average pool, linear classifier. Bottleneck blocks put the stride on the 3x3 conv (as the authors' code and
torchvision do). SE and CBAM sit in every residual block after its last BN and before the residual addition;
BAM sits after each of the first three stages.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION
from .cbam import CBAM, SpatialGate


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def residual_tail(attn, bn, z, identity):
    """relu(attn(bn(z)) + identity): the block's last BatchNorm, its attention module (None: none), the add and the
    ReLU. An attention module that computes this tail in one piece offers it as `fused_tail` (model/attention.py);
    only CBAM does."""
    if attn is None:
        return F.relu(bn(z) + identity, inplace=True)
    fused_tail = getattr(attn, "fused_tail", None)
    if fused_tail is not None:
        return fused_tail(z, bn, identity)
    return F.relu(attn(bn(z)) + identity, inplace=True)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, attention=None, groups=1, base_width=64):
        super().__init__()
        if (groups, base_width) != (1, 64):
            raise ValueError(f"a basic block has no grouped conv: groups 1 and base_width 64, got {groups}, "
                             f"{base_width}")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.attn = attention(planes) if attention else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return residual_tail(self.attn, self.bn2, self.conv2(out), identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, attention=None, groups=1, base_width=64):
        super().__init__()
        # The 3x3 conv's width: `planes` for ResNet; for ResNeXt `groups` groups of base_width * planes / 64
        # channels (torchvision's formula; 32x4d at planes 64: 32 x 4 = 128).
        width = int(planes * base_width / 64) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attn = attention(planes * 4) if attention else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return residual_tail(self.attn, self.bn3, self.conv3(out), identity)


def block_attention(att_type, cbam_impl):
    """The class (or partial) an attention type builds in every block as `cls(channels)`, or None."""
    entry = ATTENTION[att_type]
    if entry.where != "block":
        return None
    return functools.partial(CBAM, impl=cbam_impl) if entry.module is CBAM else entry.module


def stage_attention(att_type):
    """The class an attention type builds after a stage as `cls(channels)` (BAM), or None."""
    entry = ATTENTION[att_type]
    return entry.module if entry.where == "stage" else None


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, att_type="none", cbam_impl="auto",
                 widths=(64, 128, 256, 512), groups=1, base_width=64):
        super().__init__()
        self.att_type = att_type
        attention = block_attention(att_type, cbam_impl)
        options = dict(attention=attention, groups=groups, base_width=base_width)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1, options)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, options)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, options)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, options)
        stage = stage_attention(att_type)
        self.bam1 = stage(widths[0] * block.expansion) if stage else None
        self.bam2 = stage(widths[1] * block.expansion) if stage else None
        self.bam3 = stage(widths[2] * block.expansion) if stage else None
        # Global average pooling (not the original fixed 7x7 pool): any input side >= 32 works.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        init_weights(self, self.fc)

    def _make_layer(self, block, planes, blocks, stride, options):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **options)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        if self.bam1 is not None:
            x = self.bam1(x)
        x = self.layer2(x)
        if self.bam2 is not None:
            x = self.bam2(x)
        x = self.layer3(x)
        if self.bam3 is not None:
            x = self.bam3(x)
        x = self.layer4(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def init_weights(model, classifier):
    """Initialisation of the authors' code (MODELS/model_resnet.py), module by module; `classifier` is the final
    nn.Linear. Every network of model/networks.py starts this way."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # He et al. 2015 for ReLU nets; fan_out keeps the backward pass variance at 1.
            # (The authors' code matched key names containing "conv", which catches every conv here except
            # the downsample shortcut convs; we initialise those the same way, as He et al. do every conv.)
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            # Identity affine transform at the start, the usual BN choice.
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            # Every bias starts at 0, as in the authors' code.
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, SpatialGate):
            # BN weight 0: every spatial gate starts at sigmoid(0) = 0.5, a uniform mask, so early training
            # is not disturbed by random spatial attention (authors' code: "SpatialGate" bn weight = 0).
            nn.init.zeros_(module.bn.weight)
    # Classifier: Kaiming normal with the default fan_in mode, as the authors' code (init.kaiming_normal).
    nn.init.kaiming_normal_(classifier.weight)
    # Linear layers inside the SE/CBAM/BAM gates keep PyTorch's default weights, as the authors' code does.


DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
