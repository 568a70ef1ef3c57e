"""ResNet + attention (none, SE, BAM, CBAM) for ImageNet."""
from .authors_checkpoint import load_original_checkpoint, original_to_ours
from .cbam import CBAM_IMPLS, set_cbam_impl
from .resnet import ATTENTION_TYPES, build_model

__all__ = ["ATTENTION_TYPES", "CBAM_IMPLS", "build_model", "load_original_checkpoint", "original_to_ours",
           "set_cbam_impl"]
