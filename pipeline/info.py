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


def libjpeg_turbo():
    """libjpeg-turbo version Pillow decodes with (Image.draft's DCT-domain scaling relies on it), or why not."""
    from PIL import features
    return features.version("libjpeg_turbo") or "not in this PIL build (plain libjpeg or no JPEG support)"


def roi_decoder():
    """Where the torch backend's native ROI JPEG decoder is loaded from, or why it is not."""
    from pipeline import roi_jpeg
    built, where = roi_jpeg.available()
    return where if built else f"not built: {where}"


def auto_backend():
    """What build_loader(backend="auto") picks on this machine's default device, and why."""
    import torch

    from pipeline import resolve_backend
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return resolve_backend("auto", device).name


def summary():
    import torch
    return {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torchvision": _version("torchvision"),
        "pil": pillow_flavour(),
        "libjpeg_turbo": libjpeg_turbo(),
        "roi_jpeg": roi_decoder(),
        "dali": _version("nvidia.dali"),
        "webdataset": _version("webdataset"),
        "auto_backend": auto_backend(),
    }


if __name__ == "__main__":
    print(json.dumps(summary()))
