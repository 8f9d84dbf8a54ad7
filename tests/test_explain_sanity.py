"""Cascading randomisation separates an edge detector (ignores the weights) from Grad-CAM on a small trained CNN."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.filters import sobel
from skimage.metrics import structural_similarity
from torch import nn

from engine.explain.consistency import random_heatmap
from engine.explain.sanity import (SANITY_SPEARMAN_LIMIT, SANITY_SSIM_LIMIT, cascade_layers, cascading_randomisation,
                                   map_similarity, sanity_verdict)
from engine.models.backbones import StagedNet

SIZE = 32


def _toy_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright square top-left (class 0) or bottom-right (class 1), gray replicated to 3 channels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, SIZE, SIZE)).astype(np.float32)
    y = np.arange(n) % 2
    for i, c in enumerate(y):
        r, q = rng.integers(2, 8, 2) + (16 if c else 0)
        x[i, r : r + 8, q : q + 8] += 2.0
    return torch.from_numpy(x)[:, None].repeat(1, 3, 1, 1), torch.from_numpy(y)


@pytest.fixture(scope="module")
def trained():
    """A five-block StagedNet trained for a few steps until it separates the two classes."""
    torch.manual_seed(0)

    def block(cin, cout, pool):
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

    blocks = [block(3, 8, False), block(8, 8, True), block(8, 16, False), block(16, 16, True), block(16, 16, False)]
    model = StagedNet("toy", blocks, nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(1)), nn.Linear(64, 2))
    x, y = _toy_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    return model, x[:8], y[:8].numpy()


def gradcam_explain(model: nn.Module, x: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's GradCAM on the ReLU after the last convolution."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[model.blocks[4][1]]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def edge_explain(model: nn.Module, x: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Sobel edge magnitude of the input, scaled to [0, 1]: ignores the model entirely."""
    maps = np.stack([sobel(img) for img in x[:, 0].numpy()])
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def test_cascade_layers_of_a_stagednet(trained):
    model = trained[0]
    steps = cascade_layers(model)
    assert [name for name, _ in steps] == ["head", "block 5", "block 4", "block 3", "block 2", "block 1"]
    assert steps[0][1][0] is model.classifier and steps[1][1][0] is model.blocks[4]
    assert steps[-1][1][0] is model.blocks[0]
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    assert [name for name, _ in cascade_layers(plain)] == ["3", "0"]


def test_edge_detector_fails_and_gradcam_passes(trained):
    model, x, y = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edge = cascading_randomisation(model, x, y, edge_explain)
    cam = cascading_randomisation(model, x, y, gradcam_explain, seed=1)
    assert list(edge["layer"]) == ["original", "head", "block 5", "block 4", "block 3", "block 2", "block 1"]
    assert (edge["n_images"] == 8).all() and list(edge["step"]) == list(range(7))
    assert (edge["ssim"] == 1).all() and (edge["spearman"] == 1).all()
    assert cam.loc[0, "ssim"] == 1 and cam.loc[0, "spearman"] == 1
    verdict_edge, verdict_cam = sanity_verdict(edge), sanity_verdict(cam)
    assert verdict_edge == {"sanity_ssim": 1.0, "sanity_spearman": 1.0, "sanity_pass": False}
    assert verdict_cam["sanity_pass"], cam
    assert verdict_cam["sanity_ssim"] == cam["ssim"].iloc[-1] < SANITY_SSIM_LIMIT
    assert abs(verdict_cam["sanity_spearman"]) < SANITY_SPEARMAN_LIMIT
    assert not cam[["spearman", "ssim", "constant_share"]].isna().any().any()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's model is untouched


def test_randomisation_is_seeded_and_cumulative(trained):
    model, x, y = trained
    seen = []

    def record(m, xb, t):  # a cheap map that depends on the weights: block 1's mean activation
        seen.append([p.detach().clone() for p in m.parameters()])
        with torch.no_grad():
            a = m.blocks[0](xb).mean(1).numpy()
        return a / a.max(axis=(1, 2), keepdims=True)

    a = cascading_randomisation(model, x, y, record, seed=5)
    first = seen[:]
    seen.clear()
    b = cascading_randomisation(model, x, y, record, seed=5)
    assert a.equals(b)
    assert all(torch.equal(p, q) for s, t in zip(first, seen) for p, q in zip(s, t))
    # the head's parameters are the last two; after step 1 they differ from the original and stay so
    original_head = first[0][-1]
    assert all(not torch.equal(step[-1], original_head) for step in first[1:])
    # block 1's parameters (the first two) change only at the last step
    assert all(torch.equal(step[0], first[0][0]) for step in first[:-1]) and not torch.equal(first[-1][0], first[0][0])


def test_map_similarity_matches_scipy_and_skimage_and_handles_constant_maps():
    a, b = random_heatmap((24, 24), 0), random_heatmap((24, 24), 1)
    rho, ssim = map_similarity(a, b)
    assert rho == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    assert ssim == pytest.approx(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0))
    zero = np.zeros_like(a)
    assert map_similarity(zero, zero) == (1.0, 1.0)
    rho0, ssim0 = map_similarity(a, zero)
    assert rho0 == 0.0 and np.isfinite(ssim0) and ssim0 < SANITY_SSIM_LIMIT


def test_maps_that_become_empty_are_counted_not_nan(trained):
    model, x, y = trained
    calls = []

    def vanishing(m, xb, t):
        calls.append(1)
        if len(calls) == 1:
            return np.stack([random_heatmap((SIZE, SIZE), i) for i in range(len(xb))])
        return np.zeros((len(xb), SIZE, SIZE), np.float32)

    table = cascading_randomisation(model, x, y, vanishing)
    assert table.loc[0, "constant_share"] == 0 and (table.loc[1:, "constant_share"] == 1).all()
    assert (table.loc[1:, "spearman"] == 0).all() and not table["ssim"].isna().any()
    assert sanity_verdict(table)["sanity_pass"]
    # a method that is always blank never changes: it fails
    blank = cascading_randomisation(model, x, y, lambda m, xb, t: np.zeros((len(xb), SIZE, SIZE), np.float32))
    assert not sanity_verdict(blank)["sanity_pass"] and (blank["constant_share"] == 1).all()


def test_explain_must_return_one_map_per_image(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="one \\(H, W\\) map per image"):
        cascading_randomisation(model, x, y, lambda m, xb, t: np.zeros((1, SIZE, SIZE)))
