"""The calibration and operating-point sections in AppTest, checked against scikit-learn on the run's predictions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_curve
from streamlit.testing.v1 import AppTest

import engine
from tests.apptest_helpers import chart_spec, plotly_array


def _script(run_id: str) -> None:
    import engine
    from dashboard.calibration_section import calibration_section

    calibration_section(engine.load_run(run_id))  # the selection's deepest run, as the Performance page passes it


@pytest.fixture(scope="module")
def run(trained_selection) -> engine.Run:
    return engine.get_run(trained_selection.configs()[-1])


@pytest.fixture()
def at(trained_selection, run) -> AppTest:
    app = AppTest.from_function(_script, default_timeout=60, args=(run.id,))
    app.session_state["selection"] = trained_selection
    app.run()
    assert not app.exception
    return app


def _rows(run: engine.Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = run.predictions[run.predictions["split"] == split]
    return (rows["y"].to_numpy() == run.positive), rows[f"prob_{run.classes[run.positive]}"].to_numpy(dtype=float)


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _shown_test_figures(at: AppTest, run: engine.Run, threshold: float) -> None:
    """The shown test sensitivity / specificity and counts equal a computation from run.predictions."""
    is_pos, score = _rows(run, "test")
    called = score >= threshold
    tp, fn = int((is_pos & called).sum()), int((is_pos & ~called).sum())
    tn, fp = int((~is_pos & ~called).sum()), int((~is_pos & called).sum())
    assert _metric(at, "Test Sensitivity") == f"{tp / (tp + fn):.3f}"
    assert _metric(at, "Test Specificity") == f"{tn / (tn + fp):.3f}"
    table = at.dataframe[1].value.set_index("split")
    assert tuple(table.loc["test", ["TP", "FP", "TN", "FN"]]) == (tp, fp, tn, fn)


def test_reliability_chart_and_table_equal_sklearn(at, run):
    spec = chart_spec(at, "calibration_reliability")
    traces = {t["name"]: t for t in spec["data"]}
    assert "perfect calibration" in traces
    table = at.dataframe[0].value.set_index("split")
    for split in ("train", "val", "test"):
        is_pos, score = _rows(run, split)
        prob_true, prob_pred = calibration_curve(is_pos, score, n_bins=10)
        np.testing.assert_allclose(plotly_array(traces[split]["x"], float), prob_pred, atol=1e-9)
        np.testing.assert_allclose(plotly_array(traces[split]["y"], float), prob_true, atol=1e-9)
        assert table.loc[split, "Brier"] == pytest.approx(brier_score_loss(is_pos, score), abs=1e-12)
        # ECE by hand: bins (lo, hi] of width 0.1 (the first includes 0); sum over bins of |positives - sum of p| / N.
        bins = np.digitize(score, np.linspace(0, 1, 11)[1:-1], right=True)
        ece = sum(abs(is_pos[bins == b].sum() - score[bins == b].sum()) for b in range(10)) / len(score)
        assert table.loc[split, "ECE"] == pytest.approx(ece, abs=1e-12)
    assert {"ECE", "Brier", "images"} <= set(table.columns)
    assert any("diagonal" in c.value for c in at.caption)

    at.toggle(key="calibration_temperature").set_value(True).run()
    assert not at.exception
    assert {"ECE after T", "Brier after T"} <= set(at.dataframe[0].value.columns)
    t = engine.calibration.run_temperature(run)
    assert _metric(at, "Temperature T") == f"{t:.3f}"
    assert any("Guo et al. 2017" in c.value and "validation" in c.value for c in at.caption)
    names = [tr["name"] for tr in chart_spec(at, "calibration_reliability")["data"]]
    assert f"test after T = {t:.2f}" in names and "test before" in names


def test_threshold_slider_and_presets_change_the_test_figures(at, run):
    _shown_test_figures(at, run, 0.5)  # the default: Custom at 0.5
    at.slider(key="calibration_threshold").set_value(0.2).run()
    assert not at.exception
    _shown_test_figures(at, run, 0.2)
    assert at.radio(key="calibration_preset").value == "custom"

    val_pos, val_score = _rows(run, "val")
    fpr, tpr, thresholds = roc_curve(val_pos, val_score, drop_intermediate=False)
    youden = thresholds[1:][np.argmax((tpr - fpr)[1:])]
    at.radio(key="calibration_preset").set_value("youden").run()
    assert not at.exception
    assert at.slider(key="calibration_threshold").value == pytest.approx(youden)
    _shown_test_figures(at, run, youden)
    assert any("chosen on the validation split" in c.value for c in at.caption)

    at.radio(key="calibration_preset").set_value("sensitivity95").run()
    assert not at.exception
    screening = at.slider(key="calibration_threshold").value
    assert (val_score[val_pos] >= screening).mean() >= 0.95
    assert all((val_score[val_pos] >= s).mean() < 0.95 for s in val_score[val_score > screening])
    _shown_test_figures(at, run, screening)
    assert at.dataframe[1].value.set_index("split").loc["val", "sensitivity"] >= 0.95


def test_prevalence_chart_marks_the_test_prevalence(at, run):
    is_pos, score = _rows(run, "test")
    spec = chart_spec(at, "calibration_prevalence")
    traces = {t["name"]: t for t in spec["data"]}
    x = plotly_array(traces["PPV"]["x"], float)
    assert x[0] == 0 and x[-1] == 1
    marker = plotly_array(traces["test split prevalence"]["x"], float)
    np.testing.assert_allclose(marker, is_pos.mean())
    called = score >= 0.5
    ppv_here = (is_pos & called).sum() / called.sum() if called.any() else np.nan
    npv_here = (~is_pos & ~called).sum() / (~called).sum()
    marked = plotly_array(traces["test split prevalence"]["y"], float)
    np.testing.assert_allclose(marked, [ppv_here, npv_here], equal_nan=True)


def test_a_link_reopens_temperature_preset_and_a_custom_threshold(trained_selection, run):
    app = AppTest.from_function(_script, default_timeout=60, args=(run.id,))
    app.session_state["selection"] = trained_selection
    app.query_params.update({"cutoff": "0.3", "temperature": "0"})
    app.run()
    assert not app.exception and app.slider(key="calibration_threshold").value == pytest.approx(0.3)
    _shown_test_figures(app, run, 0.3)
    assert app.query_params["cutoff"] == "0.300" and "preset" not in app.query_params
    app.radio(key="calibration_preset").set_value("youden").run()
    assert app.query_params["preset"] == "youden" and "cutoff" not in app.query_params  # the preset says it all
    bad = AppTest.from_function(_script, default_timeout=60, args=(run.id,))
    bad.query_params.update({"cutoff": "high", "preset": "median"})
    bad.run()
    assert not bad.exception and bad.slider(key="calibration_threshold").value == 0.5
    assert bad.radio(key="calibration_preset").value == "custom"
