"""Preprocessing and model input normalisation (the augmentation: tests/test_augmentation.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD, preprocess, preprocess_mask, to_display, to_model_input

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
