"""Deletion/insertion and ROAD against Quantus, pytorch-grad-cam and a hand-computed linear model."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid
from scipy.ndimage import gaussian_filter
from torch import nn

from engine.explain.faithfulness import (DELETION_BASELINE, blurred, deletion_insertion, noisy_linear_impute,
                                         pixel_ranks, road, road_keep_masks)

# pytorch-grad-cam converts tensors with np.float32(tensor), which NumPy 2 flags as deprecated
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

SIZE = 16


class _Gray(nn.Module):
    """A model on (N, 1, H, W) inputs replicated to three channels, so that Quantus flips whole pixels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, 3, -1, -1))


class _Linear(nn.Module):
    """Two logits: 0 and sum(w * x[:, 0]); p(class 1) = sigmoid(sum(w * x[:, 0]))."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.w).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(s), s], dim=1)


@pytest.fixture(scope="module")
def setup():
    """A tiny random conv net, gray inputs replicated to 3 channels, continuous maps and targets."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(96, 3)).eval()
    x1 = torch.randn(5, 1, SIZE, SIZE)
    maps = np.random.default_rng(0).random((5, SIZE, SIZE)).astype(np.float32)
    targets = np.array([0, 1, 2, 0, 1])
    return model, x1, x1.repeat(1, 3, 1, 1), maps, targets


def test_deletion_curve_equals_quantus_pixel_flipping(setup):
    import quantus

    model, x1, x3, maps, targets = setup
    ours = deletion_insertion(model, x3, maps, targets, n_steps=16, batch_size=50)
    metric = quantus.PixelFlipping(features_in_step=SIZE * SIZE // 16, perturb_baseline=DELETION_BASELINE,
                                   normalise=False, abs=False, disable_warnings=True)
    ref = metric(model=_Gray(model).eval(), x_batch=x1.numpy(), y_batch=targets, a_batch=maps[:, None],
                 channel_first=True, softmax=True)
    # Quantus's curve starts after the first step; ours also has the unperturbed point at fraction 0
    np.testing.assert_allclose(ours["deletion_curve"][:, 1:], np.asarray(ref), atol=1e-6)
    with torch.inference_mode():
        p0 = torch.softmax(model(x3), 1)[torch.arange(5), torch.from_numpy(targets)].numpy()
    np.testing.assert_allclose(ours["deletion_curve"][:, 0], p0, atol=1e-6)
    np.testing.assert_allclose(ours["deletion_auc"], trapezoid(ours["deletion_curve"], dx=1 / 16, axis=1))
    assert ours["deletion_curve"].shape == ours["insertion_curve"].shape == (5, 17)
    assert not model.training


def test_insertion_and_deletion_hand_computed_on_a_linear_model():
    shuffle = torch.randperm(SIZE * SIZE, generator=torch.Generator().manual_seed(0))
    w = torch.linspace(-1, 1, SIZE * SIZE)[shuffle].reshape(SIZE, SIZE)
    model = _Linear(w * 0.2).eval()
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 1, SIZE, SIZE)).astype(np.float32)).repeat(1, 3, 1, 1)
    maps = np.stack([w.numpy() * x[0, 0].numpy(), rng.random((SIZE, SIZE))]).astype(np.float32)  # distinct values
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    n_steps = 8
    out = deletion_insertion(model, x, maps, [1, 1], n_steps=n_steps)
    sigma = SIZE / 32  # the blur RISE-style insertion starts from, computed independently with SciPy
    k = 2 * int(np.ceil(3 * sigma)) + 1
    for i in range(2):
        img = x[i, 0].numpy().astype(np.float64)
        blur = gaussian_filter(img, sigma, mode="mirror", truncate=(k // 2) / sigma)
        order = np.argsort(-maps[i].ravel())
        wv = (w * 0.2).numpy().ravel()
        dele, ins = [], []
        for step in range(n_steps + 1):
            top = order[: round(step / n_steps * SIZE * SIZE)]
            d, s = img.ravel().copy(), blur.ravel().copy()
            d[top], s[top] = DELETION_BASELINE, img.ravel()[top]
            dele.append(1 / (1 + np.exp(-(wv * d).sum())))
            ins.append(1 / (1 + np.exp(-(wv * s).sum())))
        np.testing.assert_allclose(out["deletion_curve"][i], dele, atol=1e-5)
        np.testing.assert_allclose(out["insertion_curve"][i], ins, atol=1e-5)
        assert out["insertion_auc"][i] == pytest.approx(trapezoid(ins, np.linspace(0, 1, n_steps + 1)), abs=1e-5)
    # the map that is the model's exact contribution w*x removes the evidence fastest and restores it fastest
    assert out["deletion_auc"][0] < out["deletion_random_auc"][0]
    assert out["insertion_auc"][0] > out["insertion_random_auc"][0]


def test_blur_is_scipy_gaussian():
    x = torch.randn(1, 3, 32, 32)
    sigma = 1.0
    ref = gaussian_filter(x[0, 1].numpy().astype(np.float64), sigma, mode="mirror", truncate=3)
    np.testing.assert_allclose(blurred(x)[0, 1].numpy(), ref, atol=1e-5)


def test_random_reference_and_ties_are_seeded(setup):
    model, _, x3, maps, targets = setup
    flat = np.zeros_like(maps)  # all ties: the order is the fixed seeded one
    a = deletion_insertion(model, x3, flat, targets, n_steps=4, seed=3)
    b = deletion_insertion(model, x3, flat, targets, n_steps=4, seed=3, batch_size=7)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    ranks = pixel_ranks(maps, seed=0)
    assert (np.sort(ranks, axis=1) == np.arange(SIZE * SIZE)).all()
    assert (ranks.reshape(maps.shape)[maps == maps.max(axis=(1, 2), keepdims=True)] == 0).all()
    r1, r2 = pixel_ranks(maps, 0, random=True), pixel_ranks(maps, 1, random=True)
    assert not np.array_equal(r1, r2) and np.array_equal(r1, pixel_ranks(flat, 0, random=True))
    # the random reference does not depend on the maps, and can be left out
    c = deletion_insertion(model, x3, maps, targets, n_steps=4, seed=3, reference=False)
    d = deletion_insertion(model, x3, maps, targets, n_steps=4, seed=3)
    assert set(c) == {"deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"}
    for key in c:
        np.testing.assert_allclose(c[key], d[key], atol=1e-6)
    np.testing.assert_allclose(d["insertion_random_curve"], a["insertion_random_curve"], atol=1e-6)
    # endpoints do not depend on the order
    np.testing.assert_allclose(a["deletion_curve"][:, [0, -1]], a["deletion_random_curve"][:, [0, -1]], atol=1e-6)
    np.testing.assert_allclose(a["insertion_curve"][:, [0, -1]], a["insertion_random_curve"][:, [0, -1]], atol=1e-6)


def _pgc_road(model, x3, maps, targets, percentiles, noise):
    """pytorch-grad-cam's ROADCombined, with its imputer's noise set to ``noise``."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cam_targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets]
    if noise == 0.01:
        return ROADCombined(percentiles=list(percentiles))(x3, maps, cam_targets, model)

    def averaged(remove):
        return np.mean([PerturbationConfidenceMetric(remove(p, NoisyLinearImputer(noise=noise)))(
            x3, maps, cam_targets, model) for p in percentiles], axis=0)

    return (averaged(RemoveLeastRelevantFirst) - averaged(RemoveMostRelevantFirst)) / 2


def test_road_equals_pytorch_grad_cam(setup):
    model, _, x3, maps, targets = setup
    percentiles = (20, 40, 60, 80)
    ours = road(model, x3, maps, targets, percentiles=percentiles, noise=0.0, batch_size=9)
    np.testing.assert_allclose(ours, _pgc_road(model, x3, maps, targets, percentiles, 0.0), atol=1e-6)
    torch.manual_seed(0)
    with_noise = road(model, x3, maps, targets, percentiles=percentiles)  # default noise 0.01, seeded
    np.testing.assert_allclose(with_noise, _pgc_road(model, x3, maps, targets, percentiles, 0.01), atol=2e-4)
    np.testing.assert_array_equal(with_noise, road(model, x3, maps, targets, percentiles=percentiles))


def test_road_imputation_equals_quantus_and_its_classes_quantus_road(setup):
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation

    model, x1, x3, maps, targets = setup
    xs = x3.numpy()
    accuracy = []
    for p in (25, 50, 75):  # Quantus removes the top p %; pytorch-grad-cam (and we) keep cam < percentile(100 - p)
        keep = [road_keep_masks(m, 100 - p)[0] for m in maps]
        ours = np.stack([noisy_linear_impute(xs[i], keep[i], noise=0.0) for i in range(len(xs))])
        for i in range(len(xs)):
            top = np.argsort(-maps[i].ravel())[: SIZE * SIZE * p // 100]
            assert set(top) == set(np.flatnonzero(~keep[i]))
            ref = noisy_linear_imputation(xs[i], indices=top, noise=0.0)
            np.testing.assert_allclose(ours[i], ref, atol=1e-5)
        with torch.inference_mode():
            accuracy.append(float((model(torch.from_numpy(ours)).argmax(1).numpy() == targets).mean()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.ROAD(percentages=[25, 50, 75], noise=0.0, normalise=False, abs=False, disable_warnings=True)
        q(model=_Gray(model).eval(), x_batch=x1.numpy(), y_batch=targets, a_batch=maps[:, None], channel_first=True)
    assert [q.evaluation_scores[p] for p in (25, 50, 75)] == pytest.approx(accuracy)


def test_road_keep_masks_remove_the_top_and_bottom_shares():
    cam = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    morf, lerf = road_keep_masks(cam, 80)
    assert (~morf).sum() == 80 and (~lerf).sum() == 80
    assert cam[~morf].min() > cam[morf].max() and cam[~lerf].max() < cam[lerf].min()


def test_inputs_are_checked(setup):
    model, _, x3, maps, targets = setup
    with pytest.raises(ValueError, match="maps"):
        deletion_insertion(model, x3, maps[:, :8], targets)
    with pytest.raises(ValueError, match="targets"):
        road(model, x3, maps, targets[:2])
