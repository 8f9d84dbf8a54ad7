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
from tests.apptest_helpers import chart_spec, layer_charts, open_page, plotly_array

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

PAGE = "../pages/layers.py"
#: The hidden-layer tabs and the chart each one draws (only the open tab is drawn).
TABS = {"Neurons of one layer (fig. 9)": "layers_neurons", "One neuron per layer (fig. 10)": "layers_across",
        "Activation maps": "layers_activations"}
CHARTS = {"layers_filters", *TABS.values()}
FROZEN = "conv1 is frozen at this depth, so before = after"
#: AlexNet's conv layers by the names of Krizhevsky et al., with LungLens's block (by hand).
ALEXNET_LAYERS = {f"blocks.{b}.{i}": f"conv{b + 1} (block {b + 1})" for b, i in enumerate((0, 3, 6, 8, 10))}


_chart = chart_spec


def _png(source: str) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(source.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _open(app: AppTest, sel: Selection) -> AppTest:
    return open_page(app, sel, PAGE)


def _tab(at: AppTest, label: str) -> AppTest:
    """Open the hidden-layer tab ``label`` (as a click would) and check that only its chart is drawn."""
    at.session_state["layers_view"] = label
    at.run()
    assert not at.exception
    assert layer_charts(at) == {"layers_filters", TABS[label]}
    return at


def _layer_output(run: engine.Run, row: int, layer: str) -> np.ndarray:
    """The output of ``layer`` on image ``row`` (C, h, w), from a forward hook."""
    model = run.load_model()
    out = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: out.append(o))
    with torch.no_grad():
        model(to_model_input(run.images()[row: row + 1]))
    handle.remove()
    return out[0][0].numpy()


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
    """Channels of ``layer`` by mean activation on image ``row``, highest first."""
    return np.argsort(-_layer_output(run, row, layer).mean(axis=(1, 2)), kind="stable").tolist()


def _jet_overlay(gray: np.ndarray, fmap: np.ndarray) -> np.ndarray:
    """``fmap`` min-max scaled, upsampled bilinearly (torch, pixel centres aligned) to ``gray``'s size, in OpenCV's
    jet colours and blended half and half with the gray image: RGB uint8."""
    scaled = (fmap - fmap.min()) / (fmap.max() - fmap.min())
    up = torch.nn.functional.interpolate(torch.from_numpy(scaled)[None, None].float(), size=gray.shape,
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    jet = cv2.applyColorMap(np.round(up * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.round(0.5 * gray[..., None].astype(float) + 0.5 * jet)


def test_filters_before_after_and_the_frozen_first_layer(app, trained_selection, runs):
    at = _open(app, trained_selection)
    assert layer_charts(at) == {"layers_filters", "layers_neurons"}  # the first tab only
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
    assert len(neurons["data"]) == 9 and {t["type"] for t in neurons["data"]} == {"image"}
    titles = [a["text"] for a in neurons["layout"]["annotations"]]
    assert titles == ["input image"] + [f"ch {c}" for c in top[:8]]
    shown = _png(neurons["data"][0]["source"])
    np.testing.assert_array_equal(shown, np.repeat(run.images()[row][..., None], 3, axis=-1))  # the input itself
    tile = _png(neurons["data"][1]["source"]).astype(int)
    assert abs(np.median(tile) - 128) <= 4  # drawn around mid-grey (zero gradient)
    assert tile.min() == 0 and tile.max() == 255  # stretched to the full range, a few pixels clipped

    at = _tab(at, "Activation maps")
    assert at.selectbox(key="layers_image").value == row and at.selectbox(key="layers_layer").value == layer
    at.slider(key="layers_top_n").set_value(8).run()
    maps = _chart(at, "layers_activations")
    assert [t["type"] for t in maps["data"]] == ["image"] * 8 + ["scatter"]  # 8 overlays and the colour bar
    assert [a["text"] for a in maps["layout"]["annotations"]] == [f"ch {c}" for c in top[:8]]
    fmaps = _layer_output(run, row, layer)
    for k in (0, 7):
        overlay = _png(maps["data"][k]["source"]).astype(int)
        assert overlay.shape[:2] == run.images()[row].shape
        assert np.abs(overlay - _jet_overlay(run.images()[row], fmaps[top[k]])).max() <= 2
    at.radio(key="layers_show").set_value("raw").run()
    raw = _chart(at, "layers_activations")
    assert len(raw["data"]) == 8 and {t["type"] for t in raw["data"]} == {"heatmap"}
    f0 = fmaps[top[0]]
    np.testing.assert_allclose(plotly_array(raw["data"][0]["z"]), (f0 - f0.min()) / (f0.max() - f0.min()), atol=1e-5)

    across = _chart(_tab(at, "One neuron per layer (fig. 10)"), "layers_across")
    positive_test = (run.predictions["split"] == "test") & (run.predictions["y"] == run.positive)
    n_images = min(8, int(positive_test.sum()))
    assert len(across["data"]) == (engine.N_BLOCKS + 1) * n_images  # each image, then one neuron per block
    columns = [a["text"] for a in across["layout"]["annotations"] if a.get("textangle") != 90][: engine.N_BLOCKS + 1]
    assert columns[0] == "input image"
    assert [c.replace("<br>", " ").split(" · ch ")[0] for c in columns[1:]] == list(ALEXNET_LAYERS.values())


def test_layer_names_neuron_choice_and_grayscale_toggles(app, trained_selection, runs):
    at = _open(app, trained_selection)
    picker = at.selectbox(key="layers_layer")
    assert picker.options == list(ALEXNET_LAYERS.values())  # human names, no module names
    picker.set_value("blocks.4.10").run()
    at.radio(key="layers_pick").set_value("random").run()
    assert not at.exception
    titles = [a["text"] for a in _chart(at, "layers_neurons")["layout"]["annotations"]][1:]
    channels = [int(t.removeprefix("ch ")) for t in titles]
    assert len(set(channels)) == 8 and channels == sorted(channels)  # 8 distinct random channels, in order

    at.toggle(key="layers_gray").set_value(True).run()
    assert not at.exception
    tile = _png(_chart(at, "layers_neurons")["data"][1]["source"]).astype(int)
    assert np.array_equal(tile[..., 0], tile[..., 1]) and np.array_equal(tile[..., 1], tile[..., 2])


# --- exports and links ------------------------------------------------------------------------------------------------

def test_every_figure_saves_a_named_png_without_zoom_or_pan_buttons(app, trained_selection, runs):
    at = _open(app, trained_selection)
    row = at.selectbox(key="layers_image").value
    file = re.sub("[^a-z0-9]+", "-", runs[5].predictions["file"].iloc[row].lower())  # a file-name stem
    configs, layouts = {}, {}
    for label in TABS:
        _tab(at, label)
        configs |= {c.key: json.loads(c.proto.config) for c in at.get("plotly_chart") if c.key in layer_charts(at)}
        layouts |= {key: _chart(at, key)["layout"] for key in CHARTS & set(configs) - set(layouts)}
    assert set(configs) == CHARTS
    names = {k: c["toImageButtonOptions"]["filename"] for k, c in configs.items()}
    assert names["layers_filters"] == "lunglens-alexnet-depth5-filters-before"
    assert names["layers_neurons"] == f"lunglens-alexnet-depth5-neurons-conv3-block-3-{file}"  # the middle layer
    assert names["layers_activations"] == f"lunglens-alexnet-depth5-activations-conv3-block-3-{file}"
    assert names["layers_across"].startswith("lunglens-alexnet-depth5-one-neuron-per-layer-")
    for config in configs.values():
        assert {"zoom2d", "pan2d", "autoScale2d", "resetScale2d"} <= set(config["modeBarButtonsToRemove"])
    for layout in layouts.values():  # the toolbar's row (about 25 px) is kept free above the tiles and their titles
        lines = max((a["text"].count("<br>") + 1 for a in layout.get("annotations", [])
                     if a.get("textangle") != 90), default=0)
        assert layout["margin"]["t"] >= 30 + 16 * lines


def _open_link(app: AppTest, sel: Selection, **params: str) -> AppTest:
    """Open the page as a link with ``params`` would (Home runs first; the page's parameters are added after it)."""
    app.run()
    app.session_state["selection"] = sel
    app.query_params.update(params)
    app.switch_page(PAGE).run()
    assert not app.exception
    return app


def test_a_link_reopens_the_view_image_layer_neurons_and_maps(app, trained_selection, runs):
    run = runs[0]
    test_rows = np.flatnonzero(run.predictions["split"] == "test")
    row = int(test_rows[2])
    other = next(c for c in run.classes if c != run.classes[run.positive])
    at = _open_link(app, trained_selection, depth="0", view="activations", image=run.predictions["file"].iloc[row],
                    layer="blocks.4.10", neurons="random", seed="3", filters="after", gray="1", **{"class": other},
                    draw="2", maps="4", show="raw", opacity="0.8")
    assert at.select_slider(key="layers_depth").value == 0 and at.radio(key="layers_filter_view").value == "after"
    assert layer_charts(at) == {"layers_filters", "layers_activations"}
    assert at.selectbox(key="layers_image").value == row and at.selectbox(key="layers_layer").value == "blocks.4.10"
    assert at.slider(key="layers_top_n").value == 4 and at.radio(key="layers_show").value == "raw"
    assert at.select_slider(key="layers_opacity").value == 0.8
    assert len(_chart(at, "layers_activations")["data"]) == 4

    _tab(at, "Neurons of one layer (fig. 9)")  # the image and layer carry over
    assert at.selectbox(key="layers_image").value == row and at.selectbox(key="layers_layer").value == "blocks.4.10"
    assert at.radio(key="layers_pick").value == "random" and at.number_input(key="layers_seed").value == 3
    assert at.toggle(key="layers_gray").value is True
    titles = [a["text"] for a in _chart(at, "layers_neurons")["layout"]["annotations"]][1:]
    assert len(set(titles)) == 8 and titles != [f"ch {c}" for c in _top_channels(run, row, "blocks.4.10")[:8]]

    _tab(at, "One neuron per layer (fig. 10)")
    assert at.selectbox(key="layers_fig10_class").value == run.classes.index(other)
    assert at.number_input(key="layers_fig10_draw").value == 2
    assert at.query_params["view"] == "across" and at.query_params["image"] == run.predictions["file"].iloc[row]


def test_stale_values_in_a_link_fall_back_to_the_defaults(app, trained_selection, runs):
    at = _open_link(app, trained_selection, view="sideways", image="gone.png", layer="blocks.9.9", neurons="all",
                    seed="5000", filters="sideways", gray="2", **{"class": "martian"}, draw="-1", maps="99",
                    show="3d", opacity="7")
    assert not at.error
    run = runs[5]
    first_test = int(np.flatnonzero(run.predictions["split"] == "test")[0])
    assert at.selectbox(key="layers_image").value == first_test and at.radio(key="layers_pick").value == "top"
    assert at.radio(key="layers_filter_view").value == "before" and at.toggle(key="layers_gray").value is False
    assert at.number_input(key="layers_seed").value == 0 and "layers_neurons" in {c.key for c in at.get("plotly_chart")}
    _tab(at, "One neuron per layer (fig. 10)")
    assert at.number_input(key="layers_fig10_draw").value == 0
    assert at.selectbox(key="layers_fig10_class").value == run.positive
    _tab(at, "Activation maps")
    assert at.slider(key="layers_top_n").value == 16 and at.radio(key="layers_show").value == "overlay"
    assert at.select_slider(key="layers_opacity").value == 0.5
    stale = {"image", "layer", "neurons", "seed", "filters", "gray", "class", "draw", "maps", "show", "opacity"}
    assert not stale & set(at.query_params)
