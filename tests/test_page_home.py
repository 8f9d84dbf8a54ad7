"""The Home page in AppTest: the cross-validation folds picker, the per-(depth, fold) count of trained runs, and the
"Prepare every view" background job."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from engine import prepare
from engine.evaluation import evaluate_run
from engine.jobs import get_job
from engine.layers import FILTER_VIEWS, run_filter_grid
from tests.test_crossval import FOLD_RUN, three_fold_selection  # noqa: F401 (a session fixture)
from tests.test_prepare import recorded_writes

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


def _home(sel: Selection) -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=120)
    at.session_state["selection"] = sel
    at.run()
    assert not at.exception
    return at


def _count(at: AppTest) -> tuple[int, int]:
    """The "**x of y** runs ... trained" line as (x, y)."""
    text = next(m.value for m in at.markdown if "runs of this experiment" in m.value)
    x, y = re.search(r"\*\*(\d+) of (\d+)\*\*", text).groups()
    return int(x), int(y)


def _train_label(at: AppTest) -> str:
    return next(b.label for b in at.button if b.label.startswith("Train "))


def test_choosing_folds_lists_a_run_per_depth_and_fold(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))  # nothing trained
    at = _home(Selection(engine.RunConfig(**{**FOLD_RUN, "folds": 1}), (0, 5)))
    assert _count(at) == (0, 2)
    assert _train_label(at) == "Train 2 run(s) (depths 0, 5)"
    folds = at.selectbox(key="home_folds")
    assert folds.value == 1 and "Lee et al." in folds.help and "Wan et al." in folds.help and "five" in folds.help

    folds.set_value(3).run()
    assert not at.exception
    sel = at.session_state["selection"]
    assert (sel.config.folds, sel.config.fold, sel.depths) == (3, 0, (0, 5))
    assert _count(at) == (0, 6)
    assert any("trained and cached: 2 depth(s) × 3 folds" in m.value for m in at.markdown)
    assert _train_label(at) == "Train 6 run(s) (depth 0: folds 0, 1, 2; depth 5: folds 0, 1, 2)"


def test_trained_folds_are_counted_and_only_the_missing_ones_listed(three_fold_selection):  # noqa: F811
    at = _home(three_fold_selection)
    n = 3 * len(three_fold_selection.depths)
    assert _count(at) == (n, n)
    assert not [b for b in at.button if b.label.startswith("Train ")]
    assert "Everything is trained" in at.success[0].value

    # one more depth: its three folds are the missing runs
    wider = Selection(three_fold_selection.config, (*three_fold_selection.depths, 5))
    at = _home(wider)
    assert _count(at) == (n, n + 3)
    assert _train_label(at) == "Train 3 run(s) (depth 5: folds 0, 1, 2)"


@pytest.mark.parametrize("folds", [1, 3])
def test_the_folds_choice_starts_at_the_selections(three_fold_selection, folds):  # noqa: F811
    sel = Selection(three_fold_selection.config.replace(folds=folds), three_fold_selection.depths)
    at = _home(sel)
    assert at.selectbox(key="home_folds").value == folds
    assert at.session_state["selection"] == sel  # drawing Home changes nothing


# --- "Prepare every view": a background job with progress, time left and cancel --------------------------------------

PREPARE_LABEL = "Prepare every view (for a live demo)"


def _runs_of(sel: Selection) -> list[engine.Run]:
    return [engine.get_run(cfg) for cfg in sel.configs()]


def test_prepare_is_offered_only_once_every_run_is_trained(trained_selection):
    at = _home(trained_selection)
    assert at.button(key="home_prepare").label == PREPARE_LABEL and not at.button(key="home_prepare").disabled
    at = _home(Selection(trained_selection.config, (*trained_selection.depths, 3)))  # depth 3 is not trained
    assert _train_label(at) == "Train 1 run(s) (depths 3)"
    assert PREPARE_LABEL not in [b.label for b in at.button]


def test_prepare_runs_in_the_background_and_reports_how_long_it_took(trained_selection, monkeypatch):
    # two cheap real steps (tests/test_prepare.py runs them all)
    monkeypatch.setattr(prepare, "STEPS", tuple(s for s in prepare.STEPS if s.name in ("evaluation", "filters")))
    at = _home(trained_selection)
    at.button(key="home_prepare").click().run()
    assert not at.exception
    job = get_job(at.session_state["home_prepare_job"])
    assert job is not None and job.wait(120)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception and not at.get("progress")
    done = [s.value for s in at.success if s.value.startswith("Every view")]
    assert done == [(f"Every view of the 2 depth(s) is ready, prepared in {job.result.seconds:.0f} s: every page "
                     "now reads them from the cache.")]
    assert [s.name for s in job.result.steps] == ["evaluation", "filters"]
    runs = _runs_of(trained_selection)
    assert job.result.runs == tuple(r.id for r in runs)
    with recorded_writes() as writes:  # what the job computed is in the runs' caches
        for run in runs:
            evaluate_run(run)
            for view in FILTER_VIEWS:
                run_filter_grid(run, view)
    assert writes == []


def test_a_running_prepare_shows_progress_and_time_left_and_can_be_cancelled(trained_selection, monkeypatch):
    gate, calls = threading.Event(), []

    def slow(run, ctx):
        calls.append(run.config.depth)
        ctx.tick(0.5, "halfway")
        gate.wait(30)

    monkeypatch.setattr(prepare, "STEPS", (prepare.Step("slow", "Slow step", 1.0, slow),))
    at = _home(trained_selection)
    at.button(key="home_prepare").click().run()
    job = get_job(at.session_state["home_prepare_job"])
    deadline = time.monotonic() + 30
    while job.fraction < 0.25 and time.monotonic() < deadline:
        time.sleep(0.05)
    at.run()
    bars = at.get("progress")
    assert len(bars) == 1 and bars[0].proto.text.startswith("Slow step · depth 0 (1/2) · halfway · 25% · about ")
    assert bars[0].proto.text.endswith(" s left")
    assert at.button(key="home_prepare").disabled  # one prepare at a time
    at.button(key="home_prepare_cancel").click().run()
    assert job.cancel_requested
    gate.set()
    assert job.wait(30) and job.status == "cancelled"
    assert calls == [0]  # stopped before the next run
    at.run()
    assert not at.exception and not at.get("progress")
    assert any(i.value.startswith("Prepare cancelled") for i in at.info)
    assert not at.button(key="home_prepare").disabled
