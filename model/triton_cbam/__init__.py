"""The "triton" implementation of CBAM (model/cbam.py), optional: the block tail relu(CBAM(x) + identity) fused into
one torch.library op with a hand-written backward (op.py) over six Triton kernels (kernels.py).

Only model/cbam.py imports this package, and only when the "triton" implementation runs, so importing the model
never imports Triton; removing the package takes that one import and the "triton" choice with it. Its tests:
tests/test_cbam_fused.py, tests/test_cbam_triton.py and the kernels' PyTorch mirror, tests/cbam_kernels_torch.py.
"""
from .op import fused_cbam

__all__ = ["fused_cbam"]
