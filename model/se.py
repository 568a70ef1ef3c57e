"""Squeeze-and-Excitation: Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (arXiv:1709.01507).

Global average pool -> FC C->C/r (bias) -> ReLU -> FC C/r->C (bias) -> sigmoid -> per-channel scale, with
r = 16 as in the paper. Placed where CBAM goes (after the block's last BN, before the residual add), which is
also where the SE paper puts it in SE-ResNet.
"""
from torch import nn


def reduced_width(channels, reduction=16):
    """The hidden width of the SE and CBAM MLPs: C / r rounded to the nearest integer (halves up), at least 1.

    The papers write C/r; every ResNet, ResNeXt and WideResNet width divides by 16, and for those this is exactly
    C/r. MobileNet at width 0.7 has channel counts that do not (22, 44, 89, 179, 358, 716): rounding to the
    nearest gives the CBAM paper's Table 5 counts (SE 2.71 M), rounding down would print 2.70 M."""
    return max(1, (channels + reduction // 2) // reduction)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]
