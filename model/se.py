"""Squeeze-and-Excitation: Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (arXiv:1709.01507).

Global average pool -> FC C->C/r (bias) -> ReLU -> FC C/r->C (bias) -> sigmoid -> per-channel scale, with
r = 16 as in the paper. Placed where CBAM goes (after the block's last BN, before the residual add), which is
also where the SE paper puts it in SE-ResNet.
"""
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]
