"""Automatic augmentation (--auto-augment) and random erasing (--reprob) in the CPU backends, on generated and
real photographs: the augmented batches differ from the plain ones where the policy says, stay in range, and an
epoch replayed (as a mid-epoch resume replays it) gives the same batches."""
import pytest
import torch
from conftest import CPU_BACKENDS, epoch_batches

from pipeline import augment

LOW = min((0 - m) / s for m, s in zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD))
HIGH = max((1 - m) / s for m, s in zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD))


def images_of(shards, backend, **kwargs):
    loader, batches = epoch_batches(shards, "train", 8, backend, image_size=32, seed=7, **kwargs)
    return loader, torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])


def changed_share(images, plain):
    """Per sample: the share of pixel positions where any channel differs from the plain batch."""
    return (images != plain).any(1).flatten(1).float().mean(1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_randaugment_changes_the_share_of_samples_its_probability_gives(generated_shards, backend):
    _, plain, plain_labels = images_of(generated_shards, backend)
    _, once, labels = images_of(generated_shards, backend, auto_augment="rand-m9-n1-p0.5")
    assert torch.equal(labels, plain_labels)  # same samples, same crops: only the policy differs
    assert LOW - 1e-4 <= float(once.min()) and float(once.max()) <= HIGH + 1e-4
    changed = changed_share(once, plain) > 0
    assert 0.25 <= float(changed.float().mean()) <= 0.75, changed  # one layer with p 0.5; 48 samples
    _, always, _ = images_of(generated_shards, backend, auto_augment="rand-m9-n2-mstd0.5-p1")
    assert float((changed_share(always, plain) > 0).float().mean()) >= 0.9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_erasing_boxes_cover_the_configured_area_share(generated_shards, backend):
    _, plain, _ = images_of(generated_shards, backend)
    _, erased, _ = images_of(generated_shards, backend, reprob=1.0)
    share = changed_share(erased, plain)
    assert float(share.min()) >= 0.015 and float(share.max()) <= 0.36, share  # 2-33 % of the area, rounded
    _, half, _ = images_of(generated_shards, backend, reprob=0.5)
    assert 0.25 <= float((changed_share(half, plain) > 0).float().mean()) <= 0.75


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("policy", ["trivial", "imagenet"])
def test_a_resumed_epoch_repeats_the_augmented_photographs(real_shards, backend, policy):
    loader, first, _ = images_of(real_shards, backend, auto_augment=policy, reprob=0.25)
    _, plain, _ = images_of(real_shards, backend)
    assert float((changed_share(first, plain) > 0).float().mean()) >= 0.5
    assert float(first.min()) >= -10 and float(first.max()) <= 10  # erased noise is N(0, 1); pixels in range
    # As train.py resumes mid-epoch: a new loader replays the epoch and skips the batches already trained.
    _, resumed = epoch_batches(real_shards, "train", 8, backend, image_size=32, seed=7, auto_augment=policy,
                               reprob=0.25)
    assert torch.equal(torch.cat([images for images, _ in resumed[1:]]), first[8:])
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([images for images, _ in loader]), first)


def test_auto_augment_values_parse_as_timm_writes_them():
    policy = augment.parse_auto_augment("rand-m9-mstd0.5")
    assert (policy.kind, policy.magnitude, policy.layers, policy.magnitude_std, policy.prob) == ("rand", 9, 2, 0.5,
                                                                                                 0.5)
    assert str(policy) == "rand-m9-mstd0.5" and augment.parse_auto_augment("trivial").kind == "trivial"
    assert not policy.increasing and augment.parse_auto_augment("rand-m6-mstd0.5-inc1").increasing
    for bad, reason in (("rand-m11", "0 <= m <= 10"), ("rand-q3", "unknown part 'q3'"), ("autoaug", "expected"),
                        ("rand-n1.5", "whole n"), ("rand-inc2", "inc 0 or 1")):
        with pytest.raises(ValueError, match=reason):
            augment.parse_auto_augment(bad)


@pytest.mark.parametrize("increasing", [False, True])
def test_grouped_randaugment_operations_equal_torchvision_sample_by_sample(increasing):
    import math

    import numpy as np
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    levels, signs = np.array([9.0, 3.0, 10.0, 0.0, 6.5, 7.0]), np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])

    def affine(image, **how):
        how = {"angle": 0.0, "translate": [0, 0], "shear": [0.0, 0.0], **how}
        return F.affine(image, scale=1.0, interpolation=InterpolationMode.BILINEAR, fill=augment.AUTO_AUGMENT_FILL,
                        **how)

    def expected(name, image, level, sign):
        fraction = level / 10
        factor = max(0.1, 1 + sign * fraction * 0.9) if increasing else fraction * 1.8 + 0.1
        bits = 4 - int(fraction * 4) if increasing else int(fraction * 4)
        threshold = 256 - int(fraction * 256) if increasing else min(256, int(fraction * 256))
        degrees = math.degrees(math.atan(sign * fraction * 0.3))
        shift = round(sign * fraction * 0.45 * image.shape[-1]), round(sign * fraction * 0.45 * image.shape[-2])
        return {
            "AutoContrast": lambda: F.autocontrast(image), "Equalize": lambda: F.equalize(image),
            "Invert": lambda: F.invert(image), "Rotate": lambda: affine(image, angle=sign * fraction * 30),
            "Posterize": lambda: F.posterize(image, bits),
            "Solarize": lambda: image if threshold > 255 else F.solarize(image, threshold),
            "SolarizeAdd": lambda: torch.where(image < 128, (image.int() + int(fraction * 110)).clamp(max=255),
                                               image.int()).to(torch.uint8),
            "Color": lambda: F.adjust_saturation(image, factor), "Contrast": lambda: F.adjust_contrast(image, factor),
            "Brightness": lambda: F.adjust_brightness(image, factor),
            "Sharpness": lambda: F.adjust_sharpness(image, factor),
            "ShearX": lambda: affine(image, shear=[degrees, 0.0], center=[0, 0]),
            "ShearY": lambda: affine(image, shear=[0.0, degrees], center=[0, 0]),
            "TranslateXRel": lambda: affine(image, translate=[shift[0], 0]),
            "TranslateYRel": lambda: affine(image, translate=[0, shift[1]]),
        }[name]()

    operations = augment._rand_operations(increasing)
    assert len(operations) == 15  # timm's _RAND_TRANSFORMS
    for name, operation in operations.items():
        grouped = operation(images.clone(), levels, signs)
        one_by_one = torch.stack([expected(name, images[i], levels[i], signs[i]) for i in range(len(levels))])
        difference = (grouped.int() - one_by_one.int()).abs()
        # Blends compute a * x + (1 - a) * y where torchvision computes x + (1 - a) * (y - x): 1 level at most.
        assert int(difference.max()) <= (1 if name in ("Color", "Sharpness") else 0), name


def test_grouped_and_sample_by_sample_randaugment_give_the_same_pixels():
    import numpy as np

    augmenter = augment.AutoAugmenter(augment.parse_auto_augment("rand-m9-n3-mstd0.5-p0.8"))
    images = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8)
    results = []
    for grouped in (True, False):
        work = images.clone()
        augmenter.rand_in_place(work, [np.random.default_rng([5, i]) for i in range(12)], grouped)
        results.append(work)
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], images)
