"""The straightforward CBAM formulation of the authors' code, kept as the numerical and speed baseline.

Same parameters as model/cbam.py; only the forward differs: full-map avg_pool2d/max_pool2d with a kernel of the
map's size, `expand_as` broadcasts, and torch.max/torch.mean channel pooling, exactly as
github.com/Jongchan/attention-module MODELS/cbam.py computes them. tests/ checks every other way of computing CBAM
(eager, compiled with the BatchNorm folded in, the fused op) against it; benchmarks/model_speed.py measures it. A
file of its own that imports nothing of the model: the truth shares no helper with the code it checks.
"""
import torch
import torch.nn.functional as F


def reference_cbam(cbam, x):
    """CBAM(x) as the authors' code computes it, with the parameters of `cbam` (a model.cbam.CBAM)."""
    mlp = cbam.channel_gate.mlp
    size = (x.size(2), x.size(3))
    avg = mlp(F.avg_pool2d(x, size, stride=size).view(x.size(0), -1))
    mx = mlp(F.max_pool2d(x, size, stride=size).view(x.size(0), -1))
    x = x * torch.sigmoid(avg + mx).unsqueeze(2).unsqueeze(3).expand_as(x)
    gate = cbam.spatial_gate
    pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    return x * torch.sigmoid(gate.bn(gate.conv(pooled)))
