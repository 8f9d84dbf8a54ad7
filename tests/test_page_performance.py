"""The Performance page in AppTest: Table 1 with CIs (the best of each column in green, none on a tie), confusion /
ROC / PR / per-class views, metric vs depth, CSV exports of the tables and the HTML report built in the background."""
from __future__ import annotations


import io
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from engine.evaluation import METRICS
from engine.jobs import forget_job, get_job
from tests.apptest_helpers import chart_spec, open_page, plotly_array
from tests.test_crossval import FOLD_DEPTHS, three_fold_selection  # noqa: F401 (a session fixture)

PAGE = "../pages/performance.py"
#: The charts of each section tab (only the open tab's are drawn).
CHARTS = {"table1": set(), "test": {"performance_confusion", "performance_roc", "performance_pr",
                                    "performance_per_class"},
          "depth": {"performance_depth_curve"}, "calibration": {"calibration_reliability", "calibration_prevalence"}}
#: The section tabs' labels by URL code.
SECTIONS = {"table1": "Table 1: CNN vs baselines", "test": "Test split", "folds": "Cross-validation",
            "depth": "Metric vs depth", "calibration": "Calibration", "external": "External test"}


def _array(v) -> np.ndarray:
    return plotly_array(v, dtype=float)


_chart = chart_spec


def _open(app: AppTest, sel: Selection, section: str = "table1") -> AppTest:
    """The page opened on the tab of ``section`` (a URL code)."""
    return open_page(app, sel, PAGE, performance_section=SECTIONS[section])


def _tab(at: AppTest, section: str) -> AppTest:
    """Switch to the tab of ``section`` (a URL code), as a click on it does."""
    at.session_state["performance_section"] = SECTIONS[section]
    at.run()
    assert not at.exception
    return at


def _charts(at: AppTest) -> set[str]:
    return {c.key for c in at.get("plotly_chart")}


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
    assert not _charts(at)  # only Table 1's tab is drawn

    table = at.table[0].value
    assert list(table.index) == ["LBP + SVM", "Deep features + SVM", "Fine-tuned CNN"]
    acc = table.loc["Fine-tuned CNN", "ACC"]
    assert acc.startswith(f"{accuracy_score(y, pred):.3f} [")
    low, high = (float(x) for x in acc.split("[")[1].rstrip("]").split(","))
    assert low <= accuracy_score(y, pred) <= high
    assert any(f"n_test = {len(y)}" in c.value for c in at.caption)
    assert any("59-bin uniform LBP" in c.value and "9216-d" in c.value for c in at.caption)
    assert "section" not in at.query_params  # the first tab is the default

    _tab(at, "test")
    assert _charts(at) == CHARTS["test"] and not at.table
    assert at.query_params["section"] == "test"
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
    assert _charts(_tab(at, "calibration")) == CHARTS["calibration"]


def test_depth_slider_and_normalised_confusion(app, trained_selection, runs):
    at = _open(app, trained_selection)
    at.select_slider(key="performance_depth").set_value(0).run()
    assert not at.exception
    run = runs[0]
    y, pred, _ = _test_split(run)
    assert any(run.id in c.value for c in at.caption)
    assert at.table[0].value.loc["Fine-tuned CNN", "ACC"].startswith(f"{accuracy_score(y, pred):.3f}")
    _tab(at, "test").toggle(key="performance_normalise").set_value(True).run()
    assert not at.exception
    z = _array(_chart(at, "performance_confusion")["data"][0]["z"])
    expected = confusion_matrix(y, pred, labels=range(len(run.classes)), normalize="true")
    np.testing.assert_allclose(z, expected)
    assert at.query_params["normalise"] == "1" and at.query_params["depth"] == "0"


def test_metric_selector_redraws_the_depth_curve(app, trained_selection, runs):
    at = _open(app, trained_selection, "depth")
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
    assert at.query_params["metric"] == "AUC" and at.query_params["section"] == "depth"


def test_a_link_reopens_the_section_and_its_selections(app, trained_selection, runs):
    app.run()
    app.session_state["selection"] = trained_selection
    app.query_params.update({"depth": "0", "section": "test", "normalise": "1"})
    at = app.switch_page(PAGE).run()
    assert not at.exception
    assert at.session_state["performance_section"] == SECTIONS["test"] and _charts(at) == CHARTS["test"]
    y, pred, _ = _test_split(runs[0])
    z = _array(_chart(at, "performance_confusion")["data"][0]["z"])
    np.testing.assert_allclose(z, confusion_matrix(y, pred, labels=range(len(runs[0].classes)), normalize="true"))
    # a stale section falls back to the first tab, and leaves the URL
    at.session_state["performance_section"] = "no such tab"
    at.query_params["section"] = "nonsense"
    at.run()
    assert not at.exception and at.session_state["performance_section"] == SECTIONS["table1"]
    assert "section" not in at.query_params


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
    at = _open(app, three_fold_selection, "folds")
    assert _charts(at) == {"performance_folds_roc"}
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
    at = _open(app, three_fold_selection, "depth")
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
    at = _open(app, trained_selection, "external")
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


# --- exports: a CSV of every table, the HTML report; the best value of each column of Table 1 ---------------------

@pytest.fixture()
def downloads(monkeypatch) -> dict[str, tuple[str | None, str, bytes]]:
    """URL -> (file name, MIME type, bytes) of every file the app offers for download during the test."""
    files: dict[str, tuple[str | None, str, bytes]] = {}
    original = MediaFileManager.add

    def add(self, data, mimetype, coordinates, file_name=None, is_for_static_download=False):
        url = original(self, data, mimetype, coordinates, file_name=file_name,
                       is_for_static_download=is_for_static_download)
        files[url] = (file_name, mimetype, bytes(data))
        return url

    monkeypatch.setattr(MediaFileManager, "add", add)
    return files


def _download(at: AppTest, downloads: dict, key: str) -> tuple[str, bytes]:
    """The file name and bytes behind the download button with ``key``."""
    button = next(b for b in at.get("download_button") if b.key == key)
    name, _mime, data = downloads[button.proto.url]
    return name, data


def _numbers(cell: str) -> list[float]:
    """``"0.912 [0.871, 0.947]"`` -> [0.912, 0.871, 0.947]; ``"n/a"`` -> [nan]."""
    return [float("nan")] if cell == "n/a" else [float(x) for x in re.findall(r"-?\d+\.\d+", cell)]


def test_csv_buttons_hold_the_tables_shown(app, trained_selection, runs, downloads):
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    assert "performance_table1_csv" in {b.key for b in at.get("download_button")}
    name, data = _download(at, downloads, "performance_table1_csv")
    assert name == f"lunglens-alexnet-depth{max(runs)}-table-1.csv"
    csv = pd.read_csv(io.BytesIO(data)).set_index("method")
    shown = at.table[0].value
    assert list(csv.index) == list(shown.index)
    for method in shown.index:
        for metric in METRICS:
            numbers = _numbers(shown.loc[method, metric])
            expected = [csv.loc[method, metric], csv.loc[method, f"{metric}_low"], csv.loc[method, f"{metric}_high"]]
            np.testing.assert_allclose(numbers, expected[: len(numbers)], atol=5e-4)  # shown to 3 decimals
    y, pred, _ = _test_split(run)
    assert csv.loc["Fine-tuned CNN", "ACC"] == pytest.approx(accuracy_score(y, pred))

    name, data = _download(_tab(at, "test"), downloads, "performance_per_class_csv")
    assert name.endswith("-per-class.csv")
    per_class = next(d.value for d in at.dataframe if "support" in d.value.columns)
    csv = pd.read_csv(io.BytesIO(data))
    assert list(csv.columns) == list(per_class.columns) and list(csv["class"]) == list(per_class["class"])
    for column in ("precision", "recall", "F1", "support"):
        np.testing.assert_allclose(csv[column].astype(float), per_class[column].astype(float), equal_nan=True)

    _, data = _download(_tab(at, "depth"), downloads, "performance_depth_csv")
    csv = pd.read_csv(io.BytesIO(data))
    line = next(t for t in _chart(at, "performance_depth_curve")["data"] if t["name"] == "alexnet")
    mine = csv[csv["backbone"] == "alexnet"]  # other tests' runs of other backbones may be cached beside it
    np.testing.assert_allclose(mine.sort_values("depth")["value"], _array(line["y"]))


def test_the_report_button_builds_the_html_report_in_the_background(app, trained_selection, runs, downloads):
    run = runs[max(runs)]
    key = f"html-report:{run.id}:{run.result['finished']}"
    forget_job(key)
    at = _open(app, trained_selection)
    assert "performance_report_download" not in {b.key for b in at.get("download_button")}
    at.button(key="performance_report_build").click().run()
    assert not at.exception
    job = get_job(key)
    assert job is not None and job.wait(120) and job.status == "done", job and job.error
    at.run()
    name, data = _download(at, downloads, "performance_report_download")
    assert name == f"lunglens-alexnet-depth{max(runs)}-report.html"
    text = data.decode("utf-8")
    y, pred, _ = _test_split(run)
    assert text.startswith("<!DOCTYPE html>") and f"<code>{run.id}</code>" in text
    assert "<th>Fine-tuned CNN</th><td" in text and f">{accuracy_score(y, pred):.3f} [" in text
    assert at.button(key="performance_report_build").label == "Build the HTML report again"


def test_the_best_value_of_each_column_is_green_and_a_tie_marks_none(app, trained_selection):
    at = _open(app, trained_selection)
    shown = at.table[0].value
    expected, tied = set(), []
    for c, metric in enumerate(shown.columns):
        if metric not in METRICS:
            continue
        values = np.array([_numbers(v)[0] for v in shown[metric]])
        if np.isnan(values).all():
            continue
        leaders = np.flatnonzero(values == np.nanmax(values))
        if len(leaders) == 1:
            expected.add((int(leaders[0]), c))
        else:
            tied.append(metric)
    styles = at.table[0].proto.arrow_data.styler.styles
    marked = set()
    for selectors, css in re.findall(r"([^{}]+)\{([^}]*)\}", styles):
        if "font-weight: 700" in css:
            assert "#dcfce7" in css and "#b91c1c" not in css  # a green tint, never red
            marked |= {(int(r), int(c)) for r, c in re.findall(r"_row(\d+)_col(\d+)", selectors)}
    assert marked == expected and (marked or tied)
    captions = " ".join(c.value for c in at.caption)
    assert "bold on a green tint" in captions and "Best per column in red" not in captions
    if tied:
        assert f"Tied best ({', '.join(tied)})" in captions
    else:
        assert "Tied best" not in captions


def test_baselines_and_depth_curve_report_progress_and_stop_on_cancel(runs):
    from engine.baselines import compare_methods
    from engine.evaluation import depth_curve

    run = runs[max(runs)]
    with pytest.raises(engine.LungLensError, match="Stopped on request"):
        compare_methods(run, seed=123, cancel=lambda: True)  # a setting never computed: stops before any fit
    assert not run.artifact("compare-methods-seed123-cv5-boot1000-alpha0.05.json").exists()  # nothing partial cached
    heard: list[tuple[float, str]] = []
    curve = depth_curve(list(runs.values()), "ACC", progress=lambda f, t: heard.append((f, t)))
    assert [f for f, _ in heard] == [i / len(runs) for i in range(len(runs))]
    expected = [accuracy_score(*_test_split(r)[:2]) for r in runs.values()]
    np.testing.assert_allclose(curve.sort_values("depth")["value"], [expected[i] for i in np.argsort(list(runs))])
