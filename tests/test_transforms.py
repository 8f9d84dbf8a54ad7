"""Preprocessing, model input normalisation and the augmentation's image/mask alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors

from engine.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, augmentation, preprocess, preprocess_mask,
                                    to_display, to_model_input)

RNG = np.random.default_rng(0)


def test_preprocess_float_input_is_rounded_to_uint8():
    image = np.array([[0.0, 0.5], [0.2, 1.0]], np.float32)
    out = preprocess(image, 2)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 128], [51, 255]])


def test_shrinking_averages_blocks():
    image = RNG.integers(0, 256, (32, 48), dtype=np.uint8)
    out = preprocess(image, 16)
    # INTER_AREA at integer factors is the block mean; 32x48 -> 16x16 uses 2x3 blocks.
    expected = image.reshape(16, 2, 16, 3).mean(axis=(1, 3))
    assert out.shape == (16, 16)
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_enlarging_interpolates_linearly():
    image = np.array([[0, 200]], np.uint8).repeat(2, axis=0)  # 2x2, a left-right step
    out = preprocess(image, 4)
    # Linear interpolation between pixel centres at x = -0.25, 0.25, 0.75, 1.25 (clamped at the borders).
    np.testing.assert_array_equal(out, np.tile([0, 50, 150, 200], (4, 1)))


def test_clahe_raises_contrast_of_a_flat_image():
    flat = RNG.integers(120, 136, (256, 256), dtype=np.uint8)
    plain, equalised = preprocess(flat, 256), preprocess(flat, 256, clahe=True)
    np.testing.assert_array_equal(plain, flat)
    assert equalised.std() > 2 * flat.std()
    assert np.corrcoef(flat.ravel(), equalised.ravel())[0, 1] > 0.99  # a monotone remapping per tile


def test_preprocess_mask_nearest_neighbour():
    small = RNG.random((4, 4)) > 0.5
    big = np.kron(small, np.ones((2, 2), dtype=bool))
    np.testing.assert_array_equal(preprocess_mask(small, 8), big)
    np.testing.assert_array_equal(preprocess_mask(big, 4), small)
    assert preprocess_mask(small, 8).dtype == bool


def test_to_model_input_values():
    batch = np.array([[[0, 255], [51, 102]]], np.uint8)
    x = to_model_input(batch)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    for c in range(3):
        expected = (batch[0] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(x[0, c].numpy(), expected, atol=1e-6)


def test_to_display_inverts_to_model_input():
    batch = torch.from_numpy(RNG.integers(0, 256, (3, 5, 7), dtype=np.uint8))
    shown = to_display(to_model_input(batch))
    assert shown.shape == (3, 5, 7) and shown.dtype == np.float32
    np.testing.assert_allclose(shown, batch.numpy() / 255.0, atol=1e-6)


def test_to_model_input_rejects_wrong_shape():
    with pytest.raises(ValueError):
        to_model_input(np.zeros((3, 1, 4, 4, 4), np.uint8))  # 5-D: neither images nor volumes
    with pytest.raises(ValueError):
        to_model_input(np.zeros((3, 4, 4), np.float32))  # not uint8


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_mask_aligned(seed):
    torch.manual_seed(seed)
    image = torch.zeros(1, 40, 56, dtype=torch.uint8)
    image[0, 6:24, 6:28] = 255  # off centre, so a flip or rotation of one but not the other shows
    mask = tv_tensors.Mask(image > 0)
    out_image, out_mask = augmentation(32)(image, mask)
    assert out_image.shape == out_mask.shape == (1, 32, 32)
    assert isinstance(out_mask, tv_tensors.Mask) and out_image.dtype == torch.uint8
    bright, kept = out_image[0].numpy() > 127, out_mask[0].numpy().astype(bool)
    assert kept.sum() > 100
    # Bilinear resampling blurs the square's edge while nearest keeps the mask sharp, so thresholded image and mask
    # may differ only next to the mask's edge (distance to the other side of the edge at most one diagonal pixel).
    to_edge = np.where(kept, ndimage.distance_transform_edt(kept), ndimage.distance_transform_edt(~kept))
    assert to_edge[bright != kept].max(initial=0) <= np.sqrt(2) + 1e-9


def test_augmentation_really_crops_an_image_already_at_size():
    # A centred 16x16 square on a 64x64 image: flips and +-10 degree rotations keep its area near 256 pixels and the
    # affine scaling alone (0.95-1.05) at most 256 * 1.05**2 = 282; only a crop of part of the film, resized back to
    # 64, enlarges it further (a crop of 70% of the area zooms by 1/0.7 in area).
    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    image[0, 24:40, 24:40] = 255
    areas = []
    for seed in range(30):
        torch.manual_seed(seed)
        areas.append(int((augmentation(64)(image)[0] > 127).sum()))
    assert max(areas) > 256 * 1.05**2 * 1.1
    assert min(areas) > 0.8 * 256
