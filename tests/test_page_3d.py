"""Features and Layers in AppTest on a 3-D CT run: what applies is drawn, what does not is said in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from streamlit.testing.v1 import AppTest

import engine
from engine.lbp import LBP_VOLUME_REASON
from engine.projections import run_features
from tests.apptest_helpers import chart_spec, layer_charts, open_page, plotly_array

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


@pytest.fixture()
def ct_app(trained_ct) -> AppTest:
    """An AppTest of the dashboard with the tiny 3-D experiment selected."""
    at = AppTest.from_file(str(HOME), default_timeout=300)
    at.session_state["selection"] = trained_ct
    return at


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_features_show_deep_features_and_say_why_lbp_is_absent(ct_app, trained_ct):
    at = open_page(ct_app, trained_ct, "../pages/features.py")
    assert [i.value for i in at.info if "LBP" in i.value] == [f"No LBP chart for this run. {LBP_VOLUME_REASON}"]
    assert {c.key for c in at.get("plotly_chart")} == {"features_deep"}
    run = engine.get_run(trained_ct.config.replace(depth=at.select_slider(key="features_depth").value))

    # The PCA of the engine's deep features and its silhouette, by scikit-learn.
    feats = run_features(run, "deep")
    assert feats.shape == (len(run.predictions), 512)
    points = PCA(n_components=2).fit_transform(StandardScaler().fit_transform(feats.astype(np.float64)))
    y = run.predictions["y"].to_numpy()
    assert [m.value for m in at.metric if m.label == "Silhouette"] == [f"{silhouette_score(points, y):.3f}"]
    traces = chart_spec(at, "features_deep")["data"]
    rows = np.concatenate([plotly_array(t["customdata"]) for t in traces]).astype(int)
    shown = np.concatenate([np.column_stack([plotly_array(t["x"]), plotly_array(t["y"])]) for t in traces])
    shown = shown[np.argsort(rows)]
    signs = np.sign((shown * points).sum(axis=0))  # a principal axis is defined up to its sign
    np.testing.assert_allclose(shown * signs, points, atol=1e-3 * np.abs(points).max())
    assert "512-d globally average-pooled output" in _captions(at)


def test_layers_show_kernel_sections_and_slice_views(ct_app, trained_ct):
    at = open_page(ct_app, trained_ct, "../pages/layers.py")
    assert layer_charts(at) == {"layers_filters", "layers_neurons"}
    assert at.radio(key="layers_section").value == "axial"
    captions = _captions(at)
    assert "3-D kernels of 7 × 7 × 7 weights" in captions and "central axial section (slice 4 of 7)" in captions
    at.radio(key="layers_section").set_value("all").run()
    assert not at.exception and "axial, coronal and sagittal sections side by side" in _captions(at)

    run = engine.get_run(trained_ct.config.replace(depth=at.select_slider(key="layers_depth").value))
    row = at.selectbox(key="layers_image").value
    z = engine.layers.case_slice(run, row)
    assert at.slider(key=f"layers_slice_{row}").value == z + 1
    neurons = chart_spec(at, "layers_neurons")
    assert len(neurons["data"]) == 9  # the slice and 8 reconstructions
    assert "fig. 9 in 3-D" in _captions(at) and f"axial slice {z + 1} of {run.images().shape[1]}" in _captions(at)

    at.session_state["layers_view"] = "Activation maps"
    at.run()
    assert not at.exception
    assert layer_charts(at) == {"layers_filters", "layers_activations"}
    tiles = chart_spec(at, "layers_activations")["data"]
    assert len([t for t in tiles if t["type"] == "image"]) == at.slider(key="layers_top_n").value
    at.slider(key=f"layers_slice_{row}").set_value(1).run()
    assert not at.exception and "axial slice 1 of" in _captions(at)
