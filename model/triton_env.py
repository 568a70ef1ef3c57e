"""How Triton runs in this process: compiled for CUDA, or interpreted on the CPU (TRITON_INTERPRET=1, which
Triton reads when it is first imported). Imports nothing of the model, so every module may ask."""
import os


def interpreting():
    """True when Triton's interpreter runs kernels on CPU tensors (TRITON_INTERPRET=1, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
