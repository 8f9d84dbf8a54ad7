"""Every page shows a helpful empty state, and no chart or table, before the selected runs are trained."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


@pytest.mark.parametrize("page", ["training", "performance", "features", "layers", "support_regions"])
def test_empty_state_without_trained_runs(page, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    sel = Selection(engine.RunConfig(data=str(tiny_folder), init="scratch", image_size=64, epochs=1), (0, 5))
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.session_state["selection"] = sel
    at.switch_page(f"../pages/{page}.py").run()
    assert not at.exception
    assert "none of the selected experiment is trained" in at.info[0].value
    assert not at.get("plotly_chart") and not at.table and not at.dataframe
