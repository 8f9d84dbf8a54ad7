"""The Performance page in AppTest: Table 1 with CIs, confusion / ROC / PR / per-class views, metric vs depth."""
from __future__ import annotations


import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from tests.apptest_helpers import chart_spec, open_page, plotly_array

PAGE = "../pages/performance.py"
CHARTS = {"performance_confusion", "performance_roc", "performance_pr", "performance_per_class",
          "performance_depth_curve"}


def _array(v) -> np.ndarray:
    return plotly_array(v, dtype=float)


_chart = chart_spec


def _open(app: AppTest, sel: Selection) -> AppTest:
    return open_page(app, sel, PAGE)


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def _test_split(run: engine.Run):
    rows = run.predictions[run.predictions["split"] == "test"]
    proba = rows[[f"prob_{c}" for c in run.classes]].to_numpy()
    return rows["y"].to_numpy(), rows["pred"].to_numpy(), proba


def test_page_shows_table_1_and_the_test_split_views(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    y, pred, proba = _test_split(run)
    assert {c.key for c in at.get("plotly_chart")} == CHARTS

    table = at.table[0].value
    assert list(table.index) == ["LBP + SVM", "Deep features + SVM", "Fine-tuned CNN"]
    acc = table.loc["Fine-tuned CNN", "ACC"]
    assert acc.startswith(f"{accuracy_score(y, pred):.3f} [")
    low, high = (float(x) for x in acc.split("[")[1].rstrip("]").split(","))
    assert low <= accuracy_score(y, pred) <= high
    assert any(f"n_test = {len(y)}" in c.value for c in at.caption)
    assert any("59-bin uniform LBP" in c.value and "9216-d" in c.value for c in at.caption)

    confusion = _chart(at, "performance_confusion")["data"][0]
    np.testing.assert_array_equal(_array(confusion["z"]), confusion_matrix(y, pred, labels=range(len(run.classes))))
    roc_names = [t["name"] for t in _chart(at, "performance_roc")["data"]]
    for c, name in enumerate(run.classes):
        if 0 < (y == c).sum() < len(y):
            assert f"{name} (AUC {roc_auc_score(y == c, proba[:, c]):.3f})" in roc_names

    per_class = at.dataframe[0].value
    assert list(per_class.columns) == ["class", "precision", "recall", "F1", "support"]
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(len(run.classes)),
                                                                     zero_division=np.nan)
    np.testing.assert_allclose(per_class["recall"].astype(float), recall, equal_nan=True)
    np.testing.assert_array_equal(per_class["support"], support)


def test_depth_slider_and_normalised_confusion(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.select_slider(key="performance_depth").set_value(0).run()
    assert not at.exception
    run = runs[0]
    y, pred, _ = _test_split(run)
    assert any(run.id in c.value for c in at.caption)
    assert at.table[0].value.loc["Fine-tuned CNN", "ACC"].startswith(f"{accuracy_score(y, pred):.3f}")
    at.toggle(key="performance_normalise").set_value(True).run()
    assert not at.exception
    z = _array(_chart(at, "performance_confusion")["data"][0]["z"])
    expected = confusion_matrix(y, pred, labels=range(len(run.classes)), normalize="true")
    np.testing.assert_allclose(z, expected)


def test_metric_selector_redraws_the_depth_curve(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.selectbox(key="performance_metric").set_value("AUC").run()
    assert not at.exception
    line = next(t for t in _chart(at, "performance_depth_curve")["data"] if t["name"] == "alexnet")
    depths = sorted(runs)
    np.testing.assert_array_equal(_array(line["x"]), depths)
    expected = []
    for d in depths:
        y, _, proba = _test_split(runs[d])
        expected.append(roc_auc_score(y == runs[d].positive, proba[:, runs[d].positive]))
    np.testing.assert_allclose(_array(line["y"]), expected)
    assert _chart(at, "performance_depth_curve")["layout"]["yaxis"]["title"]["text"] == "Test AUC"
