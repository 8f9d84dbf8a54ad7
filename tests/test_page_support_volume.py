"""Support Regions on a 3-D CT run: the slice viewer (case, slice, views, method, draw mode, URL state) checked against
the run's volumes and masks read here and the engine's maps, the localisation table against numpy; the chart
functions on hand-made volumes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import engine
from dashboard.volume_charts import case_name, localisation_table, plane_slice, slice_figure
from engine.data.arrays import mask_arrays
from engine.explain import METHODS, run_heatmaps
from engine.explain.methods import volume_methods
from tests.apptest_helpers import chart_spec, plotly_array

PAGE = "../pages/support_regions.py"
HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


# --- the chart functions on hand-made volumes ------------------------------------------------------------------------

def _toy() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 8)).astype(np.uint8)
    heat = rng.random((4, 6, 8)).astype(np.float32)
    lesion = np.zeros((4, 6, 8), bool)
    lesion[1:3, 2:4, 3:6] = True
    lung = np.zeros_like(lesion)
    lung[:, 1:5, 1:7] = True
    return image, heat, lesion, lung


def _traces(fig, axis: str) -> list:
    return [t for t in fig.data if (t.xaxis or "x") == axis]


def test_slice_figure_draws_each_plane_through_the_point():
    image, heat, lesion, lung = _toy()
    point = (2, 3, 5)
    fig = slice_figure(image, heat, lesion, lung, point, ("axial", "coronal", "sagittal"), spacing=(11.0, 6.0, 6.0))
    expected = {"x": (image[2], heat[2]), "x2": (image[:, 3, :], heat[:, 3, :]), "x3": (image[:, :, 5], heat[:, :, 5])}
    for axis, (gray, jet) in expected.items():
        heatmaps = [t for t in _traces(fig, axis) if t.type == "heatmap"]
        np.testing.assert_array_equal(np.asarray(heatmaps[0].z), gray)  # the CT in gray first, then the map
        np.testing.assert_allclose(np.asarray(heatmaps[1].z), jet)
        names = {t.name for t in _traces(fig, axis) if t.type == "contour"}
        assert {"lesion mask", "lung mask"} <= names and any(n.startswith("support") for n in names)
    assert fig.layout.yaxis.scaleratio == pytest.approx(1.0)  # axial: rows and columns at 6 mm
    assert fig.layout.yaxis2.scaleratio == fig.layout.yaxis3.scaleratio == pytest.approx(11 / 6)
    assert len(fig.layout.shapes) == 6  # two lines per view where the other planes cut
    assert [a.text for a in fig.layout.annotations][:3] == ["Axial<br>slice 3 of 4", "Coronal<br>row 4 of 6",
                                                            "Sagittal<br>column 6 of 8"]


def test_slice_figure_draw_modes_and_a_missing_map():
    image, heat, lesion, lung = _toy()
    contour = slice_figure(image, heat, lesion, lung, (1, 2, 3), draw="contour", opacity=0.6)
    assert [t.opacity for t in contour.data if t.type == "heatmap" and t.coloraxis] == [0.0]
    assert any(str(t.name).startswith("support") for t in contour.data)
    only = slice_figure(image, heat, lesion, lung, (1, 2, 3), draw="heatmap", opacity=0.6)
    assert [t.opacity for t in only.data if t.type == "heatmap" and t.coloraxis] == [0.6]
    assert not any(str(t.name).startswith("support") for t in only.data)
    bare = slice_figure(image, None, None, None, (1, 2, 3))
    assert [t.type for t in bare.data] == ["heatmap"] and not bare.layout.shapes
    assert plane_slice(None, "axial", (0, 0, 0)) is None


def test_localisation_table_and_case_names():
    rows = []
    for score in ("consistency", "pointing_game", "relevance_mass"):
        for who, mean in zip(("map", "lungs, same size", "smooth random map"), (0.5, 0.25, 0.125)):
            beats = (score == "consistency") if who == "map" else None
            rows.append({"score": score, "label": score, "who": who, "mean": mean, "low": mean - 0.1,
                         "high": mean + 0.1, "n": 7, "beats_chance": beats})
    table = localisation_table(pd.DataFrame(rows))
    assert table["score"].tolist() == ["Consistency degree", "Pointing game", "Relevance mass"]
    assert table.loc[0, "map"] == "50.0% [40.0, 60.0]" and table.loc[0, "smooth random map"] == "12.5% [2.5, 22.5]"
    assert table["beats chance"].tolist() == ["yes", "no", "no"] and table["volumes"].tolist() == [7, 7, 7]
    assert case_name("images/covid/covid_003.nii.gz") == "covid_003" == case_name("covid_003.nii")


# --- the page on a tiny trained 3-D run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ct_run(trained_ct) -> engine.Run:
    return engine.get_run(trained_ct.configs()[-1])


@pytest.fixture(scope="module")
def test_masks(ct_run) -> tuple[np.ndarray, np.ndarray]:
    test = (ct_run.predictions["split"] == "test").to_numpy()
    lesion, lung, _, _ = mask_arrays(ct_run.dataset(), ct_run.config.image_size)
    return lesion[test], lung[test]


def _open(trained_ct, **query: str) -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=300)
    at.session_state["selection"] = trained_ct
    at.run()
    at.session_state["selection"] = trained_ct
    at.query_params.update(query)
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _panels(at: AppTest) -> dict[str, list[np.ndarray]]:
    """Panel axis -> the arrays of its heatmap traces (the CT first, then the map)."""
    out: dict[str, list[np.ndarray]] = {}
    for t in chart_spec(at, "support_volume_views")["data"]:
        if t["type"] == "heatmap":
            out.setdefault(t.get("xaxis", "x"), []).append(plotly_array(t["z"], dtype=float))
    return out


def test_slice_viewer_opens_on_the_slice_with_most_lesion(trained_ct, ct_run, test_masks):
    at = _open(trained_ct)
    lesion, _ = test_masks
    images = ct_run.images("test")
    maps = run_heatmaps(ct_run, "gradcam", "test", "pred")
    z = int(np.argmax(lesion[0].sum(axis=(1, 2))))
    assert at.slider(key="support_volume_slice").value == z + 1
    panels = _panels(at)
    assert list(panels) == ["x"]
    np.testing.assert_array_equal(panels["x"][0], images[0][z])
    np.testing.assert_allclose(panels["x"][1], maps[0][z], atol=1e-6)
    assert any("do not apply to volumes" in c.value for c in at.caption)
    assert at.selectbox(key="support_volume_method").options == [METHODS[n].label for n in volume_methods()]
    assert at.query_params["case"] == ct_run.predictions["file"][ct_run.predictions["split"] == "test"].iloc[0]

    at.radio(key="support_volume_planes").set_value("all").run()
    y, x = int(at.slider(key="support_volume_row").value) - 1, int(at.slider(key="support_volume_column").value) - 1
    assert y == int(np.argmax(lesion[0][z].sum(axis=1))) and x == int(np.argmax(lesion[0][z].sum(axis=0)))
    panels = _panels(at)
    np.testing.assert_array_equal(panels["x2"][0], images[0][:, y, :])
    np.testing.assert_array_equal(panels["x3"][0], images[0][:, :, x])
    assert at.query_params["plane"] == "all"


def test_localisation_table_matches_numpy(trained_ct, ct_run, test_masks):
    at = _open(trained_ct)
    lesion, _ = test_masks
    maps = run_heatmaps(ct_run, "gradcam", "test", "pred")
    cons = [(maps[i][lesion[i]] > 0.7).mean() for i in range(len(maps)) if lesion[i].any()]
    table = next(d.value for d in at.dataframe if "beats chance" in d.value.columns)
    assert table["score"].tolist() == ["Consistency degree", "Pointing game", "Relevance mass"]
    assert table.loc[0, "map"].startswith(f"{100 * np.mean(cons):.1f}%")
    assert table.loc[0, "volumes"] == len(cons)
    metric = next(m for m in at.metric if m.label == "Consistency degree")
    assert metric.value == f"{(maps[0][lesion[0]] > 0.7).mean():.1%}"


def test_a_link_reopens_case_slice_views_and_method(trained_ct, ct_run, test_masks):
    files = ct_run.predictions["file"][ct_run.predictions["split"] == "test"].tolist()
    at = _open(trained_ct, case=files[1], slice="3", plane="all", method="attention", draw="contour")
    assert at.selectbox(key="support_volume_case").value == 1 and at.slider(key="support_volume_slice").value == 3
    assert at.selectbox(key="support_volume_method").value == "attention"
    maps = run_heatmaps(ct_run, "attention", "test", "pred")
    panels = _panels(at)
    assert len(panels) == 3
    np.testing.assert_allclose(panels["x"][1], maps[1][2], atol=1e-6)
    spec = chart_spec(at, "support_volume_views")
    assert {t.get("opacity") for t in spec["data"] if t["type"] == "heatmap" and t.get("coloraxis")} == {0}
    # another case forgets the slice of the last one: it opens on its own slice with most lesion
    at.selectbox(key="support_volume_case").set_value(0).run()
    lesion, _ = test_masks
    assert at.slider(key="support_volume_slice").value == int(np.argmax(lesion[0].sum(axis=(1, 2)))) + 1
