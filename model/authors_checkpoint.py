"""Loads state dicts saved by the CBAM authors' code (github.com/Jongchan/attention-module) into our model.

Their names differ from ours only in the attention modules; everything else (conv1, bn1, layerN.i.convK,
downsample.0/1, fc) is the same. The whole mapping is the table below.
"""
import re

import torch

# (their name pattern, our name); applied in order to each key after the optional "module." prefix is dropped.
ORIGINAL_TO_OURS = [
    # CBAM: mlp.0 is their Flatten, so their Linear layers are mlp.1 and mlp.3.
    (r"\.cbam\.ChannelGate\.mlp\.1\.", ".attn.channel_gate.mlp.0."),
    (r"\.cbam\.ChannelGate\.mlp\.3\.", ".attn.channel_gate.mlp.2."),
    (r"\.cbam\.SpatialGate\.spatial\.conv\.", ".attn.spatial_gate.conv."),
    (r"\.cbam\.SpatialGate\.spatial\.bn\.", ".attn.spatial_gate.bn."),
    # BAM: gate_c = [flatten, fc_0, bn_1, relu_1, fc_final]; ours = [Linear, BN, ReLU, Linear].
    (r"\.channel_att\.gate_c\.gate_c_fc_0\.", ".channel_gate.mlp.0."),
    (r"\.channel_att\.gate_c\.gate_c_bn_1\.", ".channel_gate.mlp.1."),
    (r"\.channel_att\.gate_c\.gate_c_fc_final\.", ".channel_gate.mlp.3."),
    # BAM spatial: [conv_reduce0, bn_reduce0, relu, (conv_di_i, bn_di_i, relu) x 2, conv_final].
    (r"\.spatial_att\.gate_s\.gate_s_conv_reduce0\.", ".spatial_gate.layers.0."),
    (r"\.spatial_att\.gate_s\.gate_s_bn_reduce0\.", ".spatial_gate.layers.1."),
    (r"\.spatial_att\.gate_s\.gate_s_conv_di_0\.", ".spatial_gate.layers.3."),
    (r"\.spatial_att\.gate_s\.gate_s_bn_di_0\.", ".spatial_gate.layers.4."),
    (r"\.spatial_att\.gate_s\.gate_s_conv_di_1\.", ".spatial_gate.layers.6."),
    (r"\.spatial_att\.gate_s\.gate_s_bn_di_1\.", ".spatial_gate.layers.7."),
    (r"\.spatial_att\.gate_s\.gate_s_conv_final\.", ".spatial_gate.layers.9."),
]


def original_to_ours(name):
    """Our parameter/buffer name for one key of the authors' state dict."""
    if name.startswith("module."):
        name = name[len("module."):]
    for pattern, replacement in ORIGINAL_TO_OURS:
        name = re.sub(pattern, replacement, name)
    return name


def load_original_checkpoint(model, src):
    """Loads `src` (a path, a {'state_dict': ...} dict, or a bare state dict) saved by the authors' code.

    Raises ValueError listing missing and unexpected keys, or shape mismatches. BatchNorm's
    `num_batches_tracked` counters are optional: checkpoints from PyTorch < 0.4.1 do not have them.
    """
    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        src = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(src, dict):
        raise ValueError(f"expected a state dict or a dict with 'state_dict', got {type(src).__name__}")
    state = src.get("state_dict", src)
    mapped = {original_to_ours(key): value for key, value in state.items()}
    own = model.state_dict()
    missing = sorted(k for k in own if k not in mapped and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in mapped if k not in own)
    if missing or unexpected:
        raise ValueError("checkpoint does not match the model: "
                         f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
                         f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    mismatched = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
                  if tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"checkpoint shapes do not match the model: {mismatched[:10]}")
    model.load_state_dict(mapped, strict=False)
    return model
