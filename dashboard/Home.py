"""LungLens dashboard entry point: ``streamlit run dashboard/Home.py`` wires Home and the five pages."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/Home.py` puts dashboard/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

from dashboard.url_state import keep_page_params  # noqa: E402
from dashboard.widgets import HOME, sidebar  # noqa: E402

PAGES = ROOT / "pages"


def main() -> None:
    """Configure the app, wire the pages and run the selected one."""
    st.set_page_config(page_title="LungLens", page_icon=str(ROOT / "assets" / "logo.png"), layout="wide")
    css = ROOT / "assets" / "style.css"
    if css.exists():
        st.markdown(f"<style>{css.read_text()}</style>", unsafe_allow_html=True)
    st.logo(str(ROOT / "assets" / "logo.png"))
    nav = st.navigation([
        st.Page(HOME, title="Home", icon=":material/home:", default=True),
        st.Page(PAGES / "training.py", title="Training", icon=":material/show_chart:"),
        st.Page(PAGES / "performance.py", title="Performance", icon=":material/leaderboard:"),
        st.Page(PAGES / "features.py", title="Features", icon=":material/scatter_plot:"),
        st.Page(PAGES / "layers.py", title="Layers", icon=":material/layers:"),
        st.Page(PAGES / "support_regions.py", title="Support Regions", icon=":material/center_focus_strong:"),
    ])
    keep_page_params(nav.url_path)
    refresh_sidebar = sidebar()
    nav.run()
    refresh_sidebar()  # Home may have changed the experiment: the sidebar and the URL follow at once


main()
