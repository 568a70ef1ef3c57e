"""The augmentation policy's geometry (pipeline/augment.py): crop windows, DCT scale factors, the val window."""

import numpy as np
import pytest

from pipeline import augment


def test_random_resized_crop_box_stays_in_bounds_and_ranges():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (64, 48), (17, 300), (1000, 10), (8, 8)]:
        for _ in range(200):
            left, top, w, h = augment.random_resized_crop_box(width, height, rng)
            assert 0 <= left and 0 <= top and left + w <= width and top + h <= height and w > 0 and h > 0
    for _ in range(200):  # a normal image never needs the fallback: area and ratio are within range
        left, top, w, h = augment.random_resized_crop_box(500, 375, rng)
        assert 0.08 * 0.97 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_random_resized_crop_falls_back_to_a_centred_clamped_window():
    rng = np.random.default_rng(0)
    assert augment.random_resized_crop_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)
    assert augment.random_resized_crop_box(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)


def test_draft_factor_keeps_the_crop_at_least_the_output_size():
    assert augment.draft_factor(224, 224, 224) == 1
    assert augment.draft_factor(447, 1000, 224) == 1
    assert augment.draft_factor(448, 900, 224) == 2
    assert augment.draft_factor(900, 900, 224) == 4
    assert augment.draft_factor(4000, 1800, 224) == 8


def test_val_window_matches_torchvision_resize_centre_crop_within_a_pixel():
    size = 224
    for width, height in [(500, 375), (375, 500), (640, 480), (333, 1000)]:
        short = augment.val_resize_size(size)  # torchvision: Resize(256) then CenterCrop(224)
        rw, rh = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        tv_left, tv_top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
        left, top, right, bottom = augment.val_crop_box(width, height, size)
        scale = short / min(width, height)
        # torchvision rounds the offset (<= 0.5 px) after truncating the resized size (< 0.5 px at the centre).
        assert abs(left * scale - tv_left) < 1 and abs(top * scale - tv_top) < 1
        assert right - left == pytest.approx(size / scale) and bottom - top == pytest.approx(size / scale)
