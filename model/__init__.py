"""ResNet + attention (none, SE, BAM, CBAM) for ImageNet."""
from .attention import ATTENTION, ATTENTION_TYPES
from .authors_checkpoint import load_original_checkpoint, original_to_ours
from .cbam import CBAM_IMPLS, set_cbam_impl
from .resnet import build_model

__all__ = ["ATTENTION", "ATTENTION_TYPES", "CBAM_IMPLS", "build_model", "load_original_checkpoint", "original_to_ours",
           "set_cbam_impl"]
