"""mixup and cutmix of a batch on the device (--mixup ALPHA, --cutmix ALPHA), with soft targets.

Each sample is mixed with its partner in the batch reversed along N (timm's "flip" pairing): no permutation to
draw, no host work beyond one Beta draw per step. mixup (Zhang et al., ICLR 2018) blends the two images with
weight lam ~ Beta(alpha, alpha); cutmix (Yun et al., ICCV 2019) pastes a box of the partner covering a fraction
1 - lam of the image, and lam is then the exact share of pixels left. With both alphas set, each step uses one of
the two with equal chance. The targets are lam * one_hot(label) + (1 - lam) * one_hot(partner's label); because
the pairing is a permutation, summed over the batch they are exactly the batch's label counts.

The draws are a function of (seed, global step), so a resumed run mixes its steps as the uninterrupted run would.
"""
import math

import numpy as np
import torch


class BatchMixer:
    def __init__(self, mixup, cutmix, num_classes, seed):
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup} and {cutmix}")
        self.mixup, self.cutmix, self.num_classes, self.seed = mixup, cutmix, num_classes, seed

    @property
    def enabled(self):
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, images, labels, step):
        """(mixed images, soft targets float32 (B, classes), the dominant hard label of each sample)."""
        rng = np.random.default_rng([self.seed, step])
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        if use_cutmix:
            images, lam = self._paste_box(images, lam, rng)
        else:
            images = torch.lerp(images, images.flip(0), 1.0 - lam)
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float()
        targets = torch.lerp(one_hot, one_hot.flip(0), 1.0 - lam)
        dominant = labels if lam >= 0.5 else labels.flip(0)
        return images, targets, dominant

    @staticmethod
    def _paste_box(images, lam, rng):
        """Cutmix: a box of side sqrt(1 - lam) times the image's, centred uniformly and clipped to the image."""
        height, width = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = images[..., top:bottom, left:right].flip(0)
        return images, 1.0 - (bottom - top) * (right - left) / (height * width)
