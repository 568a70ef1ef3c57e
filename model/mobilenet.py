"""MobileNet v1 (Howard et al., "MobileNets", arXiv:1704.04861, 2017) with pluggable attention, the light-weight
network of the CBAM paper's Table 5.

Layout of the MobileNet paper's Table 1: a full 3x3/2 convolution of 32 channels, 13 depthwise separable blocks
(a 3x3 depthwise conv, then a 1x1 pointwise conv, each followed by BatchNorm and ReLU), global average pooling
and a linear classifier with bias (no dropout; the paper lists none). The width multiplier alpha scales every
layer's channels, the stem's too (the paper's alpha*M and alpha*N), truncated to an integer: int(alpha * C).

What the CBAM paper does not say, and what we chose (each the one choice that gives Table 5's printed digits,
parameters and GFLOPs alike, at alpha 0.7 and 1.0; tests/test_networks.py checks the counts):
- Where SE and CBAM sit: MobileNet has no residual, so there is no block tail to put them before. We put one
  after every convolution layer's BatchNorm and ReLU: the stem, each depthwise and each pointwise conv, 27
  modules. They refine the layer's output, the feature map the next convolution reads (as SE does on an
  Inception module's output in the SE paper). On the pointwise convs alone (the SE paper's SE-MobileNet, 4.7 M)
  +SE would be 4.72 M at alpha 1.0, not the CBAM paper's 5.07 M; without the stem's module +CBAM would count
  0.575 and 0.288 GFLOPs, not 0.576 and 0.289.
- Channels truncated, int(alpha * C): round() would give 0.285 GFLOPs at alpha 0.7 (paper: 0.283).
- The gates' hidden width, C/16 rounded to the nearest (model/se.py reduced_width): rounded down, +SE at alpha
  0.7 would print 2.70 M, not 2.71 M.
BAM (not in the CBAM paper's tables) sits where ResNet's three do: after the last block at 56, 28 and 14 px of a
224 px input, before each of the later downsamplings (the BAM paper's "bottlenecks").

Stages as ResNet's, so that the tools read every network alike: `stem` (everything at 112 px: the first conv
and the first block), `layer1`..`layer4` (56, 28, 14, 7 px), `bam1`..`bam3`, `avgpool`, `fc`.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .resnet import block_attention, init_weights, stage_attention

# (output channels, stride) of the 13 depthwise separable blocks (MobileNet paper, Table 1), grouped by the
# side they output at 224 px: 112, 56, 28, 14, 7.
STAGES = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),
)
STEM_CHANNELS = 32


class ConvLayer(nn.Module):
    """One MobileNet layer: conv (full 3x3, depthwise 3x3 or pointwise 1x1), BatchNorm, ReLU, then the attention
    module (None: none) on the layer's output."""

    def __init__(self, inplanes, planes, kernel_size, stride=1, groups=1, attention=None):
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.attn = attention(planes) if attention else None

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)), inplace=True)
        return x if self.attn is None else self.attn(x)


class DepthwiseSeparable(nn.Module):
    """A 3x3 depthwise layer (the stride) and a 1x1 pointwise layer, each with its attention module."""

    def __init__(self, inplanes, planes, stride=1, attention=None):
        super().__init__()
        self.depthwise = ConvLayer(inplanes, inplanes, 3, stride, groups=inplanes, attention=attention)
        self.pointwise = ConvLayer(inplanes, planes, 1, attention=attention)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def scaled(channels, width_mult):
    """A layer's channels at width multiplier alpha: int(alpha * C), as the module docstring explains."""
    return int(channels * width_mult)


class MobileNet(nn.Module):
    def __init__(self, width_mult=1.0, num_classes=1000, att_type="none", cbam_impl="auto"):
        super().__init__()
        self.att_type = att_type
        attention = block_attention(att_type, cbam_impl)
        inplanes = scaled(STEM_CHANNELS, width_mult)
        stages = []
        for stage in STAGES:
            blocks = []
            for channels, stride in stage:
                planes = scaled(channels, width_mult)
                blocks.append(DepthwiseSeparable(inplanes, planes, stride, attention))
                inplanes = planes
            stages.append(blocks)
        self.stem = nn.Sequential(ConvLayer(3, scaled(STEM_CHANNELS, width_mult), 3, 2, attention=attention),
                                  *stages[0])
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential(*blocks) for blocks in stages[1:])
        stage = stage_attention(att_type)
        ends = [stage[-1].pointwise.conv.out_channels for stage in (self.layer1, self.layer2, self.layer3)]
        self.bam1, self.bam2, self.bam3 = (stage(channels) if stage else None for channels in ends)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        # As our ResNets (the authors' code): the MobileNet paper trained in TensorFlow and states no initialisation.
        init_weights(self, self.fc)

    def forward(self, x):
        x = self.layer1(self.stem(x))
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
