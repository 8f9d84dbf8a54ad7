"""Exports every page offers: a CSV of a table and a PNG of a figure, with file names that say what they hold."""
from __future__ import annotations

import re
from typing import Any

import pandas as pd
import streamlit as st

#: The Plotly toolbar keeps only the PNG export (and full screen): no zoom/pan buttons covering small figures.
_KEEP_BUTTONS = ("toImage", "toggleFullscreen")
_OTHER_BUTTONS = ("zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d",
                  "hoverClosestCartesian", "hoverCompareCartesian", "toggleSpikelines", "zoom3d", "pan3d",
                  "orbitRotation", "tableRotation", "resetCameraDefault3d", "resetCameraLastSave3d", "hoverClosest3d",
                  "hoverClosestGl2d", "resetViews", "sendDataToCloud")


def slug(text: str) -> str:
    """``text`` as a file-name stem: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "lunglens"


def export_name(run: Any, what: str) -> str:
    """A file-name stem for an export of ``run``: ``lunglens-alexnet-depth5-<what>`` (with its fold, if any)."""
    fold = f"-fold{run.config.fold}" if run.config.folds > 1 else ""
    return f"lunglens-{run.config.backbone}-depth{run.config.depth}{fold}-{what}"


def png_config(name: str, scale: int = 2) -> dict[str, Any]:
    """``st.plotly_chart(config=...)`` whose toolbar saves the figure as ``<name>.png`` (and nothing else)."""
    return {"displaylogo": False, "modeBarButtonsToRemove": list(_OTHER_BUTTONS),
            "toImageButtonOptions": {"format": "png", "filename": slug(name), "scale": scale}}


def csv_button(table: pd.DataFrame, name: str, key: str, *, index: bool = False) -> None:
    """A button that downloads ``table`` as ``<name>.csv``."""
    st.download_button("CSV", table.to_csv(index=index).encode(), file_name=f"{slug(name)}.csv", mime="text/csv",
                        key=key, icon=":material/download:", help=f"Download this table as {slug(name)}.csv")
