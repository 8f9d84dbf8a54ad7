"""3-D CT runs in the engine behind Features and Layers: the 3-D kernels' sections, activation maps and guided
backpropagation on one axial slice, the LBP refusal, the baselines without LBP, and prepare's skips with reasons."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine
from engine.baselines import compare_methods, run_deep_features
from engine.data.arrays import mask_arrays
from engine.layers import (
    case_slice,
    depth_slice,
    filter_sections,
    layer_choices,
    run_activation_maps,
    run_filter_grid,
    run_guided_backprop,
)
from engine.lbp import LBP_VOLUME_REASON, lbp_histograms, lbp_refusal
from engine.projections import run_feature_sets, run_projection


@pytest.fixture(scope="module")
def run(trained_ct) -> engine.Run:
    """The tiny 3-D run at depth 2."""
    return engine.get_run(trained_ct.configs()[-1])


def _kernels(run: engine.Run) -> np.ndarray:
    """The trained stem's (n, k, k, k) weights, each min-max scaled over its k^3 values, by hand."""
    w = run.load_model().blocks[0][0].weight.detach().numpy()[:, 0].astype(np.float64)
    lo, hi = w.min(axis=(1, 2, 3), keepdims=True), w.max(axis=(1, 2, 3), keepdims=True)
    return (w - lo) / (hi - lo)


def test_filter_sections_are_the_kernels_central_slices(run):
    filters = run_filter_grid(run, "after")
    by_hand = _kernels(run)
    n, k = by_hand.shape[:2]
    assert filters.shape == (n, k, k, k) == (64, 7, 7, 7)
    np.testing.assert_allclose(filter_sections(filters, "axial"), by_hand[:, 3], atol=1e-6)
    np.testing.assert_allclose(filter_sections(filters, "coronal"), by_hand[:, :, 3], atol=1e-6)
    np.testing.assert_allclose(filter_sections(filters, "sagittal"), by_hand[:, :, :, 3], atol=1e-6)
    every = filter_sections(filters, "all")
    assert every.shape == (n, k, 3 * k + 2)
    np.testing.assert_allclose(every[:, :, k + 1 : 2 * k + 1], by_hand[:, :, 3], atol=1e-6)
    assert np.all(every[:, :, k] == 1.0) and np.all(every[:, :, 2 * k + 1] == 1.0)
    with pytest.raises(engine.ConfigError, match="Unknown filter section"):
        filter_sections(filters, "oblique")


def test_layer_names_of_the_3d_resnet(run):
    labels = [label for _, label in layer_choices(run.load_model())]
    assert labels[0] == "stem conv1 (block 1)"
    assert "layer2 unit 1 · shortcut conv (block 3)" in labels and labels[-1] == "layer4 unit 2 · conv2 (block 5)"
    assert len(labels) == 20  # stem + 4 stages x 2 units x 2 convs + 3 shortcut convs


def test_depth_slice_is_a_slice_of_trilinear_upsampling():
    maps = np.random.default_rng(0).random((3, 4, 5, 6), dtype=np.float32)
    up = F.interpolate(torch.from_numpy(maps)[None], size=(16, 5, 6), mode="trilinear", align_corners=False)[0]
    for z in (0, 1, 7, 15):
        np.testing.assert_allclose(depth_slice(maps, z, 16), up[:, z].numpy(), atol=1e-6)


def test_case_slice_is_the_slice_with_most_lesion(run):
    lesion = mask_arrays(run.dataset(), run.config.image_size)[0]
    for row in range(len(lesion)):
        counts = lesion[row].sum(axis=(1, 2))
        assert case_slice(run, row) == (int(np.argmax(counts)) if counts.any() else lesion.shape[1] // 2)


def test_activation_maps_on_one_axial_slice(run):
    model = run.load_model()
    volume = run.images()[:1]
    layer = "blocks.2.1.conv2"
    captured = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: captured.append(o))
    with torch.no_grad():
        model(torch.from_numpy(volume.astype(np.float32) / 255.0)[:, None])
    handle.remove()
    out = captured[0][0]  # (C, d, h, w)
    depth = volume.shape[1]
    z = 5
    up = F.interpolate(out[None], size=(depth, *out.shape[2:]), mode="trilinear", align_corners=False)[0][:, z]
    order = torch.argsort(up.mean(dim=(1, 2)), descending=True, stable=True)
    expected = up[order].numpy()
    lo, hi = expected.min(axis=(1, 2), keepdims=True), expected.max(axis=(1, 2), keepdims=True)
    maps, channels = run_activation_maps(run, 0, layer, z)
    assert maps.shape == (out.shape[0], *out.shape[2:]) == (128, volume.shape[2] // 8, volume.shape[3] // 8)
    assert channels == order.tolist()
    np.testing.assert_allclose(maps, (expected - lo) / (hi - lo), atol=1e-5)


def test_guided_backprop_on_the_case_slice(run):
    recon, channels = run_guided_backprop(run, 0, "blocks.1.1.conv2", 4, "top", 0)
    size = run.config.image_size
    assert recon.shape == (4, size, size, 3) and len(set(channels)) == 4
    assert np.array_equal(recon[..., 0], recon[..., 2])  # one input channel: drawn gray
    assert (np.abs(recon - 0.5) > 0.01).any()  # the neuron sits on this slice: its gradient is not all zero


def test_lbp_refused_for_volumes_and_left_out_of_table_1(run):
    assert lbp_refusal(run) == LBP_VOLUME_REASON and "3-D" in LBP_VOLUME_REASON
    assert run_feature_sets(run) == ("deep",)
    with pytest.raises(engine.ConfigError, match="LBP does not apply to 3-D CT volumes"):
        lbp_histograms(run.images()[:2])
    with pytest.raises(engine.ConfigError, match="LBP does not apply to 3-D CT volumes"):
        run_projection(run, "lbp", "pca", 2)
    table = compare_methods(run, n_boot=50)
    assert table["method"].tolist() == ["Deep features + SVM", "Fine-tuned CNN"]
    assert table.attrs["note"] == LBP_VOLUME_REASON


def test_deep_features_of_volumes_are_the_pooled_last_stage(run):
    feats = run_deep_features(run)
    model = run.load_model()
    test = run.images("test")
    with torch.no_grad():
        x = torch.from_numpy(test.astype(np.float32) / 255.0)[:, None]
        for block in model.blocks:
            x = block(x)
        by_hand = x.mean(dim=(2, 3, 4)).numpy()
    assert feats["test"].shape == (len(test), 512)
    np.testing.assert_allclose(feats["test"], by_hand, rtol=1e-4, atol=1e-5)


def test_prepare_skips_what_does_not_apply_with_reasons(run):
    from engine.prepare import PrepareSettings, prepare_runs

    settings = PrepareSettings(projections=(("pca", 2),))
    result = prepare_runs([run], steps=["baselines", "projections", "image", "ood"], settings=settings)
    notes = {s.name: s.notes for s in result.steps}
    assert notes["baselines"] == notes["projections"] == ("depth 2: " + LBP_VOLUME_REASON,)
    image_note = "depth 2: Explain an image (every method) takes 2-D images and does not apply to 3-D CT volumes"
    assert notes["image"] == (image_note,)
    assert len(notes["ood"]) == 1 and "Diagnose a new image" in notes["ood"][0]
    assert run_projection(run, "deep", "pca", 2).shape == (len(run.predictions), 8)
