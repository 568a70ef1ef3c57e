"""BAM: Bottleneck Attention Module.

Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018 (arXiv:1807.06514), following the authors'
code (github.com/Jongchan/attention-module, MODELS/bam.py):

- Channel branch: global average pool -> Linear C->C/16 -> BatchNorm1d -> ReLU -> Linear C/16->C.
- Spatial branch: 1x1 conv C->C/16 -> BN -> ReLU -> two (3x3 conv, dilation 4, padding 4 -> BN -> ReLU)
  -> 1x1 conv C/16->1. Every conv has a bias, as in the code.
- Combination: the paper writes M(F) = sigmoid(Mc(F) + Ms(F)) and F' = F + F * M(F); the authors' code computes
  F' = F * (1 + sigmoid(Mc(F) * Ms(F))) -- a product, not a sum, inside the sigmoid. We follow the code so that
  its released checkpoints give the same outputs here.
One BAM sits after each of the first three ResNet stages (see model/resnet.py).
"""
import torch
from torch import nn


class BAMChannelGate(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = channels // reduction
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )

    def forward(self, x):
        return self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]


class BAMSpatialGate(nn.Module):
    def __init__(self, channels, reduction=16, dilated_convs=2, dilation=4):
        super().__init__()
        hidden = channels // reduction
        layers = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(dilated_convs):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class BAM(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.channel_gate = BAMChannelGate(channels, reduction)
        self.spatial_gate = BAMSpatialGate(channels, reduction)

    def forward(self, x):
        # (N,C,1,1) * (N,1,H,W) broadcasts to (N,C,H,W), as the code's expand_as does.
        return x * (1 + torch.sigmoid(self.channel_gate(x) * self.spatial_gate(x)))
