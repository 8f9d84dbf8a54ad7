"""The Training page in AppTest: the chosen run's curves and cards, the depth slider, compare mode, the empty state."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from tests.apptest_helpers import chart_spec, open_page, plotly_array
from tests.test_crossval import FOLD_DEPTHS, three_fold_selection  # noqa: F401 (a session fixture)

PAGE = "../pages/training.py"


def _array(v) -> np.ndarray:
    return plotly_array(v, dtype=float)


def _traces(at: AppTest, key: str) -> dict[str, dict]:
    """Traces of the chart with ``key`` by name (the last one wins a name shared across panels)."""
    chart = next(c for c in at.get("plotly_chart") if c.key == key)
    return {t.get("name"): t for t in json.loads(chart.proto.spec)["data"]}


def _open(app: AppTest, sel: Selection) -> AppTest:
    return open_page(app, sel, PAGE)


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def _test_rows(run: engine.Run):
    return run.predictions[run.predictions["split"] == "test"]


def test_page_shows_the_chosen_runs_curves_and_cards(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[max(runs)]  # the slider starts at the deepest trained run
    assert {c.key for c in at.get("plotly_chart")} == {"training_loss", "training_criteria"}
    loss = _traces(at, "training_loss")
    assert set(loss) == {"train", "validation", "test"}
    np.testing.assert_allclose(_array(loss["validation"]["y"]), run.history["val_loss"])
    np.testing.assert_allclose(_array(loss["train"]["y"]), run.history["train_loss"])

    cards = {m.label: m.value for m in at.metric}
    rows = _test_rows(run)
    positive = run.classes[run.positive]
    assert cards["Best epoch"] == f"{run.result['best_epoch']} of {len(run.history)}"
    assert cards["Test ACC"] == f"{accuracy_score(rows['y'], rows['pred']):.3f}"
    assert cards["Test AUC"] == f"{roc_auc_score(rows['y'] == run.positive, rows[f'prob_{positive}']):.3f}"
    assert cards["Positive class"] == positive and cards["Initialisation"] == run.config.init
    assert any(run.id in c.value for c in at.caption)
    assert any("dropout" in c.value and "Wan" in c.value for c in at.caption)


def test_depth_slider_switches_the_run(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.select_slider(key="training_depth").set_value(0).run()
    assert not at.exception
    run = runs[0]
    assert any(run.id in c.value for c in at.caption)
    np.testing.assert_allclose(_array(_traces(at, "training_loss")["test"]["y"]), run.history["test_loss"])
    # the criteria chart: the last trace named "test" is the NPV panel's
    np.testing.assert_allclose(_array(_traces(at, "training_criteria")["test"]["y"]), run.history["test_npv"],
                               equal_nan=True)


def test_macro_average_selector_for_three_classes(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.radio(key="training_average").set_value("macro_").run()
    assert not at.exception
    np.testing.assert_allclose(_array(_traces(at, "training_criteria")["train"]["y"]),
                               runs[max(runs)].history["train_macro_npv"], equal_nan=True)


def test_compare_mode_overlays_depths_and_switches_quantity(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.toggle(key="training_compare").set_value(True).run()
    assert not at.exception
    traces = _traces(at, "training_compare_chart")
    lines = {n for n, t in traces.items() if t["mode"] == "lines"}
    assert lines == {f"alexnet d{d} · {s}" for d in runs for s in ("train", "test")}
    np.testing.assert_allclose(_array(traces["alexnet d0 · test"]["y"]), runs[0].history["test_loss"])

    at.selectbox(key="training_compare_quantity").set_value("acc").run()
    at.multiselect(key="training_compare_depths").set_value([5]).run()
    assert not at.exception
    traces = _traces(at, "training_compare_chart")
    assert {n for n, t in traces.items() if t["mode"] == "lines"} == {"alexnet d5 · train", "alexnet d5 · test"}
    np.testing.assert_allclose(_array(traces["alexnet d5 · train"]["y"]), runs[5].history["train_acc"])

    at.multiselect(key="training_compare_depths").set_value([]).run()
    assert not at.exception
    assert not at.get("plotly_chart")
    assert "Pick at least one depth" in at.info[0].value


# --- k-fold cross-validation: one curve per fold -------------------------------------------------------------------

@pytest.fixture(scope="module")
def fold_runs(three_fold_selection) -> list[engine.Run]:  # noqa: F811
    """The 3 folds of the deepest depth, the one the page opens on."""
    cfgs = [c for c in three_fold_selection.configs() if c.depth == max(FOLD_DEPTHS)]
    return [engine.get_run(c) for c in cfgs]


def test_folds_get_a_curve_each_and_the_mean(app, three_fold_selection, fold_runs):  # noqa: F811
    at = _open(app, three_fold_selection)
    assert {c.key for c in at.get("plotly_chart")} == {"training_loss", "training_criteria", "training_folds"}
    assert any(fold_runs[0].id in c.value and "fold 0 of a 3-fold" in c.value for c in at.caption)
    traces = _traces(at, "training_folds")
    lines = [n for n, t in traces.items() if t["mode"] == "lines"]
    assert lines == ["fold 0", "fold 1", "fold 2", "mean of 3 folds"]
    loss = np.array([r.history["val_loss"].to_numpy() for r in fold_runs])  # patience 0: every fold ran all epochs
    for f in range(3):
        np.testing.assert_allclose(_array(traces[f"fold {f}"]["y"]), loss[f])
    np.testing.assert_allclose(_array(traces["mean of 3 folds"]["y"]), loss.mean(axis=0))
    assert traces["mean of 3 folds"]["line"]["width"] > traces["fold 0"]["line"]["width"]
    star = traces["fold 1 · best epoch"]
    assert list(_array(star["x"])) == [fold_runs[1].result["best_epoch"]]
    assert any("A thin line per fold" in c.value and "ddof = 1" in c.value for c in at.caption)
    assert chart_spec(at, "training_folds")["layout"]["yaxis"]["title"]["text"] == "Validation loss"

    at.selectbox(key="training_folds_quantity").set_value("acc").run()
    at.selectbox(key="training_folds_split").set_value("test").run()
    assert not at.exception
    traces = _traces(at, "training_folds")
    acc = np.array([r.history["test_acc"].to_numpy() for r in fold_runs])
    np.testing.assert_allclose(_array(traces["fold 2"]["y"]), acc[2])
    np.testing.assert_allclose(_array(traces["mean of 3 folds"]["y"]), acc.mean(axis=0))
    assert chart_spec(at, "training_folds")["layout"]["yaxis"]["title"]["text"] == "Test ACC"


def test_missing_folds_are_named_with_what_to_do(app, three_fold_selection, fold_runs,  # noqa: F811
                                                 tmp_path, monkeypatch):
    home = tmp_path / "home"
    for run in fold_runs[:1]:  # only fold 0 of the deepest depth
        shutil.copytree(run.dir, home / "runs" / run.dir.name)
    monkeypatch.setenv("LUNGLENS_HOME", str(home))
    at = _open(app, three_fold_selection)
    assert "training_folds" not in {c.key for c in at.get("plotly_chart")}
    assert any("folds 1, 2 (numbered from 0) are not trained yet" in w.value and "Home" in w.value
               for w in at.warning)
