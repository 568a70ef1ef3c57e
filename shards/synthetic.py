"""A small, learnable, photo-like JPEG set in the ImageNet layout, generated (no ImageNet needed): the data of
`make demo` (tools/make_demo_data.py) and of the tests.

Each class has its own hue, stripe orientation and stripe frequency; every image adds random phase, position
jitter, brightness, blur-free noise and a random blob, so a network must learn colour and texture, and random
crops and flips keep the class.
"""
import colorsys
import math
import multiprocessing
import os

import numpy as np
from PIL import Image


# Synthetic wnid-style class names, sorted order = class index (ImageFolder convention).
def class_names(n):
    return [f"n{9000000 + i:08d}" for i in range(n)]


def render(class_index, num_classes, rng, size):
    """One RGB uint8 image of `class_index`; `rng` supplies the per-image variation."""
    hue = class_index / num_classes
    angle = math.pi * ((class_index * 7) % num_classes) / num_classes
    freq = 3 + (class_index % 4) * 2  # stripes across the image
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * math.pi)
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)), np.float32)
    img = wave[..., None] * base[None, None, :] + (1 - wave[..., None]) * (base[None, None, :] * 0.3)
    # A random blob of a random colour, so colour statistics alone are noisy.
    cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    img[blob] = rng.uniform(0, 1, size=3)
    img = img + rng.normal(0, 0.04, size=img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")


def _write_class(job):
    """Writes the images of one (split, class); its own seed keeps the output independent of --workers."""
    out, split, index, classes, per_class, size, seed, quality = job
    wnid = class_names(classes)[index]
    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    folder = os.path.join(out, split, wnid)
    os.makedirs(folder, exist_ok=True)
    for j in range(per_class):
        side = int(size * rng.uniform(0.8, 1.5))
        render(index, classes, rng, side).save(os.path.join(folder, f"{wnid}_{j:05d}.JPEG"), quality=quality)


def write_tree(out, classes=10, train_per_class=80, val_per_class=20, size=96, seed=0, quality=90, workers=1):
    """Writes OUT/train/<wnid>/*.JPEG and OUT/val/<wnid>/*.JPEG; returns the list of wnids."""
    jobs = [(out, split, index, classes, per_class, size, seed, quality)
            for split, per_class in (("train", train_per_class), ("val", val_per_class))
            for index in range(classes)]
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            pool.map(_write_class, jobs)
    else:
        for job in jobs:
            _write_class(job)
    return class_names(classes)
