"""LIME superpixel maps: deterministic for a seed, and weighted where the model looks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.filters import gaussian
from torch import nn

from engine.explain import lime_map, lime_overlay, predict_proba
from engine.models.backbones import StagedNet

SIZE = 64


class TopLeft(nn.Module):
    """Zeroes all but the top-left quadrant of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(x)
        keep[..., : x.shape[-2] // 2, : x.shape[-1] // 2] = 1
        return x * keep


@pytest.fixture(scope="module")
def model() -> StagedNet:
    """A random texture detector that only sees the top-left quadrant, with a steep head so probabilities move."""
    torch.manual_seed(0)
    net = StagedNet("quadrant", [nn.Sequential(TopLeft(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())],
                    nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        net.classifier.weight.mul_(30)
    return net


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    field = gaussian(np.random.default_rng(0).random((SIZE, SIZE)), sigma=2)
    return np.round((field - field.min()) / (field.max() - field.min()) * 255).astype(np.uint8)


def test_lime_is_deterministic_for_a_seed(model, image):
    a = lime_map(model, image, 0, n_samples=150, n_segments=16, seed=3)
    b = lime_map(model, image, 0, n_samples=150, n_segments=16, seed=3)
    c = lime_map(model, image, 0, n_samples=150, n_segments=16, seed=4)
    for key in ("segments", "weights", "map", "heatmap"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["weights"], c["weights"])


def test_lime_weights_the_superpixels_the_model_sees(model, image):
    r = lime_map(model, image, 0, n_samples=200, n_segments=16)
    seg, w = r["segments"], r["weights"]
    assert seg.shape == image.shape and len(w) == seg.max() + 1
    seen = np.array([(seg[: SIZE // 2, : SIZE // 2] == s).any() for s in range(len(w))])
    assert seen.any() and (~seen).any()
    assert np.abs(w[~seen]).max() < 0.05 * np.abs(w[seen]).max()
    np.testing.assert_array_equal(r["map"], w[seg])
    np.testing.assert_array_equal(r["positive"], r["map"] > 0)
    np.testing.assert_array_equal(r["negative"], r["map"] < 0)
    positive = np.clip(r["map"], 0, None)
    np.testing.assert_allclose(r["heatmap"], positive / positive.max())
    rgb = lime_overlay(image, r, alpha=0.5)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    # Worked by hand for the strongest superpixel away from borders: half image, half the diverging map's end.
    from skimage.segmentation import find_boundaries
    top = int(np.abs(w).argmax())
    inside = (seg == top) & ~find_boundaries(seg, mode="inner")
    y, x = np.argwhere(inside)[0]
    end = np.array([0.70, 0.09, 0.17] if w[top] > 0 else [0.13, 0.40, 0.67])
    np.testing.assert_allclose(rgb[y, x], np.round(255 * (0.5 * image[y, x] / 255 + 0.5 * end)), atol=1)


def test_lime_explains_the_predicted_class_by_default(model, image):
    predicted = int(predict_proba(model, image[None]).argmax())
    default = lime_map(model, image, n_samples=60, n_segments=9)
    explicit = lime_map(model, image, predicted, n_samples=60, n_segments=9)
    assert default["target"] == predicted
    np.testing.assert_array_equal(default["weights"], explicit["weights"])


def test_lime_reports_its_samples_and_stops_on_cancel(model, image):
    from engine.errors import Cancelled

    heard: list[float] = []
    plain = lime_map(model, image, 0, n_samples=120, n_segments=9, batch_size=50)
    reported = lime_map(model, image, 0, n_samples=120, n_segments=9, batch_size=50,
                        progress=lambda f, t: heard.append(f))
    assert heard == pytest.approx([50 / 120, 100 / 120, 1.0])  # one report per batch of perturbed images
    np.testing.assert_array_equal(reported["weights"], plain["weights"])  # listening changes nothing
    with pytest.raises(Cancelled):
        lime_map(model, image, 0, n_samples=120, n_segments=9, batch_size=50, cancel=lambda: True)
