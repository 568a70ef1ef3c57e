"""ResNet + attention (none, SE, BAM, CBAM) for ImageNet."""
from .checkpoint import load_original_checkpoint, original_to_ours
from .resnet import ATTENTION_TYPES, build_model

__all__ = ["ATTENTION_TYPES", "build_model", "load_original_checkpoint", "original_to_ours"]
