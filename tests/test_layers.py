"""First-layer filters, guided backpropagation (against Captum called directly), activation maps and the cached
per-run wrappers."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from captum.attr import NeuronGuidedBackprop
from torch import nn

from engine.config import RunConfig
from engine.data.transforms import to_model_input
from engine.errors import ConfigError, LungLensError
from engine.layers import (
    activation_maps,
    activation_overlays,
    block_output_layers,
    filter_difference,
    filter_grid,
    first_layer_weights,
    gradient_images,
    guided_backprop_across_layers,
    guided_backprop_neurons,
    layer_choices,
    run_activation_maps,
    run_filter_grid,
    run_guided_backprop,
    run_guided_backprop_across_layers,
    run_layer_choices,
    sample_rows,
    upsample,
)
from engine.models.backbones import StagedNet, stage

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

ALEXNET_CONVS = ["blocks.0.0", "blocks.1.3", "blocks.2.6", "blocks.3.8", "blocks.4.10"]


def _alexnet(seed: int = 0) -> StagedNet:
    torch.manual_seed(seed)
    return stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3, head_width=16).eval()


@pytest.fixture(scope="module")
def model() -> StagedNet:
    return _alexnet()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return to_model_input(rng.integers(0, 256, size=(8, 64, 64), dtype=np.uint8))


def _scale(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def _stretched(g: np.ndarray) -> np.ndarray:
    """Gradients drawn around mid-grey: 0 -> 0.5, +/- the 99th percentile of the non-zero |g| -> 1 / 0, clipped."""
    top = np.percentile(np.abs(g[g != 0]), 99)
    return np.clip(0.5 + 0.5 * g / top, 0, 1)


def _captum(model: nn.Module, conv: nn.Module, x: torch.Tensor, channel: int) -> np.ndarray:
    """Captum's NeuronGuidedBackprop of ``channel`` at its most activated position, as (H, W, 3)."""
    with torch.no_grad():
        out = {}
        handle = conv.register_forward_hook(lambda m, i, o: out.setdefault("o", o))
        model(x)
        handle.remove()
    fmap = out["o"][0, channel]
    i, j = np.unravel_index(int(fmap.argmax()), tuple(fmap.shape))
    attr = NeuronGuidedBackprop(model, conv).attribute(x.clone().requires_grad_(True), (channel, int(i), int(j)))
    return attr[0].permute(1, 2, 0).detach().numpy()


# ---- filters ---------------------------------------------------------------------------------------------------

#: ImageNet's channel stds, which the model input is normalised by (torchvision's documented values).
CHANNEL_STD = np.array([0.229, 0.224, 0.225])


def _gray_filters(weight: np.ndarray) -> np.ndarray:
    """(n, 3, k, k) RGB filters as they act on a gray image copied into 3 normalised channels: sum_c w_c / std_c."""
    return (weight.astype(np.float64) / CHANNEL_STD[None, :, None, None]).sum(axis=1)


@pytest.mark.parametrize(("arch", "k", "first_conv"), [
    ("alexnet", 11, lambda tv: tv.features[0]),
    ("vgg16", 3, lambda tv: tv.features[0]),
    ("resnet18", 7, lambda tv: tv.conv1),
    ("densenet121", 7, lambda tv: tv.features.conv0),
])
def test_filter_grid_per_backbone(arch: str, k: int, first_conv) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.get_model(arch, weights=None)
    weights = first_conv(tv).weight.detach().numpy().copy()
    staged = stage(tv, arch, 3)
    grid = filter_grid(staged)
    assert grid.shape == (64, k, k)  # gray: the input is a gray image in all three channels
    rgb = filter_grid(staged, gray_input=False)
    assert rgb.shape == (64, k, k, 3)
    gray = _gray_filters(weights)
    for f in (0, 17, 63):
        np.testing.assert_allclose(grid[f], _scale(gray[f]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rgb[f], _scale(weights[f].transpose(1, 2, 0)), rtol=1e-5, atol=1e-6)


def test_gray_filter_of_a_hand_made_conv_is_the_std_weighted_channel_sum() -> None:
    conv = nn.Conv2d(3, 2, kernel_size=2, bias=False)
    with torch.no_grad():
        # Filter 0: each channel is std_c times [[1, 2], [3, 4]], so the gray filter is 3 * [[1, 2], [3, 4]].
        conv.weight[0] = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]) * torch.tensor(CHANNEL_STD).view(3, 1, 1)
        # Filter 1: red +std_r, green -std_g, blue 0 everywhere but the corner: gray = [[0, 0], [0, 5]].
        conv.weight[1, 0] = CHANNEL_STD[0]
        conv.weight[1, 1] = -CHANNEL_STD[1]
        conv.weight[1, 2] = torch.tensor([[0.0, 0.0], [0.0, 5.0 * CHANNEL_STD[2]]])
    net = nn.Sequential(conv)
    np.testing.assert_allclose(first_layer_weights(net), [[[3, 6], [9, 12]], [[0, 0], [0, 5]]], atol=1e-6)
    grid = filter_grid(net)
    np.testing.assert_allclose(grid[0], [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)  # (3x - 3) / 9
    np.testing.assert_allclose(grid[1], [[0, 0], [0, 1]], atol=1e-6)
    # The model really computes that filter on a gray image: normalise g per channel, convolve, compare.
    g = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    x = (g.repeat(1, 3, 1, 1) - mean) / torch.tensor(CHANNEL_STD).view(1, 3, 1, 1)
    out = torch.nn.functional.conv2d(x, conv.weight.double())
    gray_out = torch.nn.functional.conv2d(g, torch.from_numpy(first_layer_weights(net)).double().unsqueeze(1))
    constant = out - gray_out  # the normalisation's mean only adds a constant per filter
    torch.testing.assert_close(constant, constant[..., :1, :1].expand_as(constant), atol=1e-5, rtol=0)


def test_one_channel_first_layer_is_its_own_gray_filter() -> None:
    conv = nn.Conv2d(1, 2, kernel_size=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [0.0, 3.0]]], [[[2.0, 2.0], [2.0, 2.0]]]]))
    grid = filter_grid(nn.Sequential(conv))
    np.testing.assert_allclose(grid[0], [[0.5, 0], [0.25, 1]], atol=1e-6)  # (w + 1) / 4
    np.testing.assert_array_equal(grid[1], 0.5)  # a constant filter is mid-grey
    with pytest.raises(ConfigError, match="2 input channels"):
        filter_grid(nn.Sequential(nn.Conv2d(2, 1, 1)))


def test_filter_difference_is_symmetric_around_mid_grey(model: StagedNet) -> None:
    after = copy.deepcopy(model)
    with torch.no_grad():
        after.blocks[0][0].weight[5] += 0.2 * torch.tensor(CHANNEL_STD, dtype=torch.float32).view(3, 1, 1)
        after.blocks[0][0].weight[9, 0, 0, 0] -= 0.4 * CHANNEL_STD[0]
    diff = filter_difference(model, after)
    assert diff.shape == (64, 11, 11)
    # Gray changes: +0.2 * 3 = 0.6 on every pixel of filter 5, -0.4 on one pixel of filter 9; largest 0.6.
    np.testing.assert_allclose(diff[5], 1.0, atol=1e-5)
    assert diff[9, 0, 0] == pytest.approx(0.5 - 0.5 * 0.4 / 0.6, abs=1e-5)
    untouched = np.delete(diff, [5, 9], axis=0)
    np.testing.assert_allclose(untouched, 0.5)
    np.testing.assert_array_equal(filter_difference(model, model), 0.5)  # a frozen first layer: all grey


# ---- layer names -----------------------------------------------------------------------------------------------

def test_layer_choices_are_human_names_and_block_outputs(model: StagedNet) -> None:
    assert layer_choices(model) == [(n, f"conv{b + 1} (block {b + 1})") for b, n in enumerate(ALEXNET_CONVS)]
    assert block_output_layers(model) == ALEXNET_CONVS
    torch.manual_seed(0)
    resnet = stage(torchvision.models.get_model("resnet18", weights=None), "resnet18", 3)
    labels = dict(layer_choices(resnet))
    assert labels["blocks.0.0"] == "stem conv1 (block 1)"  # torchvision's conv1 and layer2[0].conv1 / downsample
    assert labels["blocks.2.0.conv1"] == "layer2 unit 1 · conv1 (block 3)"
    assert labels["blocks.2.0.downsample.0"] == "layer2 unit 1 · shortcut conv (block 3)"
    assert block_output_layers(resnet)[-1] == "blocks.4.1.conv2"
    dense = dict(layer_choices(stage(torchvision.models.get_model("densenet121", weights=None), "densenet121", 3)))
    assert dense["blocks.1.0.denselayer3.conv2"] == "dense block 1 · layer 3 · conv2 (block 2)"
    assert dense["blocks.3.1.conv"] == "transition 3 (block 4)"
    assert not any("blocks." in label for label in [*labels.values(), *dense.values()])


def test_gradient_images_stretch_around_mid_grey_by_hand() -> None:
    g = np.zeros((1, 3, 2, 2))
    g[0, 0, 0, 0], g[0, 1, 1, 1] = 2.0, -4.0  # non-zero |g|: 2 and 4; 99th percentile 2 + 0.99 * 2 = 3.98
    image = gradient_images(g)
    assert image.shape == (1, 2, 2, 3)
    assert image[0, 0, 0, 0] == pytest.approx(0.5 + 0.5 * 2 / 3.98)
    assert image[0, 1, 1, 1] == 0.0  # beyond the percentile: clipped to black
    assert np.count_nonzero(image == 0.5) == 10  # zero gradient is mid-grey
    gray = gradient_images(g, grayscale=True)  # channel means 2/3 and -4/3: percentile 2/3 + 0.99 * 2/3
    assert gray[0, 0, 0] == pytest.approx([0.5 + 0.5 / 1.99] * 3) and gray[0, 1, 1] == pytest.approx([0.0] * 3)
    np.testing.assert_array_equal(gradient_images(np.zeros((2, 3, 4, 4))), 0.5)


# ---- guided backpropagation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_name", ["blocks.0.0", "blocks.2.6"])
def test_guided_backprop_equals_captum_on_the_top_channels(model: StagedNet, images: torch.Tensor,
                                                           layer_name: str) -> None:
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))  # Captum's hooks need this
    x = images[:1]
    maps, channels = guided_backprop_neurons(model, x, layer_name, n=8)
    block = int(layer_name.split(".")[1])
    with torch.no_grad():
        conv_out = model.blocks[block][0](model.forward_blocks(x, 0, block))[0]
    assert channels == conv_out.mean(dim=(1, 2)).argsort(descending=True)[:8].tolist()
    assert maps.shape == (8, 64, 64, 3)
    conv = model.blocks[block][0]
    for k in (0, 7):
        reference = _captum(model, conv, x, channels[k])
        np.testing.assert_allclose(maps[k], _stretched(reference), atol=1e-5)
    gray, _ = guided_backprop_neurons(model, x, layer_name, n=8, grayscale=True)
    reference_gray = _stretched(_captum(model, conv, x, channels[3]).mean(axis=-1))
    np.testing.assert_allclose(gray[3], np.repeat(reference_gray[..., None], 3, axis=-1), atol=1e-5)


def test_guided_backprop_random_channels_are_seeded(model: StagedNet, images: torch.Tensor) -> None:
    _, a = guided_backprop_neurons(model, images[:1], "blocks.1.3", n=8, mode="random", seed=1)
    _, b = guided_backprop_neurons(model, images[:1], "blocks.1.3", n=8, mode="random", seed=1)
    _, c = guided_backprop_neurons(model, images[:1], "blocks.1.3", n=8, mode="random", seed=2)
    assert a == b and len(set(a)) == 8 and all(0 <= ch < 192 for ch in a) and a != c


def test_guided_backprop_rejects_bad_layer_and_training_mode(images: torch.Tensor) -> None:
    model = _alexnet()
    with pytest.raises(ConfigError, match="layer_choices"):
        guided_backprop_neurons(model, images[:1], "classifier.1")
    model.train()
    with pytest.raises(ConfigError, match="eval mode"):
        guided_backprop_neurons(model, images[:1], "blocks.0.0")


def test_guided_backprop_across_layers(model: StagedNet, images: torch.Tensor) -> None:
    maps, channels = guided_backprop_across_layers(model, images)
    assert maps.shape == (5, 8, 64, 64, 3) and len(channels) == 5
    with torch.no_grad():
        conv5 = model.blocks[4][0](model.forward_blocks(images, 0, 4))
    assert channels[4] == int(conv5.mean(dim=(0, 2, 3)).argmax())
    for b in (0, 6):
        reference = _captum(model, model.blocks[4][0], images[b : b + 1], channels[4])
        np.testing.assert_allclose(maps[4, b], _stretched(reference), atol=1e-5)


# ---- activation maps -------------------------------------------------------------------------------------------

def test_activation_maps_equal_the_conv_output(model: StagedNet, images: torch.Tensor) -> None:
    x = images[:1]
    maps, channels = activation_maps(model, x, "blocks.1.3")
    with torch.no_grad():
        conv2 = model.blocks[1][0](model.blocks[0](x))[0].numpy()
    assert maps.shape == conv2.shape == (192, 7, 7)
    assert channels == np.argsort(-conv2.mean(axis=(1, 2)), kind="stable").tolist()
    for k in (0, 100, 191):
        np.testing.assert_allclose(maps[k], _scale(conv2[channels[k]]), atol=1e-6)


def test_upsample_is_bilinear_with_aligned_pixel_centres_by_hand() -> None:
    up = upsample(np.array([[[0.0, 1.0], [2.0, 3.0]]]), (4, 4))
    # Output pixel i samples input coordinate (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped at the edges).
    row = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up[0], row[None, :] + 2 * row[:, None], atol=1e-6)
    x = torch.rand(1, 3, 5, 7)
    reference = torch.nn.functional.interpolate(x, size=(20, 21), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(upsample(x[0].numpy(), (20, 21)), reference.numpy(), atol=1e-5)


def test_activation_overlays_blend_jet_on_the_gray_image_by_hand() -> None:
    image = np.full((6, 8), 100, np.uint8)
    maps = np.stack([np.ones((3, 4)), np.zeros((3, 4))])
    out = activation_overlays(image, maps, alpha=0.5)
    assert out.shape == (2, 6, 8, 3) and out.dtype == np.uint8
    # Jet's ends are dark red (128, 0, 0) and dark blue (0, 0, 128): half of each over gray 100.
    np.testing.assert_array_equal(out[0], np.broadcast_to([114, 50, 50], (6, 8, 3)))
    np.testing.assert_array_equal(out[1], np.broadcast_to([50, 50, 114], (6, 8, 3)))


def test_sample_rows_draws_seeded_rows_of_one_split_and_class() -> None:
    preds = pd.DataFrame({"split": ["test"] * 6 + ["train"] * 4, "y": [0, 1, 0, 0, 2, 0, 0, 0, 1, 1]})
    covid_test = [0, 2, 3, 5]  # by hand: the test rows whose class is 0
    rows = sample_rows(preds, "test", 0, 3, seed=7)
    assert rows == sorted(np.random.default_rng(7).choice(covid_test, size=3, replace=False).tolist())
    assert len(set(rows)) == 3 and set(rows) <= set(covid_test)
    assert sample_rows(preds, "test", 0, 8, seed=0) == covid_test
    assert sample_rows(preds, "val", 0, 8, seed=0) == []


# ---- cached wrappers on a stand-in run -------------------------------------------------------------------------

@dataclass
class FakeRun:
    """The attributes of engine.runs.Run that the layer views use (see notes/API.md)."""

    dir: Path
    all_images: np.ndarray
    before: StagedNet
    after: StagedNet
    calls: list[str] = field(default_factory=list)
    config: RunConfig = field(default_factory=RunConfig)

    def images(self, split: str | None = None) -> np.ndarray:
        return self.all_images

    def load_model(self) -> StagedNet:
        self.calls.append("after")
        return self.after

    def initial_model(self) -> StagedNet:
        self.calls.append("before")
        return self.before

    def artifact(self, name: str) -> Path:
        return self.dir / "artifacts" / name


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(1)
    return FakeRun(tmp_path / "run", rng.integers(0, 256, size=(10, 64, 64), dtype=np.uint8), _alexnet(0), _alexnet(1))


def test_run_guided_backprop_is_computed_once(fake_run: FakeRun) -> None:
    maps, channels = run_guided_backprop(fake_run, 3, "blocks.2.6", n=4)
    expected, expected_channels = guided_backprop_neurons(fake_run.after, to_model_input(fake_run.all_images[3:4]),
                                                         "blocks.2.6", n=4)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert channels == expected_channels
    again, _ = run_guided_backprop(fake_run, 3, "blocks.2.6", n=4)
    gray, _ = run_guided_backprop(fake_run, 3, "blocks.2.6", n=4, grayscale=True)  # from the same cached gradients
    np.testing.assert_array_equal(again, maps)
    assert gray.shape == maps.shape and np.allclose(gray[..., 0], gray[..., 2])
    assert fake_run.calls == ["after"]
    assert fake_run.artifact("gbp-img3-blocks.2.6-n4-top-seed0.npz").exists()


def test_run_guided_backprop_across_layers_and_activation_maps(fake_run: FakeRun) -> None:
    maps, channels = run_guided_backprop_across_layers(fake_run, [0, 2, 4])
    inputs = to_model_input(fake_run.all_images[[0, 2, 4]])
    expected, expected_channels = guided_backprop_across_layers(fake_run.after, inputs)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert channels == expected_channels
    run_guided_backprop_across_layers(fake_run, [0, 2, 4])
    act, order = run_activation_maps(fake_run, 5, "blocks.0.0")
    ref, ref_order = activation_maps(fake_run.after, to_model_input(fake_run.all_images[5:6]), "blocks.0.0")
    np.testing.assert_array_equal(act, ref)
    assert order == ref_order
    run_activation_maps(fake_run, 5, "blocks.0.0")
    assert fake_run.calls == ["after", "after"]


def test_long_wrappers_report_progress_and_stop_on_cancel(fake_run: FakeRun) -> None:
    with pytest.raises(LungLensError):
        run_guided_backprop_across_layers(fake_run, [0, 1], cancel=lambda: True)
    assert not list(fake_run.artifact("x").parent.glob("gbp-layers-*.npz"))  # nothing partial is cached
    heard: list[float] = []
    run_guided_backprop_across_layers(fake_run, [0, 1], progress=lambda f, _text: heard.append(f))
    assert heard == [0.0, 0.0, 0.2, 0.4, 0.6, 0.8]  # the model, then each of the five layers
    heard.clear()
    stop = iter([False, False, True])  # the model loads, the first 4 neurons run, then a cancel
    with pytest.raises(LungLensError):
        run_guided_backprop(fake_run, 1, "blocks.1.3", n=8, cancel=lambda: next(stop),
                            progress=lambda f, _text: heard.append(f))
    assert heard == [0.0, 0.0]
    run_guided_backprop(fake_run, 1, "blocks.1.3", n=8, progress=lambda f, _text: heard.append(f))
    assert heard[2:] == [0.0, 0.0, 0.5]


def test_run_layer_choices(fake_run: FakeRun) -> None:
    assert run_layer_choices(fake_run) == (layer_choices(fake_run.after), ALEXNET_CONVS)


def test_run_filter_grid_views(fake_run: FakeRun) -> None:
    np.testing.assert_array_equal(run_filter_grid(fake_run, "before"), filter_grid(fake_run.before))
    np.testing.assert_array_equal(run_filter_grid(fake_run, "after"), filter_grid(fake_run.after))
    difference = filter_difference(fake_run.before, fake_run.after)
    np.testing.assert_array_equal(run_filter_grid(fake_run, "difference"), difference)
    for which in ("before", "after", "difference"):
        run_filter_grid(fake_run, which)
    assert fake_run.calls == ["before", "after", "before", "after"]
    with pytest.raises(ConfigError, match="during"):
        run_filter_grid(fake_run, "during")
