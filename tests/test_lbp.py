"""LBP histograms against a direct scikit-image computation."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import local_binary_pattern

from engine.errors import DataError
from engine.lbp import LBP_BINS, lbp_histograms


def _images(n: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-8, 9, size=(n, size, size)), axis=2)  # some texture, not just noise
    return np.clip(smooth + 128, 0, 255).astype(np.uint8)


def test_lbp_equals_skimage_with_numpy_histogram() -> None:
    images = _images(3)
    got = lbp_histograms(images)
    assert got.shape == (3, LBP_BINS) == (3, 59)
    for image, hist in zip(images, got):
        codes = local_binary_pattern(image, P=8, R=1, method="nri_uniform")
        expected, _ = np.histogram(codes, bins=59, range=(0, 59))
        np.testing.assert_allclose(hist, expected / codes.size)
    np.testing.assert_allclose(got.sum(1), 1.0)


def test_flat_image_is_one_uniform_pattern() -> None:
    # Inside, every neighbour equals the centre: all 14 x 14 interior pixels share the all-ones code. scikit-image
    # reads outside neighbours as 0, so each of the 4 edges and 4 corners has its own code: 9 bins in all.
    hist = lbp_histograms(np.full((1, 16, 16), 77, dtype=np.uint8))[0]
    assert hist.max() == 14 * 14 / 256 and np.count_nonzero(hist) == 9


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8), dtype=np.float32), np.zeros((8, 8), dtype=np.uint8)])
def test_rejects_non_uint8_stacks(bad: np.ndarray) -> None:
    with pytest.raises(DataError, match="uint8"):
        lbp_histograms(bad)
