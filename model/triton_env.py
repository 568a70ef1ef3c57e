"""Triton in this process: where it can run (CUDA devices, or CPU tensors under its interpreter, TRITON_INTERPRET=1,
which Triton reads when it is first imported) and whether it imports. Asked by CBAM's choice of implementation
(model/cbam.py), by the fused op's kernels and by --compile auto (training/compile.py, for inductor's GPU code).
Imports nothing of the model, and Triton only when asked about a device Triton could run on."""
import os

import torch

# Triton's import error ("" when it imports), found once per process. A plain list, not functools.cache or
# torch.compiler.assume_constant_result: CBAM resolves its implementation inside forward, so torch.compile traces
# this module's functions and reads the list as a constant (it warns about cache wrappers), and marking a function
# constant imports torch._dynamo, and with it Triton, when the model is imported.
_import_error = []


def interpreting():
    """True when Triton's interpreter runs kernels on CPU tensors (TRITON_INTERPRET=1, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device):
    """Why Triton cannot run on `device`, or "" when it can."""
    device = torch.device(device)
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return f"Triton runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), not on {device.type}"
    if not _import_error:
        try:
            import triton.language  # noqa: F401  (what kernels are written in, inductor's and CBAM's alike)
        except Exception as exc:  # ImportError, or a Triton without a usable backend
            _import_error.append(f"Triton does not import ({type(exc).__name__}: {exc})")
        else:
            _import_error.append("")
    return _import_error[0]
