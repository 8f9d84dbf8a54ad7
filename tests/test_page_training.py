"""The Training page in AppTest: the chosen run's curves and cards, the depth slider, compare mode, the empty state,
CSV and PNG exports, and links that reopen a view."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection, link_params
from tests.apptest_helpers import chart_spec, open_page, plotly_array
from tests.test_crossval import FOLD_DEPTHS, three_fold_selection  # noqa: F401 (a session fixture)
from tests.test_exports import csv_table, download, downloads  # noqa: F401 (a fixture)

PAGE = "../pages/training.py"
HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


def _array(v) -> np.ndarray:
    return plotly_array(v, dtype=float)


def _traces(at: AppTest, key: str) -> dict[str, dict]:
    """Traces of the chart with ``key`` by name (the last one wins a name shared across panels)."""
    chart = next(c for c in at.get("plotly_chart") if c.key == key)
    return {t.get("name"): t for t in json.loads(chart.proto.spec)["data"]}


def _open(app: AppTest, sel: Selection) -> AppTest:
    return open_page(app, sel, PAGE)


def _open_link(app: AppTest, sel: Selection, **params: str) -> AppTest:
    """Open the page as a link with ``params`` would, in a new session (Home runs first and drops other pages'
    parameters, so they are added after it)."""
    app.run()
    app.session_state["selection"] = sel
    app.query_params.update(params)
    app.switch_page(PAGE).run()
    assert not app.exception
    return app


def _new_app(sel: Selection) -> AppTest:
    """A new session (as a link opened in another browser tab) with ``sel`` chosen."""
    at = AppTest.from_file(str(HOME), default_timeout=120)
    at.session_state["selection"] = sel
    return at


def _config(at: AppTest, key: str) -> dict:
    return json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.config)


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


def test_history_csv_and_png_names(app, trained_selection, runs, downloads):  # noqa: F811
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    file = download(at, "training_history_csv", downloads)
    assert file.filename == "lunglens-alexnet-depth5-history.csv"
    pd.testing.assert_frame_equal(csv_table(file), run.history, check_dtype=False)
    assert _config(at, "training_loss")["toImageButtonOptions"]["filename"] == "lunglens-alexnet-depth5-loss"
    assert _config(at, "training_criteria")["toImageButtonOptions"]["filename"] == "lunglens-alexnet-depth5-criteria"
    assert {"zoom2d", "pan2d"} <= set(_config(at, "training_loss")["modeBarButtonsToRemove"])
    assert at.query_params["depth"] == "5" and at.query_params["data"] == "builtin"


def test_epoch_mark_labels_sit_above_the_plot_without_overlapping(runs):
    from dashboard.training_charts import loss_figure

    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5, 6], "lr": [1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5],
                            "train_loss": np.linspace(1, 0.5, 6), "test_loss": np.linspace(1.1, 0.7, 6)})
    # best epoch 5, early stop after 6 and a learning-rate drop at 6: three labels on neighbouring epochs
    fig = loss_figure(history, best_epoch=5, stopped_early=True)
    labels = {a.text: a for a in fig.layout.annotations}
    assert set(labels) == {"best epoch 5", "early stop after 6", "lr → 1e-04", "lr → 1e-05"}
    assert all(a.yref == "y domain" and a.y == 1 and a.yanchor == "bottom" for a in labels.values())  # above
    near = [labels[t].yshift for t in ("best epoch 5", "early stop after 6", "lr → 1e-05")]
    assert len(set(near)) == 3  # each on its own lane
    assert labels["lr → 1e-04"].yshift == min(near)  # epoch 4 is alone on the left: the lowest lane
    assert labels["early stop after 6"].xanchor == "right"  # the last epoch's label points into the plot
    assert fig.layout.margin.t > max(a.yshift for a in labels.values()) + 11  # the lanes fit in the top margin
    assert fig.layout.legend.y < 0  # the legend moved under the plot, out of the labels' way


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


def _lines(at: AppTest, key: str) -> list[dict]:
    """The line traces of a chart (not its best-epoch stars), named by run and split (from their meta)."""
    spec = json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.spec)
    return [t | {"name": t["meta"]["run"], "meta": t["meta"]["split"]} for t in spec["data"] if t["mode"] == "lines"]


def _luminance(colour: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", colour)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_compare_mode_overlays_depths_and_switches_quantity(app, trained_selection, runs, downloads):  # noqa: F811
    at = _open(app, trained_selection)
    at.toggle(key="training_compare").set_value(True).run()
    assert not at.exception
    # only the overlay: no single-run slider, cards or curves above it
    assert not at.get("select_slider") and not at.metric
    assert {c.key for c in at.get("plotly_chart")} == {"training_compare_chart"}
    lines = _lines(at, "training_compare_chart")
    assert {(t["name"], t["meta"]) for t in lines} == {(f"alexnet d{d}", s) for d in runs for s in ("train", "test")}
    assert sorted(t["legendgroup"] for t in lines if t.get("showlegend", True)) == ["depth 0", "depth 5"]  # one each
    panel = {t["meta"]: t["xaxis"] for t in lines}
    assert panel == {"train": "x", "test": "x2"}  # a panel per split
    test0 = next(t for t in lines if t["name"] == "alexnet d0" and t["meta"] == "test")
    np.testing.assert_allclose(_array(test0["y"]), runs[0].history["test_loss"])
    colour = {t["name"]: t["line"]["color"] for t in lines}
    assert _luminance(colour["alexnet d5"]) < _luminance(colour["alexnet d0"])  # deeper is darker
    assert json.loads(next(c for c in at.get("plotly_chart")).proto.spec)["layout"]["legend"]["orientation"] == "h"

    at.selectbox(key="training_compare_quantity").set_value("acc").run()
    at.button_group(key="training_compare_depths").set_value([5]).run()
    assert not at.exception
    lines = _lines(at, "training_compare_chart")
    assert {(t["name"], t["meta"]) for t in lines} == {("alexnet d5", "train"), ("alexnet d5", "test")}
    train5 = next(t for t in lines if t["meta"] == "train")
    np.testing.assert_allclose(_array(train5["y"]), runs[5].history["train_acc"])
    table = csv_table(download(at, "training_compare_csv", downloads))
    assert list(table.columns) == ["run", "split", "epoch", "acc"]
    for split in ("train", "test"):
        rows = table[table["split"] == split]
        assert set(rows["run"]) == {"alexnet d5"}
        np.testing.assert_allclose(rows["acc"], runs[5].history[f"{split}_acc"])
    assert at.query_params["compare"] == "1" and at.query_params["quantity"] == "acc"
    assert at.query_params["runs"] == "5"

    at.button_group(key="training_compare_depths").set_value([]).run()
    assert not at.exception
    assert not at.get("plotly_chart")
    assert "Pick at least one depth" in at.info[0].value

    at.toggle(key="training_compare").set_value(False).run()  # back to one run: the link's depth comes back
    assert at.select_slider(key="training_depth").value == 5 and "compare" not in at.query_params


# --- links ----------------------------------------------------------------------------------------------------------

def test_a_link_reopens_the_depth_and_selections(app, trained_selection, runs):
    at = _open_link(app, trained_selection, depth="0", average="macro_")
    assert at.select_slider(key="training_depth").value == 0 and at.radio(key="training_average").value == "macro_"
    assert any(runs[0].id in c.value for c in at.caption)
    np.testing.assert_allclose(_array(_traces(at, "training_criteria")["train"]["y"]),
                               runs[0].history["train_macro_npv"], equal_nan=True)
    assert at.query_params["depth"] == "0" and at.query_params["average"] == "macro_"


def test_a_link_to_compare_mode(app, trained_selection, runs):
    at = _open_link(app, trained_selection, compare="1", quantity="specificity", runs="0", splits="val")
    assert at.toggle(key="training_compare").value is True
    lines = _lines(at, "training_compare_chart")
    assert [(t["name"], t["meta"]) for t in lines] == [("alexnet d0", "val")]
    np.testing.assert_allclose(_array(lines[0]["y"]), runs[0].history["val_specificity"])


def test_stale_values_in_a_link_fall_back_to_the_defaults(app, trained_selection, runs):
    at = _open_link(app, trained_selection, depth="3", average="micro_", compare="maybe")
    assert not at.error
    assert at.select_slider(key="training_depth").value == 5 and at.radio(key="training_average").value == ""
    assert at.query_params["depth"] == "5" and "average" not in at.query_params and "compare" not in at.query_params
    at = _open_link(_new_app(trained_selection), trained_selection, compare="1", quantity="f1", runs="4",
                    splits="dev")
    assert not at.error
    assert at.selectbox(key="training_compare_quantity").value == "loss"
    assert {(t["name"], t["meta"]) for t in _lines(at, "training_compare_chart")} == {
        (f"alexnet d{d}", s) for d in runs for s in ("train", "test")}


def test_a_link_reopens_the_experiment_in_a_new_session(trained_selection, runs):
    """A fresh session (nothing chosen on Home) opens on the experiment the link names."""
    at = AppTest.from_file(str(HOME), default_timeout=120)
    at.query_params.update({k: v for k, v in link_params(trained_selection).items() if v is not None})
    at.query_params["depth"] = "0"
    at.run()
    assert at.session_state["selection"] == trained_selection
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any(runs[0].id in c.value for c in at.caption)

    # a dataset this machine lacks and an unreadable field: left at the demo's values, with a notice, no error
    link = link_params(trained_selection)
    bad = AppTest.from_file(str(HOME), default_timeout=120)
    bad.query_params.update({"data": "no-such-dataset", "cfg": f"{link['cfg']},momentum:high", "depths": "0,5"})
    bad.run()
    assert not bad.exception and not bad.error
    assert bad.session_state["selection"] == trained_selection  # builtin is the demo's data; momentum the demo's
    assert "data no-such-dataset; momentum:high" in bad.toast[0].value


# --- k-fold cross-validation: one curve per fold -------------------------------------------------------------------

@pytest.fixture(scope="module")
def fold_runs(three_fold_selection) -> list[engine.Run]:  # noqa: F811
    """The 3 folds of the deepest depth, the one the page opens on."""
    cfgs = [c for c in three_fold_selection.configs() if c.depth == max(FOLD_DEPTHS)]
    return [engine.get_run(c) for c in cfgs]


def test_folds_get_a_curve_each_and_the_mean(app, three_fold_selection, fold_runs, downloads):  # noqa: F811
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
    file = download(at, "training_folds_csv", downloads)
    assert file.filename == f"lunglens-alexnet-depth{max(FOLD_DEPTHS)}-folds-val-loss.csv"
    table = csv_table(file)
    np.testing.assert_array_equal(table["epoch"], fold_runs[0].history["epoch"])
    for f in range(3):
        np.testing.assert_allclose(table[f"fold_{f}"], loss[f])
    np.testing.assert_allclose(table["mean"], loss.mean(axis=0))
    np.testing.assert_allclose(table["sd"], loss.std(axis=0, ddof=1))

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
