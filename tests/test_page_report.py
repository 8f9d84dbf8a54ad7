"""The explanation report on the Support Regions page, in AppTest on the tiny trained runs: the methods x scores table
against the engine's rows, the CSV download, the background job (progress, cancel, results), sanity warnings next
to maps, and the message that replaces an empty map."""
from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import engine
from dashboard.report_charts import format_ci
from engine.explain import METHODS, layer_choices
from engine.explain.report import ReportSettings, explanation_report, method_report, report_rows
from engine.jobs import get_job, start_job
from engine.store import atomic_write_npz
from tests.apptest_helpers import chart_spec, open_page

PAGE = "../pages/support_regions.py"
HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
#: Small report settings, set through the page's own widgets, so that every row computes in seconds.
SMALL = ReportSettings(faithfulness_images=4, road_images=2, sanity_images=2, deletion_steps=8)
CHEAP = ["gradcam", "saliency"]


def _state(methods, section="Explanation report", settings=SMALL) -> dict:
    state = {"support_section": section, "support_report_methods": list(methods)}
    for field in ("faithfulness_images", "road_images", "sanity_images", "deletion_steps"):
        state[f"support_report_{field}"] = getattr(settings, field)
    return state


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def _table(at):
    """The report table (the report view's only dataframe)."""
    assert len(at.dataframe) == 1
    return at.dataframe[0].value


def _texts(at) -> list[str]:
    return [e.value for kind in ("warning", "caption", "info", "success", "error", "markdown") for e in at.get(kind)]


def test_report_table_shows_the_cached_rows_with_intervals_and_best_marks(app, trained_selection, runs):
    run = runs[max(runs)]
    report = explanation_report(run, CHEAP, SMALL)  # what the page must show, computed here by the engine
    at = open_page(app, trained_selection, PAGE, **_state(CHEAP))
    table = _table(at)
    assert table["Method"].tolist() == [METHODS[m].label for m in CHEAP]
    for i, r in report.iterrows():
        assert table.loc[i, "Images"] == r["n_images"]
        shown = table.loc[i, "Consistency"].removeprefix("★ ")
        assert shown == format_ci(r["consistency"], r["consistency_ci"])
        assert table.loc[i, "Lung-area baseline"] == format_ci(r["lung_area_matched_baseline"],
                                                              r["lung_area_matched_baseline_ci"])
        assert table.loc[i, "Beats chance"] == ("yes" if r["beats_chance"] else "no")
        assert table.loc[i, "Sanity check"].startswith("pass" if r["sanity_pass"] else "FAIL")
        assert f"SSIM {r['sanity_ssim']:.2f}" in table.loc[i, "Sanity check"]
    # the best mean of a column is starred, ties included, and nothing else is
    for column, key in (("Consistency", "consistency"), ("Insertion AUC", "insertion_auc")):
        values = report[key].astype(float)
        best = np.isclose(values, values.max())
        assert [c.startswith("★") for c in table[column]] == best.tolist()
    deletion = report["deletion_auc"].astype(float)
    assert [c.startswith("★") for c in table["Deletion AUC ↓"]] == np.isclose(deletion, deletion.min()).tolist()

    downloads = at.get("download_button")
    assert len(downloads) == 1 and downloads[0].label == "Download the table (CSV)"
    assert {"support_report_sanity", "support_report_curve", "support_report_depths"} <= {
        c.key for c in at.get("plotly_chart")}
    sanity = chart_spec(at, "support_report_sanity")
    ssim = [t for t in sanity["data"] if t["xaxis"] == "x2"]
    assert [t["name"] for t in ssim] == [METHODS[m].label for m in CHEAP]
    assert any("Wan §3.5" in t and "60.02%" in t and "Adebayo" in t and "Rong et al. 2022" in t for t in _texts(at))
    # depth 0 has no rows at these settings yet: the page says so and offers to compute them
    assert any(t.startswith("Not computed yet: depth 0 (") for t in _texts(at))
    assert not at.button(key="support_report_compute_depths").disabled
    assert at.button(key="support_report_compute").disabled  # everything chosen is cached at this depth


def test_compute_runs_in_the_background_and_fills_the_table(app, trained_selection, runs):
    at = open_page(app, trained_selection, PAGE, **_state(["eigencam"]))
    assert not at.dataframe
    assert "press **Compute**" in at.info[0].value
    at.button(key="support_report_compute").click().run()
    job = get_job(at.session_state["support_report_job"])
    assert job is not None and job.wait(300)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception
    assert _table(at)["Method"].tolist() == ["EigenCAM"]
    assert any("computed in" in s.value for s in at.success)


def test_a_running_job_shows_progress_and_can_be_cancelled(app, trained_selection):
    gate, checked = threading.Event(), threading.Event()

    def work(progress, cancelled):
        progress(0.4, "Grad-CAM: maps 8/20")
        gate.wait(30)
        checked.set()
        if cancelled():
            raise engine.explain.report.Cancelled("Stopped on request; nothing partial was cached.")
        return 1

    job = start_job("test-page-report-cancel", "Explanation report: 1 method row(s)", work)
    state = _state(CHEAP) | {"support_report_job": job.key}
    at = open_page(app, trained_selection, PAGE, **state)
    bars = at.get("progress")
    assert len(bars) == 1 and "Grad-CAM: maps 8/20" in bars[0].proto.text and "40%" in bars[0].proto.text
    assert at.button(key="support_report_compute").disabled  # one job at a time
    at.button(key="support_report_cancel").click().run()
    assert job.cancel_requested
    gate.set()
    assert checked.wait(10) and job.wait(10)
    at.run()
    assert job.status == "cancelled"
    assert any(i.value.startswith("Cancelled") for i in at.info)
    assert not at.get("progress")


def test_a_failing_sanity_check_is_a_warning_next_to_the_map(app, trained_selection, runs, monkeypatch):
    run = runs[max(runs)]
    settings = ReportSettings(faithfulness_images=2, road_images=2, sanity_images=2, deletion_steps=8)
    before = set(run.artifact("explain").glob("report-guided-backprop-*.json"))
    # A cached row written by the engine, its verdict forced to fail (what Adebayo et al. found for this method).
    monkeypatch.setattr(engine.explain.report, "sanity_verdict",
                        lambda table: {"sanity_ssim": 0.93, "sanity_spearman": 0.91, "sanity_pass": False})
    row = method_report(run, "guided-backprop", settings)
    monkeypatch.undo()
    assert row["sanity_pass"] is False
    try:
        at = open_page(app, trained_selection, PAGE, support_section="Explain an image",
                       support_methods=["gradcam", "guided-backprop"])
        warnings = [w.value for w in at.warning]
        assert any(w.startswith("Guided backpropagation fails the model-randomisation sanity check") and
                   "SSIM 0.93" in w and "image structure, not the model's reasoning" in w for w in warnings)
        assert any("Grad-CAM" in t and "sanity check" in t for t in _texts(at))

        at = open_page(AppTest.from_file(str(HOME), default_timeout=120), trained_selection, PAGE,
                       **_state(["guided-backprop"], settings=settings))
        assert _table(at).loc[0, "Sanity check"] == "FAIL (SSIM 0.93)"
        assert any("fails the model-randomisation sanity check" in w.value for w in at.warning)
    finally:
        for path in set(run.artifact("explain").glob("report-guided-backprop-*.json")) - before:
            path.unlink()  # other tests see the verdicts as measured


def test_an_empty_map_is_said_not_drawn_blank(app, trained_selection, runs):
    run = runs[max(runs)]
    from engine.explain.runs_explain import _key as explanation_key

    # An all-zero map in the engine's cache of one image's explanation (XGradCAM of class 1 for test row 0).
    params: dict = {}
    name = f"explain/image-0-{explanation_key('xgradcam', 'test', 1, params)}.npz"
    atomic_write_npz(run.artifact(name), heatmap=np.zeros((run.config.image_size,) * 2, np.float32))
    try:
        at = open_page(app, trained_selection, PAGE, support_section="Explain an image", support_image=0,
                       support_methods=["xgradcam"], support_target="Another class",
                       support_target_class=run.classes[1])
    finally:
        run.artifact(name).unlink()  # other tests see the map as computed
    last_layer = layer_choices(run.load_model())[-1][1]
    expected = (f"This map is empty (all zero): XGradCAM found no positive evidence for {run.classes[1]} at "
                f"{last_layer}")
    assert any(w.value.startswith(expected) for w in at.warning)
    spec = chart_spec(at, "support_grid")
    assert not [t for t in spec["data"] if t["type"] == "heatmap" and t.get("coloraxis")]  # no blank jet layer
    assert spec["layout"]["annotations"][1]["text"].endswith("· empty map")


def test_report_settings_are_the_engine_defaults_unless_changed(app, trained_selection):
    at = open_page(app, trained_selection, PAGE, support_section="Explanation report",
                   support_report_methods=["gradcam"])
    defaults = asdict(ReportSettings())
    for field in ("faithfulness_images", "road_images", "sanity_images", "deletion_steps"):
        assert at.number_input(key=f"support_report_{field}").value == defaults[field]
    methods = at.pills(key="support_report_methods")
    assert methods.options == [m.label for m in METHODS.values()] and methods.value == ["gradcam"]
    slow = [m.label for m in METHODS.values() if m.report_images is not None]
    assert any(all(label in c.value for label in slow) and "sample" in c.value for c in at.caption)


def test_report_rows_put_lesion_images_first(runs):
    run = runs[max(runs)]
    order = report_rows(run, "test")
    has = engine.explain.run_masks(run, "test")["has_lesion"][order]
    assert sorted(order.tolist()) == list(range(len(order)))
    assert not (np.diff(has.astype(int)) > 0).any()  # never a lesion image after one without


def _localisation_table(consistency, lung, random, empty=None) -> pd.DataFrame:
    """A ``run_localisation``-shaped table of hand-made values."""
    n = len(consistency)
    return pd.DataFrame({"row": range(n), "file": [f"f{i}" for i in range(n)], "y": 0, "pred": 0, "correct": True,
                         "empty": empty if empty is not None else [False] * n, "lesion_area": 0.02,
                         "support_area": 0.1, "consistency": consistency, "lung_area_matched_baseline": lung,
                         "random_baseline": random, "pointing_game": [1.0, 0.0, 1.0] * (n // 3),
                         "iou_otsu": 0.3, "relevance_mass": 0.4})


def test_localisation_summary_hand_worked():
    from engine.explain.report import localisation_summary

    s = localisation_summary(_localisation_table([0.2, 0.6, 1.0], [0.5, np.nan, 0.25], [0.1, 0.3, 0.2],
                                                 [False, False, True]))
    assert (s["n"], s["n_lung"], s["n_empty"]) == (3, 2, 1)
    assert s["consistency"] == pytest.approx(0.6) and s["median"] == pytest.approx(0.6)
    assert s["lung_area_matched_baseline"] == pytest.approx(0.375)  # NaN (no lung mask) left out
    assert s["random_baseline"] == pytest.approx(0.2) and s["pointing_game"] == pytest.approx(2 / 3)
    assert s["pointing_chance"] == pytest.approx(0.02)
    lo, hi = s["consistency_ci"]
    assert 0.2 <= lo <= 0.6 <= hi <= 1.0
    rng = np.random.default_rng(0)
    high = localisation_summary(_localisation_table(0.8 + 0.05 * rng.random(30), 0.1 + 0.05 * rng.random(30),
                                                    0.05 * rng.random(30)))
    assert high["beats_chance"] is True
    same = rng.random(30)
    assert localisation_summary(_localisation_table(same, same, 0.05 * rng.random(30)))["beats_chance"] is False


def test_latest_method_report_reads_the_newest_row_of_that_method_only(runs):
    from engine.explain.report import latest_method_report

    run = runs[min(runs)]
    assert latest_method_report(run, "layercam") is None  # never computed: nothing, and nothing computed
    assert not list(run.artifact("explain").glob("report-layercam-*.json"))
    row = method_report(run, "gradcam", ReportSettings(faithfulness_images=2, road_images=1, sanity_images=1,
                                                        deletion_steps=4))
    assert latest_method_report(run, "gradcam")["sanity_ssim"] == row["sanity_ssim"]
    assert latest_method_report(run, "gradcam++") is None  # not confused with Grad-CAM's files
