"""Plain image files for evaluation and inference: an ImageNet-style folder (`val/<wnid>/*.JPEG`, the layout the
CBAM authors' train_imagenet.py validates on) or single images, decoded with the val transform of every backend.

`load_image(path, size)` is the val preprocessing of pipeline/augment.py (shorter side to size/0.875, centre crop)
through the same window decoder as the torch backend (pipeline/jpeg_decode.py), so a folder scores as its shards
do. `FolderLoader` yields `(images, labels)` batches like a val shard loader: normalised, channels_last, on the
device; rank r of W reads the contiguous range [N*r//W, N*(r+1)//W) of the sorted files (each image once).
"""
import os

import numpy as np
import torch

from shards.errors import ShardError

from .jpeg_decode import DECODE_ERRORS, decode_val
from .normalize import Normalizer

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")

def is_image(name):
    return name.lower().endswith(IMAGE_SUFFIXES)


def load_image(path, image_size):
    """The file at `path` -> val-preprocessed image_size x image_size RGB uint8 array (HWC); ValueError naming
    the file when it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return np.array(decode_val(data, image_size))  # writable: torch.from_numpy shares it
    except DECODE_ERRORS as exc:
        raise ValueError(f"{path}: cannot decode: {exc}") from None


def images_under(paths):
    """The image files named by `paths` (files as given; folders searched recursively, sorted)."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            found += [os.path.join(folder, name) for name in sorted(files) if is_image(name)]
    return found


def class_folder_root(data):
    """The folder holding the class folders: DATA/val when it exists (an ImageNet root), else DATA itself."""
    val = os.path.join(data, "val")
    return val if os.path.isdir(val) else data


def folder_problem(data):
    """Why `data` is not an image folder to evaluate on (None when it is one)."""
    root = class_folder_root(data)
    if not os.path.isdir(root):
        return f"DATA folder not found: {data}"
    if not any(entry.is_dir() for entry in os.scandir(root)):
        return f"{root} has no class folders (<class>/*.JPEG) and DATA has no manifest.json"
    return None


def folder_samples(data, classes=None):
    """(class names, [(path, label), ...]) of an image folder. Class order = sorted folder names, or `classes`
    (the list a checkpoint was trained on) when given: then every folder must name one of them (a subset is
    fine). ValueError naming what does not fit."""
    root = class_folder_root(data)
    names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if classes is None:
        classes = names
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise ValueError(f"{root}: class folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                         f"are not among the checkpoint's {len(classes)} classes ({', '.join(classes[:3])}, ...)")
    samples = [(path, index[name]) for name in names for path in images_under([os.path.join(root, name)])]
    if not samples:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return tuple(classes), samples


class _Decoded(torch.utils.data.Dataset):
    """(uint8 HWC pixels, label, error text or ''): a file that does not decode is reported by the main process,
    in one line naming it, instead of as a worker's traceback."""

    def __init__(self, samples, image_size):
        self.samples, self.image_size = samples, image_size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            return torch.from_numpy(load_image(path, self.image_size)), label, ""
        except ValueError as exc:
            return torch.zeros(self.image_size, self.image_size, 3, dtype=torch.uint8), label, str(exc)


def _collate(items):
    pixels, labels, errors = zip(*items)
    return torch.stack(pixels), torch.tensor(labels, dtype=torch.int64), [e for e in errors if e]


class FolderLoader:
    """Val batches of an image folder for `rank` of `world_size` (see the module docstring)."""

    def __init__(self, data, per_rank_batch, *, classes=None, rank=0, world_size=1, workers=2, device="cpu",
                 image_size=224, dtype=torch.float32):
        self.data = data
        self.classes, samples = folder_samples(data, classes)
        self.num_samples = len(samples)
        n = len(samples)
        mine = samples[n * rank // world_size:n * (rank + 1) // world_size]
        self.batches = torch.utils.data.DataLoader(_Decoded(mine, image_size), batch_size=per_rank_batch,
                                                   num_workers=workers, collate_fn=_collate)
        self.normalize = Normalizer(torch.device(device), dtype)
        self.device = torch.device(device)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for pixels, labels, errors in self.batches:
            if errors:
                raise ShardError(errors[0])
            yield self.normalize(pixels), labels.to(self.device, non_blocking=True)

    def close(self):
        """Nothing outlives an iteration here (its DataLoader's workers end with each pass): the loaders' close()."""

    def __repr__(self):
        return f"FolderLoader({class_folder_root(self.data)!r}, {self.num_samples} images, {len(self.classes)} classes)"


def stack_images(arrays, device, dtype=torch.float32):
    """uint8 HWC arrays of one size -> a normalised channels_last batch on `device` (the loaders' contract)."""
    return Normalizer(torch.device(device), dtype)(torch.from_numpy(np.stack(arrays)))
