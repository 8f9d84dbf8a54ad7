"""The Layers page's decision-tree surrogate section in AppTest: fidelity curve, tree, path in words, leaf examples."""
from __future__ import annotations

import numpy as np
import pytest
from apptest_helpers import chart_spec, open_page, plotly_array
from test_surrogate import imperfect_predictions

import engine
from dashboard.background import forget_results
from dashboard.surrogate_section import TITLE, WRONG_MARK
from engine.surrogate import default_depth

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")
PAGE = "../pages/layers.py"


@pytest.fixture()
def imperfect_cnn(monkeypatch):
    """The tiny test CNNs predict one class for every image (a single-leaf surrogate): the surrogate reads an
    imperfect CNN's predictions instead (its artifacts are keyed by them), and the page's memo is cleared around."""
    monkeypatch.setattr("engine.surrogate.cnn_predictions", imperfect_predictions)
    forget_results()
    yield
    forget_results()


def _node_ids(spec: dict) -> list[int]:
    """The node ids of the tree chart's node markers."""
    return sorted(int(i) for t in spec["data"] if t.get("name", "").startswith("tree predicts")
                  for i in plotly_array(t["customdata"]))


def _path_segments(spec: dict) -> int:
    """How many edges the tree chart draws in black (the traced image's route)."""
    black = next((t for t in spec["data"] if t.get("name") == "traced image's path"), None)
    return 0 if black is None else sum(x is None for x in black["x"])


def test_surrogate_section(app, trained_selection, imperfect_cnn):
    at = open_page(app, trained_selection, PAGE)
    assert TITLE in [s.value for s in at.subheader]
    run = engine.get_run(trained_selection.configs()[-1])  # the page opens at the deepest trained depth
    table = engine.surrogate_fidelity(run, "handcrafted")

    line = next(t for t in chart_spec(at, "surrogate_fidelity")["data"] if t["name"].startswith("test fidelity"))
    np.testing.assert_allclose(plotly_array(line["y"], float), table["test_fidelity"])
    assert plotly_array(line["x"]).tolist() == table["depth"].tolist()
    assert any("not accuracy" in c.value for c in at.caption)

    depth = default_depth(table)
    assert at.select_slider(key="surrogate_depth").value == depth
    tree = engine.surrogate_tree(run, depth, "handcrafted")
    assert len(tree["nodes"]) > 1 and _node_ids(chart_spec(at, "surrogate_tree")) == [n["id"] for n in tree["nodes"]]

    # The picker opens on the first test image the CNN misclassified, marked; its route is listed in words and
    # drawn in black, and the leaf picker opens on its leaf, whose examples are shown.
    picker = at.selectbox(key="surrogate_image")
    preds = run.predictions
    test = (preds["split"] == "test").to_numpy()
    wrong = np.flatnonzero(test & (imperfect_predictions(run) != preds["y"].to_numpy()))
    assert picker.value == wrong[0] and picker.options[picker.index].startswith(WRONG_MARK)
    path = engine.surrogate_path(run, depth, "handcrafted", picker.value)
    words = "\n".join(m.value for m in at.markdown)
    assert all(s["feature"] in words for s in path[:-1])
    assert _path_segments(chart_spec(at, "surrogate_tree")) == len(path) - 1
    assert at.selectbox(key=f"surrogate_leaf_handcrafted-{depth}-{picker.value}").value == path[-1]["node"]
    assert "surrogate_leaf" in {c.key for c in at.get("plotly_chart")}

    # A correctly classified image: its own route.
    right = int(np.flatnonzero(test & (imperfect_predictions(run) == preds["y"].to_numpy()))[0])
    picker.set_value(right).run()
    assert not at.exception
    route = engine.surrogate_path(run, depth, "handcrafted", right)
    assert _path_segments(chart_spec(at, "surrogate_tree")) == len(route) - 1
    assert at.selectbox(key=f"surrogate_leaf_handcrafted-{depth}-{right}").value == route[-1]["node"]
