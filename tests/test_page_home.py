"""The Home page in AppTest: the cross-validation folds picker and the per-(depth, fold) count of trained runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from tests.test_crossval import FOLD_RUN, three_fold_selection  # noqa: F401 (a session fixture)

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
