"""The Performance page in AppTest: Table 1 with CIs, confusion / ROC / PR / per-class views, metric vs depth."""
from __future__ import annotations


import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from tests.apptest_helpers import chart_spec, open_page, plotly_array
from tests.test_crossval import FOLD_DEPTHS, three_fold_selection  # noqa: F401 (a session fixture)

PAGE = "../pages/performance.py"
CHARTS = {"performance_confusion", "performance_roc", "performance_pr", "performance_per_class",
          "performance_depth_curve", "calibration_reliability", "calibration_prevalence"}


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


# --- k-fold cross-validation: per-fold ROC curves, mean ± sd AUC, the depth curve of fold means --------------------

@pytest.fixture(scope="module")
def folds(three_fold_selection) -> dict[int, list[engine.Run]]:  # noqa: F811
    out: dict[int, list[engine.Run]] = {}
    for cfg in three_fold_selection.configs():
        out.setdefault(cfg.depth, []).append(engine.get_run(cfg))
    return out


def _positive_auc(run: engine.Run) -> float:
    y, _, proba = _test_split(run)
    return roc_auc_score(y == run.positive, proba[:, run.positive])


def test_cross_validation_section_shows_each_folds_roc_and_mean_sd_auc(app, three_fold_selection, folds):  # noqa: F811
    at = _open(app, three_fold_selection)
    assert {c.key for c in at.get("plotly_chart")} == CHARTS | {"performance_folds_roc"}
    runs = folds[max(FOLD_DEPTHS)]  # the page opens on the deepest depth
    aucs = [_positive_auc(r) for r in runs]
    spec = _chart(at, "performance_folds_roc")
    names = [t["name"] for t in spec["data"]]
    assert names == [f"fold {f} (AUC {a:.3f})" for f, a in enumerate(aucs)] + ["chance"]
    y, _, proba = _test_split(runs[2])
    fpr, tpr, _ = roc_curve(y == runs[2].positive, proba[:, runs[2].positive])
    np.testing.assert_allclose(_array(spec["data"][2]["x"]), fpr)
    np.testing.assert_allclose(_array(spec["data"][2]["y"]), tpr)
    title = spec["layout"]["title"]["text"]
    assert f"AUC {np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f} (mean ± sd)" in title and "3 folds" in title

    table = next(d.value for d in at.dataframe if "fold" in d.value.columns)
    assert list(table["fold"]) == ["0", "1", "2", "mean", "sd"]
    np.testing.assert_allclose(table["AUC"].astype(float), [*aucs, np.mean(aucs), np.std(aucs, ddof=1)])
    accs = [accuracy_score(*_test_split(r)[:2]) for r in runs]
    np.testing.assert_allclose(table["ACC"].astype(float)[:3], accs)
    assert list(table["run"][:3]) == [r.id for r in runs]
    assert any("ddof = 1" in c.value and f"same {len(y)} test images" in c.value for c in at.caption)


def test_depth_curve_uses_the_fold_mean_with_sd_error_bars(app, three_fold_selection, folds):  # noqa: F811
    at = _open(app, three_fold_selection)
    at.selectbox(key="performance_metric").set_value("AUC").run()
    assert not at.exception
    spec = _chart(at, "performance_depth_curve")
    line = next(t for t in spec["data"] if t["name"] == "alexnet")
    depths = sorted(folds)
    aucs = np.array([[_positive_auc(r) for r in folds[d]] for d in depths])
    np.testing.assert_array_equal(_array(line["x"]), depths)
    np.testing.assert_allclose(_array(line["y"]), aucs.mean(axis=1))
    np.testing.assert_allclose(_array(line["error_y"]["array"]), aucs.std(axis=1, ddof=1))
    np.testing.assert_allclose(_array(line["error_y"]["arrayminus"]), aucs.std(axis=1, ddof=1))
    assert spec["layout"]["yaxis"]["title"]["text"] == "Test AUC (mean over folds)"
    assert any("mean over the 3 folds" in c.value and "ddof = 1" in c.value for c in at.caption)


def test_external_section_scores_another_folder_next_to_the_test_split(app, trained_selection, runs, tmp_path):
    from engine.external import ExternalRun, external_dataset
    from conftest import write_tiny_folder

    site = write_tiny_folder(tmp_path / "site", per_class=6, seed=11)
    at = _open(app, trained_selection)
    at.selectbox(key="performance_external_folder_choice").set_value("A folder on this machine").run()
    at.text_input(key="performance_external_folder_path").input(str(site)).run()
    assert not at.exception
    run = runs[max(runs)]
    view = ExternalRun(run, external_dataset(site))
    rows = view.predictions
    shown = {m.label: m.value for m in at.metric}
    assert shown["External images scored"] == "18" and shown["Left out (class unknown to the run)"] == "0"
    gap = next(t.value for t in at.table if "external test" in t.value.columns)
    acc = gap.set_index("metric").loc["ACC"]
    internal_y, internal_pred, _ = _test_split(run)
    assert acc["internal test"].startswith(f"{accuracy_score(internal_y, internal_pred):.3f} [")
    external_acc = accuracy_score(rows["y"], rows["pred"])
    assert acc["external test"].startswith(f"{external_acc:.3f}")
    assert acc["gap (external − internal)"] == f"{external_acc - accuracy_score(internal_y, internal_pred):+.3f}"
    curve = _chart(at, "external_depth_curve")["data"]
    assert [t["name"] for t in curve] == ["external test", "internal test"]
    depths = sorted(runs)
    internal_auc = [roc_auc_score(*(lambda y, p: (y == r.positive, p[:, r.positive]))(*_test_split(r)[::2]))
                    for r in (runs[d] for d in depths)]
    np.testing.assert_allclose(_array(curve[1]["y"]), internal_auc)
