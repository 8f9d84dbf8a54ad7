"""Presenter mode in AppTest: the sidebar toggle (or ?presenter=1) enlarges type and folds figure notes into
expanders, on every page."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.apptest_helpers import open_page

PAGE = "../pages/training.py"
CSS = (Path(__file__).resolve().parents[1] / "assets" / "presenter.css").read_text()
NOTE = "Train solid, validation dotted, test dashed."  # the start of the loss figure's note


def _styles(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "<style>" in m.value]


def _font(at: AppTest, key: str) -> int | None:
    spec = json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.spec)
    return spec["layout"].get("font", {}).get("size")


def test_toggle_folds_captions_into_expanders_and_enlarges_type(app, trained_selection):
    at = open_page(app, trained_selection, PAGE)
    assert at.toggle(key="presenter").value is False
    assert not at.expander and not any(CSS in s for s in _styles(at))
    assert any(c.value.startswith(NOTE) for c in at.caption) and _font(at, "training_loss") is None

    at.toggle(key="presenter").set_value(True).run()
    assert not at.exception
    assert any(CSS in s for s in _styles(at)) and "html { font-size: 20px; }" in CSS
    labels = [e.label for e in at.expander]
    assert labels == ["About this run", "About this figure", "About this figure"]
    figure_notes = [c.value for e in at.expander if e.label == "About this figure" for c in e.caption]
    assert figure_notes[0].startswith(NOTE) and figure_notes[1].startswith("Wan et al. eq. 1-5")
    folded = {c.value for e in at.expander for c in e.caption}
    assert {c.value for c in at.main.caption} == folded  # no note is left outside an expander
    assert _font(at, "training_loss") == 16  # Plotly's text too (its default is 12)
    assert at.query_params["presenter"] == "1"

    at.toggle(key="presenter").set_value(False).run()
    assert not at.expander and not any(CSS in s for s in _styles(at)) and "presenter" not in at.query_params


def test_a_link_with_presenter_1_opens_in_presenter_mode(app, trained_selection):
    app.query_params["presenter"] = "1"
    at = open_page(app, trained_selection, PAGE)
    assert at.toggle(key="presenter").value is True
    assert any(CSS in s for s in _styles(at)) and at.expander
    at.switch_page("../pages/features.py").run()  # the mode stays on from page to page
    assert not at.exception
    assert at.toggle(key="presenter").value is True and [e.label for e in at.expander] == ["About this figure"]


def test_an_unknown_presenter_value_leaves_it_off(app, trained_selection):
    app.query_params["presenter"] = "yes"
    at = open_page(app, trained_selection, PAGE)
    assert at.toggle(key="presenter").value is False and not at.expander and "presenter" not in at.query_params
