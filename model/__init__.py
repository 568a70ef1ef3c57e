"""ResNet, ResNeXt, WideResNet and MobileNet + attention (none, SE, BAM, CBAM) for ImageNet."""
from .attention import ATTENTION, ATTENTION_TYPES
from .authors_checkpoint import load_original_checkpoint, original_to_ours
from .cbam import CBAM_IMPLS, set_cbam_impl
from .networks import ARCHS, FAMILIES, Network, build_model, build_network, parameter_count

__all__ = ["ARCHS", "ATTENTION", "ATTENTION_TYPES", "CBAM_IMPLS", "FAMILIES", "Network", "build_model", "build_network",
           "load_original_checkpoint", "original_to_ours", "parameter_count", "set_cbam_impl"]
