"""ResNet 18/34/50/101 (He et al., CVPR 2016) with pluggable attention: none, SE, BAM or CBAM.

Layout as torchvision's and the CBAM authors' ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global
average pool, linear classifier. Bottleneck blocks put the stride on the 3x3 conv (as the authors' code and
torchvision do). SE and CBAM sit in every residual block after its last BN and before the residual addition;
BAM sits after each of the first three stages.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION, canonical_attention
from .cbam import CBAM, SpatialGate, check_impl


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

    def __init__(self, inplanes, planes, stride=1, downsample=None, attention=None):
        super().__init__()
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

    def __init__(self, inplanes, planes, stride=1, downsample=None, attention=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attn = attention(planes * 4) if attention else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return residual_tail(self.attn, self.bn3, self.conv3(out), identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, att_type="none", cbam_impl="auto"):
        super().__init__()
        self.att_type = att_type
        entry = ATTENTION[att_type]
        attention = entry.module if entry.where == "block" else None
        if attention is CBAM:
            attention = functools.partial(CBAM, impl=cbam_impl)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, attention)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, attention)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, attention)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, attention)
        stage = entry.module if entry.where == "stage" else None
        self.bam1 = stage(64 * block.expansion) if stage else None
        self.bam2 = stage(128 * block.expansion) if stage else None
        self.bam3 = stage(256 * block.expansion) if stage else None
        # Global average pooling (not the original fixed 7x7 pool): any input side >= 32 works.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()

    def _make_layer(self, block, planes, blocks, stride, attention):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, attention)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, attention=attention) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self):
        """Initialisation of the authors' code (MODELS/model_resnet.py), module by module."""
        for module in self.modules():
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
        for module in self.modules():
            if isinstance(module, SpatialGate):
                # BN weight 0: every spatial gate starts at sigmoid(0) = 0.5, a uniform mask, so early training
                # is not disturbed by random spatial attention (authors' code: "SpatialGate" bn weight = 0).
                nn.init.zeros_(module.bn.weight)
        # Classifier: Kaiming normal with the default fan_in mode, as the authors' code (init.kaiming_normal).
        nn.init.kaiming_normal_(self.fc.weight)
        # Linear layers inside the SE/CBAM/BAM gates keep PyTorch's default weights, as the authors' code does.

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


DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def build_model(depth, att_type="none", num_classes=1000, cbam_impl="auto"):
    """ResNet-`depth` with attention `att_type` (none, SE, BAM, CBAM; case-insensitive).

    `cbam_impl` picks how CBAM is computed (model.cbam.CBAM_IMPLS; same parameters and numbers for all).
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    canonical = canonical_attention(att_type)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_impl(cbam_impl)
    block, layers = DEPTHS[depth]
    return ResNet(block, layers, num_classes, canonical, cbam_impl)
