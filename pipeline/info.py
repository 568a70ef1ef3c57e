"""Prints which decoding and loading libraries are active: `python -m pipeline.info`."""
import importlib
import json


def pillow_flavour():
    """'pillow-simd <version>' when the SIMD fork provides PIL, else 'pillow <version>'."""
    import PIL
    # Pillow-SIMD releases carry a .postN suffix on the Pillow version they track.
    name = "pillow-simd" if ".post" in PIL.__version__ else "pillow"
    return f"{name} {PIL.__version__}"


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except Exception as exc:  # report any import failure, it is what the user needs to see
        return f"unavailable ({type(exc).__name__}: {exc})"


def summary():
    import torch
    return {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torchvision": _version("torchvision"),
        "pil": pillow_flavour(),
        "dali": _version("nvidia.dali"),
        "webdataset": _version("webdataset"),
    }


if __name__ == "__main__":
    print(json.dumps(summary()))
