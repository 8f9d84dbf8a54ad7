"""The Layers page in AppTest: first-layer filters before / after / difference, guided backpropagation, activations."""
from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from engine.data.transforms import to_model_input
from tests.apptest_helpers import chart_spec, open_page

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

PAGE = "../pages/layers.py"
CHARTS = {"layers_filters", "layers_neurons", "layers_across", "layers_activations"}
FROZEN = "conv1 is frozen at this depth, so before = after"


_chart = chart_spec


def _png(source: str) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(source.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _open(app: AppTest, sel: Selection) -> AppTest:
    return open_page(app, sel, PAGE)


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


#: ImageNet's channel stds, which the model input is normalised by (torchvision's documented values).
CHANNEL_STD = np.array([0.229, 0.224, 0.225])


def _conv1(model: torch.nn.Module) -> np.ndarray:
    """The first conv layer as it acts on the gray image copied into 3 normalised channels: sum_c w_c / std_c."""
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return (conv.weight.detach().double().numpy() / CHANNEL_STD[None, :, None, None]).sum(axis=1)


def _first_tile(at: AppTest, k: int) -> np.ndarray:
    """Filter 0 of the filter mosaic (2 px border, nearest-upscaled), back at k x k pixels; it must be gray."""
    mosaic = _png(_chart(at, "layers_filters")["data"][0]["source"])
    scale = ((mosaic.shape[1] - 2) // 8 - 2) // k  # the mosaic is 8 filters wide
    tile = mosaic[2: 2 + k * scale: scale, 2: 2 + k * scale: scale]
    np.testing.assert_array_equal(tile[..., 0], tile[..., 1])  # drawn as gray: R = G = B
    np.testing.assert_array_equal(tile[..., 0], tile[..., 2])
    return tile[..., 0]


def _scaled(w: np.ndarray) -> np.ndarray:
    return np.rint((w - w.min()) / (w.max() - w.min()) * 255)


def _top_channels(run: engine.Run, row: int, layer: str) -> list[int]:
    """Channels of ``layer`` by mean activation on image ``row``, highest first, from a forward hook."""
    model = run.load_model()
    out = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: out.append(o))
    with torch.no_grad():
        model(to_model_input(run.images()[row: row + 1]))
    handle.remove()
    return torch.argsort(out[0][0].mean(dim=(1, 2)), descending=True, stable=True).tolist()


def test_filters_before_after_and_the_frozen_first_layer(app, trained_selection, runs):
    at = _open(app, trained_selection)
    assert {c.key for c in at.get("plotly_chart")} == CHARTS
    before, after = _conv1(runs[5].initial_model()), _conv1(runs[5].load_model())
    assert not np.allclose(before, after)  # depth 5 trains conv1
    k = before.shape[1]
    np.testing.assert_allclose(_first_tile(at, k), _scaled(before[0]), atol=1)
    assert not any(FROZEN in i.value for i in at.info)

    at.radio(key="layers_filter_view").set_value("after").run()
    assert not at.exception
    np.testing.assert_allclose(_first_tile(at, k), _scaled(after[0]), atol=1)

    at.select_slider(key="layers_depth").set_value(0).run()
    at.radio(key="layers_filter_view").set_value("difference").run()
    assert not at.exception
    np.testing.assert_array_equal(_conv1(runs[0].initial_model()), _conv1(runs[0].load_model()))
    assert any(FROZEN in i.value for i in at.info)
    assert np.all(_first_tile(at, k) == 128)  # zero change is mid-grey


def test_neurons_activation_maps_and_across_layers(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[5]
    row, layer = at.selectbox(key="layers_image").value, at.selectbox(key="layers_layer").value
    assert run.predictions["split"].iloc[row] == "test"
    top = _top_channels(run, row, layer)

    neurons = _chart(at, "layers_neurons")
    assert len(neurons["data"]) == 8 and {t["type"] for t in neurons["data"]} == {"image"}
    assert [a["text"] for a in neurons["layout"]["annotations"]] == [f"ch {c}" for c in top[:8]]
    assert len(at.image) == 1  # the input image beside the reconstructions

    at.slider(key="layers_top_n").set_value(8).run()
    maps = _chart(at, "layers_activations")
    assert len(maps["data"]) == 8 and {t["type"] for t in maps["data"]} == {"heatmap"}
    assert [a["text"] for a in maps["layout"]["annotations"]] == [f"ch {c}" for c in top[:8]]

    across = _chart(at, "layers_across")
    positive_test = (run.predictions["split"] == "test") & (run.predictions["y"] == run.positive)
    n_images = min(8, int(positive_test.sum()))
    assert len(across["data"]) == engine.N_BLOCKS * n_images


def test_layer_neuron_choice_and_grayscale_toggles(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.selectbox(key="layers_layer").set_value("blocks.4.10").run()
    at.radio(key="layers_pick").set_value("random").run()
    assert not at.exception
    titles = [a["text"] for a in _chart(at, "layers_neurons")["layout"]["annotations"]]
    channels = [int(t.removeprefix("ch ")) for t in titles]
    assert len(set(channels)) == 8 and channels == sorted(channels)  # 8 distinct random channels, in order

    at.toggle(key="layers_gray").set_value(True).run()
    assert not at.exception
    tile = _png(_chart(at, "layers_neurons")["data"][0]["source"]).astype(int)
    assert np.array_equal(tile[..., 0], tile[..., 1]) and np.array_equal(tile[..., 1], tile[..., 2])


# --- exports and links ------------------------------------------------------------------------------------------------

def test_every_figure_saves_a_named_png_without_zoom_or_pan_buttons(app, trained_selection, runs):
    at = _open(app, trained_selection)
    row, layer = at.selectbox(key="layers_image").value, at.selectbox(key="layers_layer").value
    file = re.sub("[^a-z0-9]+", "-", runs[5].predictions["file"].iloc[row].lower())  # a file-name stem
    configs = {c.key: json.loads(c.proto.config) for c in at.get("plotly_chart")}
    assert set(configs) == CHARTS
    names = {k: c["toImageButtonOptions"]["filename"] for k, c in configs.items()}
    assert names["layers_filters"] == "lunglens-alexnet-depth5-filters-before"
    assert names["layers_neurons"] == f"lunglens-alexnet-depth5-neurons-{layer.replace('.', '-')}-{file}"
    assert names["layers_activations"] == f"lunglens-alexnet-depth5-activations-{layer.replace('.', '-')}-{file}"
    assert names["layers_across"].startswith("lunglens-alexnet-depth5-one-neuron-per-layer-")
    for config in configs.values():
        assert {"zoom2d", "pan2d", "autoScale2d", "resetScale2d"} <= set(config["modeBarButtonsToRemove"])
    for key in CHARTS:  # the toolbar's row (about 25 px) is kept free above the tiles and their titles
        layout = _chart(at, key)["layout"]
        titles = [a["y"] for a in layout.get("annotations", [])]
        assert layout["margin"]["t"] >= 30 + (20 if titles else 0)


def _open_link(app: AppTest, sel: Selection, **params: str) -> AppTest:
    """Open the page as a link with ``params`` would (Home runs first; the page's parameters are added after it)."""
    app.run()
    app.session_state["selection"] = sel
    app.query_params.update(params)
    app.switch_page(PAGE).run()
    assert not app.exception
    return app


def test_a_link_reopens_the_image_layer_neurons_and_views(app, trained_selection, runs):
    run = runs[0]
    test_rows = np.flatnonzero(run.predictions["split"] == "test")
    row = int(test_rows[2])
    other = next(c for c in run.classes if c != run.classes[run.positive])
    at = _open_link(app, trained_selection, depth="0", image=run.predictions["file"].iloc[row], layer="blocks.4.10",
                    neurons="random", seed="3", filters="after", gray="1", **{"class": other}, draw="2", maps="4")
    assert at.select_slider(key="layers_depth").value == 0
    assert at.radio(key="layers_filter_view").value == "after" and at.selectbox(key="layers_image").value == row
    assert at.selectbox(key="layers_layer").value == "blocks.4.10" and at.radio(key="layers_pick").value == "random"
    assert at.number_input(key="layers_seed").value == 3 and at.toggle(key="layers_gray").value is True
    assert at.selectbox(key="layers_fig10_class").value == run.classes.index(other)
    assert at.number_input(key="layers_fig10_draw").value == 2 and at.slider(key="layers_top_n").value == 4
    assert len(_chart(at, "layers_activations")["data"]) == 4
    titles = [a["text"] for a in _chart(at, "layers_neurons")["layout"]["annotations"]]
    assert len(set(titles)) == 8 and titles != [f"ch {c}" for c in _top_channels(run, row, "blocks.4.10")[:8]]


def test_stale_values_in_a_link_fall_back_to_the_defaults(app, trained_selection, runs):
    at = _open_link(app, trained_selection, image="gone.png", layer="blocks.9.9", neurons="all", seed="5000",
                    filters="sideways", gray="2", **{"class": "martian"}, draw="-1", maps="99")
    assert not at.error
    run = runs[5]
    first_test = int(np.flatnonzero(run.predictions["split"] == "test")[0])
    assert at.selectbox(key="layers_image").value == first_test and at.radio(key="layers_pick").value == "top"
    assert at.radio(key="layers_filter_view").value == "before" and at.toggle(key="layers_gray").value is False
    assert at.number_input(key="layers_seed").value == 0 and at.number_input(key="layers_fig10_draw").value == 0
    assert at.selectbox(key="layers_fig10_class").value == run.positive
    assert at.slider(key="layers_top_n").value == 16
    assert not {"image", "layer", "neurons", "seed", "filters", "gray", "class", "draw", "maps"} & set(at.query_params)
