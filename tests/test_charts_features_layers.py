"""Figure builders of the Features and Layers pages on small hand-made inputs."""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dashboard import features_charts as fc
from dashboard import layers_charts as lc

CLASSES = ("covid", "normal", "pneumonia")


def _points(dims: int = 2) -> pd.DataFrame:
    """Seven projected images: 3 covid, 2 normal, 2 pneumonia; rows 1 and 5 predicted wrongly."""
    rng = np.random.default_rng(0)
    label = ["covid", "covid", "normal", "pneumonia", "covid", "normal", "pneumonia"]
    pred = ["covid", "normal", "normal", "pneumonia", "covid", "pneumonia", "pneumonia"]
    df = pd.DataFrame(rng.normal(size=(7, dims)), columns=["x", "y", "z"][:dims])
    df["file"] = [f"img{i}.png" for i in range(7)]
    df["split"] = ["train", "train", "val", "test", "test", "test", "train"]
    df["label"], df["pred"] = label, pred
    df["correct"] = df["label"] == df["pred"]
    return df


def _png(source: str) -> np.ndarray:
    """Decode a Plotly image trace's ``data:image/png;base64,...`` source to an RGB array."""
    raw = np.frombuffer(base64.b64decode(source.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---- Features -------------------------------------------------------------------------------------------------

def test_projection_2d_one_webgl_trace_per_class_with_rows_in_customdata():
    df = _points()
    fig = fc.projection_figure(df, CLASSES, "pca")
    assert [type(t) for t in fig.data] == [go.Scattergl] * 3
    assert [t.name for t in fig.data] == ["covid (3)", "normal (2)", "pneumonia (2)"]
    for trace, cls in zip(fig.data, CLASSES, strict=True):
        rows = np.flatnonzero(df["label"] == cls)
        np.testing.assert_array_equal(trace.customdata, rows)
        np.testing.assert_allclose(trace.x, df.loc[rows, "x"])
        np.testing.assert_allclose(trace.y, df.loc[rows, "y"])
        for r, text in zip(rows, trace.text, strict=True):
            assert df.loc[r, "file"] in text and f"predicted: {df.loc[r, 'pred']}" in text
    assert sum(len(t.x) for t in fig.data) == len(df)
    assert fig.layout.xaxis.title.text == "PC 1" and fig.layout.yaxis.title.text == "PC 2"


def test_projection_3d_and_correct_wrong_colouring():
    df = _points(3)
    fig = fc.projection_figure(df, CLASSES, "tsne", colour_by="correct")
    assert [type(t) for t in fig.data] == [go.Scatter3d] * 2
    assert [t.name for t in fig.data] == ["correct (5)", "wrong (2)"]
    np.testing.assert_array_equal(fig.data[1].customdata, [1, 5])
    np.testing.assert_allclose(fig.data[1].z, df.loc[[1, 5], "z"])
    assert fig.layout.scene.zaxis.title.text == "t-SNE 3"
    with pytest.raises(ValueError):
        fc.projection_figure(df, CLASSES, "pca", colour_by="split")


def test_selected_image_is_ringed_as_a_last_trace():
    df = _points()
    fig = fc.projection_figure(df, CLASSES, "kpca-rbf", selected=4)
    ring = fig.data[-1]
    assert len(fig.data) == 4 and ring.name == "selected image"
    assert list(ring.customdata) == [4] and (ring.x[0], ring.y[0]) == (df.loc[4, "x"], df.loc[4, "y"])
    assert len(fc.projection_figure(df, CLASSES, "pca", selected=99).data) == 3  # not a row: nothing ringed


def test_selected_row_reads_the_customdata_of_a_streamlit_selection():
    assert fc.selected_row([]) is None
    assert fc.selected_row([{"curve_number": 1, "point_index": 0, "customdata": 17}]) == 17
    assert fc.selected_row([{"customdata": [5, "extra"]}, {"customdata": 2}]) == 5
    assert fc.selected_row([{"point_index": 3}]) is None


def test_image_labels_and_score_text():
    preds = pd.DataFrame({"file": ["a.png", "b.png"], "y": [0, 2], "pred": [0, 1], "split": ["test", "train"]})
    assert fc.image_labels(preds, CLASSES) == {0: "a.png · covid (test)", 1: "b.png · pneumonia → normal (train)"}
    assert fc.score_text(float("nan")) == "n/a" and fc.score_text(0.12345) == "0.123"


# ---- Layers ---------------------------------------------------------------------------------------------------

def test_mosaic_places_nearest_upscaled_tiles_row_by_row():
    rng = np.random.default_rng(1)
    tiles = rng.random((5, 2, 3, 3)).astype(np.float32)
    m = lc.mosaic(tiles, cols=3, scale=2, pad=1)
    h, w = 2 * 2, 3 * 2
    assert m.shape == (2 * (h + 1) + 1, 3 * (w + 1) + 1, 3)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, 3)
        cell = m[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w]
        np.testing.assert_allclose(cell, np.kron(tile, np.ones((2, 2, 1))))
    empty = m[1 + (h + 1): 1 + (h + 1) + h, 1 + 2 * (w + 1): 1 + 2 * (w + 1) + w]
    assert np.all(empty == lc.MOSAIC_FILL) and np.all(m[0] == lc.MOSAIC_FILL)
    assert lc.mosaic(tiles[..., 0], cols=5).shape == (2 + 1 + 1, 5 * 4 + 1)  # grayscale tiles, no upscaling


def test_filter_figure_is_one_sharp_image_of_all_filters():
    rng = np.random.default_rng(2)
    filters = rng.random((64, 11, 11, 3)).astype(np.float32)
    fig = lc.filter_figure(filters, cols=8, scale=4)
    assert len(fig.data) == 1 and fig.data[0].type == "image"
    image = _png(fig.data[0].source)
    cell = 11 * 4 + 2
    assert image.shape == (8 * cell + 2, 8 * cell + 2, 3)
    # filter 9 (row 1, column 1): every 4 x 4 block is one filter pixel, in 0-255 without rescaling
    tile = image[2 + cell: 2 + cell + 44, 2 + cell: 2 + cell + 44]
    np.testing.assert_array_equal(tile[::4, ::4], np.rint(filters[9] * 255).astype(np.uint8))
    np.testing.assert_array_equal(tile[3::4, 3::4], tile[::4, ::4])


def test_image_grid_rgb_tiles_titles_and_square_cells():
    rng = np.random.default_rng(3)
    tiles = rng.random((6, 8, 8, 3)).astype(np.float32)
    fig = lc.image_grid_figure(tiles, cols=4, titles=[f"ch {i}" for i in range(6)])
    assert len(fig.data) == 6 and all(t.type == "image" for t in fig.data)
    np.testing.assert_array_equal(_png(fig.data[5].source), np.rint(tiles[5] * 255).astype(np.uint8))
    assert [a.text for a in fig.layout.annotations] == [f"ch {i}" for i in range(6)]
    assert fig.data[5].xaxis == "x6" and fig.layout.yaxis6.scaleanchor == "x6"


def test_image_grid_heatmaps_share_one_colour_scale_and_row_column_titles():
    maps = np.linspace(0, 1, 5 * 4 * 4).reshape(5, 4, 4)
    fig = lc.image_grid_figure(maps, cols=5, row_titles=["conv 1"], column_titles=list("abcde"))
    assert len(fig.data) == 5 and all(t.type == "heatmap" and t.coloraxis == "coloraxis" for t in fig.data)
    np.testing.assert_allclose(fig.data[2].z, maps[2])
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert sorted(a.text for a in fig.layout.annotations) == ["a", "b", "c", "conv 1", "d", "e"]


def test_filters_unchanged_only_for_a_uniformly_mid_grey_difference():
    diff = np.full((4, 3, 3, 3), 0.5, np.float32)
    assert lc.filters_unchanged(diff)
    diff[2, 1, 1, 0] = 0.51
    assert not lc.filters_unchanged(diff)


def test_filter_figure_draws_gray_filters_as_they_are():
    filters = np.linspace(0.2, 0.6, 2 * 3 * 3).reshape(2, 3, 3)
    image = _png(lc.filter_figure(filters, cols=2, scale=1).data[0].source)
    np.testing.assert_array_equal(image[2:5, 2:5, 0], np.rint(filters[0] * 255))  # not stretched to its min / max
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_image_grid_uint8_tiles_colour_bar_and_room_for_the_toolbar_and_titles():
    tiles = np.arange(4 * 5 * 5 * 3, dtype=np.uint8).reshape(4, 5, 5, 3)
    fig = lc.image_grid_figure(tiles, cols=2, titles=["a", "b<br>two lines", "c", "d"], row_height=100,
                               colorscale="Jet", colorbar="scaled")
    np.testing.assert_array_equal(_png(fig.data[3].source), tiles[3])  # uint8 tiles as they are
    bar = fig.data[-1]
    assert len(fig.data) == 5 and bar.marker.showscale and bar.marker.colorscale[0][0] == 0
    # toolbar row + two title lines above the first row; 2 title lines (+ 6 px) between the rows
    assert fig.layout.margin.t == lc.TOOLBAR_PX + 2 * 16 + 8
    gap = 2 * 16 + 6
    assert fig.layout.yaxis.domain[0] - fig.layout.yaxis3.domain[1] == pytest.approx(gap / (2 * 100 + gap))
    assert fig.layout.height == 2 * 100 + gap + fig.layout.margin.t + 10
