"""Grad-CAM against Wan et al.'s equations 7-9, Guided Grad-CAM, occlusion, and the single-image entry points."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from engine.data.transforms import to_model_input
from engine.errors import ConfigError
from engine.explain import (cam_layer, explain_image, gradcam, guided_gradcam, heatmaps, normalise_maps,
                            occlusion_map, write_overlay)
from engine.models.backbones import StagedNet, cam_layers, stage

SIZE = 64


@pytest.fixture(scope="module")
def model() -> StagedNet:
    torch.manual_seed(3)
    return stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3, head_width=16).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE)).astype(np.uint8)


def wan_gradcam(model: nn.Module, x: torch.Tensor, target: list[int], layer: nn.Module) -> np.ndarray:
    """Eqs. 7-9 by hand: alpha_k^c = spatial mean of dy^c/dA^k, L^c = ReLU(sum_k alpha_k^c A^k), scaled to [0, 1]
    (min-max, as pytorch-grad-cam does), upsampled bilinearly and scaled to [0, 1] again."""
    saved = {}
    hook = layer.register_forward_hook(lambda _m, _i, out: saved.setdefault("A", out))
    try:
        logits = model(x)
    finally:
        hook.remove()
    A = saved["A"]
    (dA,) = torch.autograd.grad(logits[torch.arange(len(x)), target].sum(), A)
    alpha = dA.mean(dim=(2, 3), keepdim=True)  # eq. 7
    cam = torch.relu((alpha * A).sum(dim=1)).detach().numpy()  # eqs. 8-9
    out = []
    for m in cam:
        m = (m - m.min()) / (1e-7 + m.max() - m.min())
        up = cv2.resize(m, (x.shape[-1], x.shape[-2]), interpolation=cv2.INTER_LINEAR)  # bilinear, pixel centres
        out.append((up - up.min()) / (1e-7 + up.max() - up.min()))
    return np.stack(out)


@pytest.mark.parametrize("which", [None, 2])
def test_gradcam_equals_wans_equations(model, images, which):
    x = to_model_input(images)
    layer, _, conv = cam_layer(model) if which is None else cam_layers(model)[which]
    layer = None if which is None else layer
    target = [0, 1, 2, 0, 1, 2]
    expected = wan_gradcam(model, x, target, conv)
    assert (expected.reshape(6, -1).max(1) > 0).sum() >= 4  # the comparison is not between empty maps
    got = gradcam(model, x, target, layer=layer, batch_size=4)  # two batches, the second one partial
    assert got.shape == (6, SIZE, SIZE) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_gradcam_targets_default_to_the_prediction_and_broadcast(model, images):
    x = to_model_input(images)
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    np.testing.assert_allclose(gradcam(model, x), wan_gradcam(model, x, pred, cam_layer(model)[2]), atol=2e-5)
    np.testing.assert_array_equal(gradcam(model, x, 2), gradcam(model, x, [2] * 6))
    frozen = copy.deepcopy(model).requires_grad_(False)  # e.g. blocks frozen by the fine-tuning depth
    np.testing.assert_allclose(gradcam(frozen, x), gradcam(model, x), atol=1e-6)
    with pytest.raises(ValueError, match="one per image"):
        gradcam(model, x, [0, 1])
    with pytest.raises(ConfigError, match="not a CAM layer"):
        gradcam(model, x, layer="classifier.1")


def test_normalise_maps_scales_each_map_and_keeps_zero_maps():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 1, 1], maps[0, 2, 2] = 2.0, 1.0
    maps[2] = np.arange(16).reshape(4, 4)
    out = normalise_maps(maps)
    np.testing.assert_array_equal(out[0][maps[0] > 0], [1.0, 0.5])
    assert not out[1].any()
    np.testing.assert_allclose(out[2], maps[2] / 15)
    clipped = normalise_maps(maps[2:], percentile=50)  # median of the positive values 1..15 is 8
    np.testing.assert_allclose(clipped[0], np.minimum(maps[2] / 8, 1))


def test_guided_gradcam_is_zero_where_gradcam_is_zero(model, images):
    x = to_model_input(images)
    cam, guided = gradcam(model, x, 1), guided_gradcam(model, x, 1)
    assert guided.shape == (6, SIZE, SIZE) and 0 <= guided.min() and guided.max() == 1.0
    assert (cam == 0).any() and not guided[cam == 0].any()  # guided backprop x the upsampled Grad-CAM
    assert (guided > 0).any()


class TopLeft(nn.Module):
    """Zeroes all but the top-left quadrant of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(x)
        keep[..., : x.shape[-2] // 2, : x.shape[-1] // 2] = 1
        return x * keep


def quadrant_model() -> StagedNet:
    """A net that only sees the top-left quadrant; class 0's logit grows with the (positive) input there."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
        head.bias.zero_()
    return StagedNet("quadrant", [nn.Sequential(TopLeft(), conv, nn.ReLU())], nn.Sequential(nn.AdaptiveAvgPool2d(1),
                     nn.Flatten(1)), head).eval()


def test_occlusion_lights_up_the_only_quadrant_the_model_sees():
    x = torch.rand(2, 3, SIZE, SIZE) + 0.5
    maps = occlusion_map(quadrant_model(), x, 0, window=8, stride=4)
    assert maps.shape == (2, SIZE, SIZE) and maps.max() == 1.0
    half = SIZE // 2
    assert (maps[:, :half, :half] > 0).all()
    # beyond one window from the quadrant no occluded patch touches what the model sees
    assert not maps[:, half + 8 :, :].any() and not maps[:, :, half + 8 :].any()


def test_explain_image_probabilities_and_overlay_file(model, images, tmp_path):
    classes = ("covid", "non_covid", "normal")
    with torch.no_grad():
        expected = torch.softmax(model(to_model_input(images[:1])), 1)[0].numpy()
    result = explain_image(model, images[0], classes, "gradcam", target="normal")
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, rtol=1e-5)
    assert result["predicted"] == classes[int(expected.argmax())] and result["target"] == "normal"
    np.testing.assert_array_equal(result["heatmap"], heatmaps(model, images[:1], "gradcam", 2)[0])
    with pytest.raises(ConfigError, match="Unknown class"):
        explain_image(model, images[0], classes, "gradcam", target="flu")
    with pytest.raises(ConfigError, match="Unknown explanation method"):
        explain_image(model, images[0], classes, "no-such-method")

    out = tmp_path / "overlay.png"
    write_overlay(model, images[0], "occlusion", out, classes=classes, alpha=0.4)
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written.shape == (SIZE, SIZE, 3)
    with pytest.raises(ConfigError, match=".png suffix"):
        write_overlay(model, images[0], "gradcam", tmp_path / "overlay.xyz", classes=classes)
