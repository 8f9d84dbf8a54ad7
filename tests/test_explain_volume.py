"""Explanations in 3-D: localisation scores on a hand-made volume, the N-D helpers against their 2-D results, 3-D
Grad-CAM against a hand computation and pytorch-grad-cam, the online attention maps against engine.attention and
Grad-CAM, the registry's volumetric methods, and a tiny 3-D run's localisation table recomputed with numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.ndimage import gaussian_filter, zoom
from torch import nn

from engine.attention import attention_maps_of
from engine.errors import ConfigError
from engine.explain import METHODS, attribute
from engine.explain.consistency import consistency_degree, pointing_game, random_heatmap
from engine.explain.localisation import localisation_scores, mean_ci, pointing_hit_rate, relevance_mass
from engine.explain.methods import volume_methods
from engine.explain.volume import busiest_slice, default_point
from engine.explain.volume_cams import attention_maps, gradcam_volume
from engine.models.backbones import StagedNet, stage, torchvision_model


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (4, 5, 6) map, a lesion of 8 voxels (2 x 2 x 2) and a lung of 60 voxels holding it."""
    heat = np.zeros((4, 5, 6), np.float32)
    lesion = np.zeros(heat.shape, bool)
    lesion[1:3, 1:3, 1:3] = True
    lung = np.zeros(heat.shape, bool)
    lung[0:3, 0:4, 0:5] = True
    heat[1, 1, 1], heat[1, 1, 2], heat[2, 2, 2] = 0.9, 0.8, 0.75  # three lesion voxels above 0.7
    heat[1, 2, 1] = 0.7  # on the threshold: not support
    heat[3, 4, 5] = 0.95  # the peak, outside the lesion and the lungs
    heat[0, 0, 0] = 0.2
    return heat, lesion, lung


def test_scores_on_a_hand_made_volume():
    heat, lesion, lung = _case()
    assert consistency_degree(heat, lesion) == pytest.approx(3 / 8)
    assert consistency_degree(heat, lesion, 0.6) == pytest.approx(4 / 8)
    assert not pointing_game(heat, lesion) and pointing_hit_rate(heat, lesion) == 0.0
    heat2 = heat.copy()
    heat2[2, 1, 1] = 0.95  # a second maximum, inside the lesion: half of the tied peak voxels hit
    assert pointing_game(heat2, lesion) and pointing_hit_rate(heat2, lesion) == pytest.approx(0.5)
    total = 0.9 + 0.8 + 0.75 + 0.7 + 0.95 + 0.2
    assert relevance_mass(heat, lesion) == pytest.approx((0.9 + 0.8 + 0.75 + 0.7) / total)
    s = localisation_scores(heat, lesion, lung)
    # 4 support voxels (0.9, 0.8, 0.75, 0.95) spread uniformly over 60 lung voxels cover 4/60 of the lesion
    assert s["lung_area_matched_baseline"] == pytest.approx(4 / 60)
    assert s["lung_pointing_baseline"] == pytest.approx(8 / 60) == s["lung_relevance_mass_baseline"]
    assert s["support_area"] == pytest.approx(4 / heat.size)


def test_smooth_random_map_is_n_dimensional():
    shape = (6, 16, 16)
    noise = np.random.default_rng(3).random(shape)
    blurred = gaussian_filter(noise, sigma=1.0, mode="reflect", truncate=4.0)  # 1/16 of the longest side
    expected = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    np.testing.assert_allclose(random_heatmap(shape, 3), expected, atol=1e-6)


def test_a_2d_map_scores_the_same_as_a_one_slice_volume():
    rng = np.random.default_rng(1)
    heat = gaussian_filter(rng.random((24, 24)), 2)
    heat = ((heat - heat.min()) / (heat.max() - heat.min())).astype(np.float32)
    lesion = np.zeros((24, 24), bool)
    lesion[5:12, 8:16] = True
    lung = np.zeros_like(lesion)
    lung[2:20, 3:22] = True
    flat, vol = localisation_scores(heat, lesion, lung), localisation_scores(heat[None], lesion[None], lung[None])
    for key in ("consistency", "consistency_curve", "support_area", "iou", "dice", "iou_otsu", "pointing_game",
                "relevance_mass", "relevance_rank", "lung_area_matched_baseline", "lung_pointing_baseline"):
        np.testing.assert_allclose(vol[key], flat[key], err_msg=key)


def test_default_point_is_the_slice_row_and_column_with_most_lesion():
    lesion = np.zeros((5, 8, 8), bool)
    lesion[1, 2:4, 2:4] = True  # 4 voxels
    lesion[3, 4:7, 1:7] = True  # 18 voxels: slice 3; in it rows 4-6 tie (first: 4), columns 1-6 tie (first: 1)
    assert busiest_slice(lesion, 0) == 3 and default_point(lesion, lesion.shape) == (3, 4, 1)
    assert default_point(None, (5, 8, 8)) == (2, 4, 4) == default_point(np.zeros((5, 8, 8), bool), (5, 8, 8))


@pytest.fixture(scope="module")
def net3d() -> StagedNet:
    torch.manual_seed(1)
    model = stage(torchvision_model("resnet3d18"), "resnet3d18", 2).eval()
    with torch.no_grad():  # signed class weights, so that both classes have evidence somewhere (non-empty maps)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape))
    return model


@pytest.fixture(scope="module")
def volumes() -> torch.Tensor:
    """Two noisy volumes with a bright box each, in different places (so the maps vary in space)."""
    x = 0.2 * torch.rand(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    x[0, :, 2:8, 4:14, 4:14] += 1
    x[1, :, 8:14, 16:28, 18:30] += 1
    return x


def _hand_gradcam(model: nn.Module, module: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Grad-CAM by hand: gradients averaged over depth, height and width times the activations, summed over
    channels, ReLU; upsampled linearly by scipy and min-max scaled."""
    saved = {}
    hook = module.register_forward_hook(lambda _m, _i, out: saved.setdefault("a", out))
    out = []
    try:
        for i, t in enumerate(targets):
            saved.clear()
            logits = model(x[i : i + 1])
            a = saved["a"]
            (g,) = torch.autograd.grad(logits[0, t], a)
            a, g = a[0].detach().numpy(), g[0].numpy()
            cam = np.maximum((g.mean(axis=(1, 2, 3))[:, None, None, None] * a).sum(axis=0), 0)
            up = zoom(cam, np.array(x.shape[2:]) / np.array(cam.shape), order=1, mode="nearest", grid_mode=True)
            out.append((up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else np.zeros_like(up))
    finally:
        hook.remove()
    return np.stack(out)


def test_gradcam_volume_equals_a_hand_computation(net3d, volumes):
    module = net3d.blocks[4][-1]  # the default layer: the last residual unit of block 5
    for targets in ([0, 1], [1, 1]):
        expected = _hand_gradcam(net3d, module, volumes, targets)
        got = gradcam_volume(net3d, volumes, targets)
        assert got.shape == (2, 16, 32, 32) and expected.reshape(2, -1).max(axis=1) == pytest.approx([1.0, 1.0])
        np.testing.assert_allclose(got, expected, atol=1e-4)
    expected = _hand_gradcam(net3d, module, volumes, [0, 1])
    np.testing.assert_allclose(attribute(net3d, volumes, "gradcam", [0, 1]), expected, atol=1e-4)


def _full_resolution_net() -> StagedNet:
    """A tiny 3-D net staged like a ResNet whose feature maps keep the input's size (so no upsampling differs)."""
    torch.manual_seed(2)

    def unit() -> nn.Sequential:
        return nn.Sequential(nn.Sequential(nn.Conv3d(4, 4, 3, padding=1), nn.ReLU()))

    stem = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Identity())
    pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
    return StagedNet("resnet3d18", [stem, unit(), unit(), unit(), unit()], pool, nn.Linear(4, 3)).eval()


def test_gradcam_volume_agrees_with_pytorch_grad_cam():
    model = _full_resolution_net()
    x = torch.rand(3, 1, 6, 10, 12, generator=torch.Generator().manual_seed(3))
    for layer in ("blocks.4.0", "blocks.2.0"):
        module = model.get_submodule(layer)
        targets = [0, 2, 1]
        with GradCAM(model=model, target_layers=[module]) as cam:
            expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        got = gradcam_volume(model, x, targets, layer=layer)
        assert expected.shape == got.shape == (3, 6, 10, 12) and expected.max() > 0
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_attention_maps_are_engine_attention_and_grad_cam(net3d, volumes):
    cls = [1, 0]
    with torch.no_grad():
        expected = attention_maps_of(net3d, volumes, torch.tensor(cls)).numpy()
    np.testing.assert_allclose(attention_maps(net3d, volumes, cls), expected, atol=1e-5)
    raw = attention_maps(net3d, volumes, cls, raw=True)
    # eq. 2 applied to the raw map, and for a linear head on average pooling A is Grad-CAM of the last block
    np.testing.assert_allclose(1 / (1 + np.exp(-100 * (raw - 0.4))), expected, atol=1e-3)
    np.testing.assert_allclose(raw, gradcam_volume(net3d, volumes, cls), atol=1e-4)
    assert raw.min() == pytest.approx(0, abs=1e-6) and raw.max() == pytest.approx(1, abs=1e-6)


def test_registry_lists_the_volumetric_methods(net3d, volumes):
    assert volume_methods() == tuple(n for n, m in METHODS.items() if m.volumetric)
    assert volume_methods()[:2] == ("gradcam", "attention") and "saliency" not in volume_methods()
    for name in volume_methods():
        maps = attribute(net3d, volumes, name)
        assert maps.shape == (2, 16, 32, 32) and maps.dtype == np.float32 and 0 <= maps.min() <= maps.max() <= 1
    with pytest.raises(ConfigError, match="2-D images only"):
        attribute(net3d, volumes, "saliency")
    assert attribute(net3d, volumes[:0], "gradcam").shape == (0, 16, 32, 32)


def test_attention_on_a_multi_layer_head_is_trimmed_grad_cam():
    torch.manual_seed(0)
    model = stage(torchvision_model("alexnet"), "alexnet", 2, head_width=16).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    raw = attention_maps(model, x, [0, 1], raw=True)
    np.testing.assert_allclose(raw, attribute(model, x, "gradcam", [0, 1]), atol=1e-6)
    np.testing.assert_allclose(attention_maps(model, x, [0, 1]), 1 / (1 + np.exp(-100 * (raw - 0.4))), atol=1e-5)


def test_volume_localisation_of_a_tiny_run(trained_ct):
    import engine
    from engine.data.arrays import mask_arrays
    from engine.explain.volume import volume_localisation, volume_localisation_summary, volume_maps

    run = engine.get_run(trained_ct.configs()[-1])
    test = (run.predictions["split"] == "test").to_numpy()
    lesion, lung = (a[test] for a in mask_arrays(run.dataset(), run.config.image_size)[:2])
    table = volume_localisation(run, "gradcam")
    maps = volume_maps(run, "gradcam", range(int(test.sum())))
    assert maps.shape == (test.sum(), *run.images("test").shape[1:]) and len(table) == test.sum()
    for i, r in table.iterrows():
        if not lesion[i].any():
            assert np.isnan(r["consistency"])
            continue
        assert r["consistency"] == pytest.approx((maps[i][lesion[i]] > 0.7).mean())
        assert r["relevance_mass"] == pytest.approx(maps[i][lesion[i]].sum() / maps[i].sum(), rel=1e-5)
        assert r["infection_ratio"] == pytest.approx((lesion[i] & lung[i]).sum() / lung[i].sum())
        peak = maps[i] == maps[i].max()
        assert r["pointing_game"] == pytest.approx((peak & lesion[i]).sum() / peak.sum())
        assert r["label"] == run.classes[int(r["y"])] and r["file"] == run.predictions["file"][test].iloc[i]
    summary = volume_localisation_summary(table)
    mine = summary[(summary["score"] == "consistency") & (summary["who"] == "map")].iloc[0]
    assert mine["mean"] == pytest.approx(np.nanmean(table["consistency"]))
    assert (mine["low"], mine["high"]) == pytest.approx(mean_ci(table["consistency"])[1:])
    assert volume_localisation(run, "gradcam").equals(table)  # read back from the run's cache
    with pytest.raises(ConfigError, match="2-D images only"):
        volume_localisation(run, "saliency")
