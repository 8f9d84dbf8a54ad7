"""The Features page in AppTest: LBP and deep features projected side by side, with separability scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.feature import local_binary_pattern
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from tests.apptest_helpers import open_page, plotly_array
from tests.test_exports import csv_table, download, downloads  # noqa: F401 (a fixture)

PAGE = "../pages/features.py"


_array = plotly_array


def _traces(at: AppTest, key: str) -> list[dict]:
    return json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.spec)["data"]


def _points(traces: list[dict], axes: str = "xy") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, coordinates, legend group) of every point of the class / correctness traces, in row order."""
    traces = [t for t in traces if t["name"] != "selected image"]
    rows = np.concatenate([_array(t["customdata"]) for t in traces]).astype(int)
    xyz = np.concatenate([np.column_stack([_array(t[a]) for a in axes]) for t in traces])
    group = np.concatenate([[t["name"].split(" (")[0]] * len(_array(t["x"])) for t in traces])
    order = np.argsort(rows)
    return rows[order], xyz[order], group[order]


def _open(app: AppTest, sel: Selection) -> AppTest:
    return open_page(app, sel, PAGE)


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def _lbp_pca(run: engine.Run) -> np.ndarray:
    """The PCA (2-D) of the standardised 59-bin uniform LBP histograms of the run's images, computed here."""
    images = run.images()
    lbp = np.stack([np.bincount(local_binary_pattern(im, 8, 1, "nri_uniform").astype(int).ravel(), minlength=59)
                    for im in images]) / images[0].size
    return PCA(n_components=2).fit_transform(StandardScaler().fit_transform(lbp))


def _metric(at: AppTest, column: int, label: str) -> str:
    return [m for m in at.metric if m.label == label][column].value


def test_lbp_and_deep_projections_side_by_side_with_scores(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    preds = run.predictions
    assert {c.key for c in at.get("plotly_chart")} == {"features_lbp", "features_deep"}
    for key in ("features_lbp", "features_deep"):
        traces = _traces(at, key)
        assert {t["type"] for t in traces} == {"scattergl"}
        counts = np.bincount(preds["y"], minlength=len(run.classes))
        assert [t["name"] for t in traces] == [f"{c} ({n})" for c, n in zip(run.classes, counts, strict=True)]
        rows, _, group = _points(traces)
        np.testing.assert_array_equal(rows, np.arange(len(preds)))
        np.testing.assert_array_equal(group, np.asarray(run.classes)[preds["y"]])

    expected = _lbp_pca(run)
    _, shown, labels = _points(_traces(at, "features_lbp"))
    signs = np.sign((expected * shown).sum(axis=0))  # a principal axis is defined up to its sign
    np.testing.assert_allclose(shown, expected * signs, rtol=1e-3, atol=1e-3)

    assert _metric(at, 0, "Silhouette") == f"{silhouette_score(shown, labels):.3f}"
    _, deep, labels = _points(_traces(at, "features_deep"))
    assert _metric(at, 1, "Silhouette") == f"{silhouette_score(deep, labels):.3f}"
    assert 0 <= float(_metric(at, 1, "k-NN accuracy")) <= 1
    caption = " ".join(c.value for c in at.caption)
    assert "fig. 6" in caption and "PCA-50" in caption and "59-bin" in caption and "9216-d" in caption


def test_dims_method_and_colour_selectors(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    at.radio(key="features_dims").set_value(3).run()
    assert not at.exception
    traces = _traces(at, "features_deep")
    assert {t["type"] for t in traces} == {"scatter3d"}
    assert _points(traces, "xyz")[1].shape == (len(run.predictions), 3)

    at.selectbox(key="features_method").set_value("tsne").run()
    assert not at.exception
    assert {t["type"] for t in _traces(at, "features_lbp")} == {"scatter3d"}

    at.radio(key="features_dims").set_value(2).run()
    at.toggle(key="features_correct").set_value(True).run()
    assert not at.exception
    right = int((run.predictions["y"] == run.predictions["pred"]).sum())
    names = [t["name"] for t in _traces(at, "features_deep")]
    assert names == [f"correct ({right})", f"wrong ({len(run.predictions) - right})"]


def test_depth_slider_switches_run_and_a_picked_image_is_shown_and_ringed(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.select_slider(key="features_depth").set_value(0).run()
    assert not at.exception
    run = runs[0]
    assert any(run.id in c.value for c in at.caption)
    assert not at.image  # nothing picked yet

    row = int(np.flatnonzero(run.predictions["split"] == "test")[0])
    at.selectbox(key="features_image").set_value(row).run()
    assert not at.exception
    assert len(at.image) == 1
    assert any(run.predictions["file"].iloc[row] in m.value for m in at.markdown)
    for key in ("features_lbp", "features_deep"):
        ring = _traces(at, key)[-1]
        assert ring["name"] == "selected image" and _array(ring["customdata"]).tolist() == [row]


# --- exports and links ------------------------------------------------------------------------------------------------

def test_csv_of_each_projection_and_png_names(app, trained_selection, runs, downloads):  # noqa: F811
    at = _open(app, trained_selection)
    preds = runs[max(runs)].predictions
    for fs in ("lbp", "deep"):
        file = download(at, f"features_{fs}_csv", downloads)
        assert file.filename == f"lunglens-alexnet-depth5-{fs}-pca-2d.csv"
        table = csv_table(file)
        rows, xy, _ = _points(_traces(at, f"features_{fs}"))
        np.testing.assert_array_equal(table["file"], preds["file"])  # a row per image, in run order
        np.testing.assert_allclose(table[["x", "y"]].to_numpy(), xy[np.argsort(rows)], rtol=1e-6)
        np.testing.assert_array_equal(table["correct"], preds["y"] == preds["pred"])
        config = json.loads(next(c for c in at.get("plotly_chart") if c.key == f"features_{fs}").proto.config)
        assert config["toImageButtonOptions"]["filename"] == f"lunglens-alexnet-depth5-{fs}-pca-2d"


def _open_link(app: AppTest, sel: Selection, **params: str) -> AppTest:
    """Open the page as a link with ``params`` would (Home runs first; the page's parameters are added after it)."""
    app.run()
    app.session_state["selection"] = sel
    app.query_params.update(params)
    app.switch_page(PAGE).run()
    assert not app.exception
    return app


def test_a_link_reopens_depth_method_dims_colour_and_image(app, trained_selection, runs):
    run = runs[0]
    row = int(np.flatnonzero(run.predictions["split"] == "test")[1])
    file = run.predictions["file"].iloc[row]
    at = _open_link(app, trained_selection, depth="0", method="kpca-linear", dims="3", colour="correct", image=file)
    assert at.select_slider(key="features_depth").value == 0
    assert at.selectbox(key="features_method").value == "kpca-linear" and at.radio(key="features_dims").value == 3
    assert at.toggle(key="features_correct").value is True and at.selectbox(key="features_image").value == row
    traces = _traces(at, "features_deep")
    assert {t["type"] for t in traces} == {"scatter3d"} and traces[0]["name"].startswith("correct (")
    assert traces[-1]["name"] == "selected image" and _array(traces[-1]["customdata"]).tolist() == [row]
    assert any(Path(file).name in m.value for m in at.markdown)
    assert at.query_params["image"] == file  # written back as the file name


def test_stale_values_in_a_link_fall_back_to_the_defaults(app, trained_selection, runs):
    at = _open_link(app, trained_selection, depth="2", method="umap", dims="4", colour="blue", image="gone.png")
    assert not at.error
    assert at.select_slider(key="features_depth").value == 5 and at.selectbox(key="features_method").value == "pca"
    assert at.radio(key="features_dims").value == 2 and at.toggle(key="features_correct").value is False
    assert at.selectbox(key="features_image").value is None and not at.image
    assert {k: at.query_params.get(k) for k in ("depth", "method", "dims", "colour", "image")} == {
        "depth": "5", "method": None, "dims": None, "colour": None, "image": None}


def test_a_projection_reports_its_steps_and_stops_on_cancel(runs):
    from engine.projections import run_projection

    run = runs[max(runs)]
    with pytest.raises(engine.LungLensError, match="Stopped on request"):
        run_projection(run, "lbp", "pca", 2, seed=99, cancel=lambda: True)
    assert not run.artifact("projection-lbp-pca-2d-seed99.npz").exists()  # nothing partial cached
    heard: list[float] = []
    df = run_projection(run, "lbp", "pca", 2, seed=98, progress=lambda f, _t: heard.append(f))
    assert heard == sorted(heard) and len(heard) == 3
    ref = _lbp_pca(run)
    for k, axis in enumerate("xy"):  # a principal component is defined up to its sign
        assert abs(np.corrcoef(df[axis], ref[:, k])[0, 1]) > 0.999
