"""Support Regions for 3-D CT runs: slice views of a volume (axial, optionally coronal and sagittal through the same
point) with its map, support contour and mask outlines on the page's shared colour scale, and the run's localisation
scores in 3-D against their baselines. Figures only: every number comes from ``engine.explain.volume``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.report_charts import format_ci
from dashboard.support_charts import (
    LUNG_BASELINE_COLOR,
    MODEL_COLOR,
    RANDOM_BASELINE_COLOR,
    Panel,
    grid_figure,
    short_name,
)
from engine.data.volume import volume_stem
from engine.explain.volume import PLANES, SCORES, WHO

#: What the views draw over the CT (the page's "Draw" choice) -> code.
DRAW = {"Heatmap and support contour": "both", "Support contour only": "contour", "Heatmap only": "heatmap"}
#: Colours of the map and its two baselines in the localisation chart (as on the 2-D consistency charts).
WHO_COLORS = dict(zip(WHO, (MODEL_COLOR, LUNG_BASELINE_COLOR, RANDOM_BASELINE_COLOR)))
#: Where the other planes cut a view, drawn as thin lines.
CROSS_COLOR = "rgba(255,255,255,0.55)"
#: In each view: the point's coordinates (slice, row, column) along the view's rows and columns, and the spacing
#: axes that set its aspect (rows, columns).
_VIEW_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


def case_name(file: str) -> str:
    """A volume's file name without folders and without its NIfTI suffix (``covid_003``)."""
    return volume_stem(short_name(file))


def case_label(row: Mapping[str, Any], classes: Sequence[str]) -> str:
    """One short line naming a test volume, ``covid_003 · covid → cap ✗ 0.62``: true → predicted class and the
    predicted class's probability."""
    true, pred = classes[int(row["y"])], classes[int(row["pred"])]
    verdict = "✓" if true == pred else "✗"
    return f"{case_name(row['file'])} · {true} → {pred} {verdict} {float(row[f'prob_{pred}']):.2f}"


def plane_slice(volume: np.ndarray | None, plane: str, point: Sequence[int]) -> np.ndarray | None:
    """The 2-D section of a (D, H, W) volume in ``plane`` through ``point`` (slice, row, column); None for None."""
    if volume is None:
        return None
    axis = PLANES[plane]
    return np.take(volume, int(point[axis]), axis=axis)


def _title(plane: str, point: Sequence[int], shape: Sequence[int]) -> str:
    axis = PLANES[plane]
    what = {"axial": "slice", "coronal": "row", "sagittal": "column"}[plane]
    return f"{plane.capitalize()}<br>{what} {int(point[axis]) + 1} of {int(shape[axis])}"


def slice_figure(image: np.ndarray, heatmap: np.ndarray | None, lesion: np.ndarray | None, lung: np.ndarray | None,
                 point: Sequence[int], planes: Sequence[str] = ("axial",), *, spacing: Sequence[float] = (1, 1, 1),
                 threshold: float = 0.7, opacity: float = 0.5, draw: str = "both", panel_px: int = 420,
                 title_size: int = 14) -> go.Figure:
    """Views of one volume (D, H, W) in ``planes`` through ``point``: the CT in gray, the map on the shared jet scale
    (``draw``: "both", "contour" only or "heatmap" only), the support contour (map > ``threshold``), the lesion and
    lung outlines, and thin lines where the other planes cut. ``spacing`` (mm per slice, row, column) sets each view's
    aspect, so coronal and sagittal views are not squashed."""
    panels = [Panel(plane_slice(image, p, point), plane_slice(heatmap, p, point), lesion=plane_slice(lesion, p, point),
                    lung=plane_slice(lung, p, point), title=_title(p, point, image.shape)) for p in planes]
    fig = grid_figure(panels, columns=len(panels), threshold=threshold, opacity=0.0 if draw == "contour" else opacity,
                      panel_px=panel_px, title_size=title_size)
    if draw == "heatmap":
        fig.data = tuple(t for t in fig.data if not (t.type == "contour" and str(t.name).startswith("support")))
    for k, plane in enumerate(planes, 1):
        rows, cols = _VIEW_AXES[plane]
        fig.update_yaxes(scaleratio=float(spacing[rows]) / float(spacing[cols]), row=1, col=k)
        if len(planes) > 1:
            line = {"color": CROSS_COLOR, "width": 1, "dash": "dot"}
            fig.add_hline(y=int(point[rows]), line=line, row=1, col=k)
            fig.add_vline(x=int(point[cols]), line=line, row=1, col=k)
    return fig


def localisation_table(summary: pd.DataFrame) -> pd.DataFrame:
    """``volume_localisation_summary`` as display strings: one row per score, the map and each baseline as
    "mean% [low, high]", the number of volumes scored and whether the map beats chance."""
    rows = []
    for score, (label, _, _) in SCORES.items():
        part = summary[summary["score"] == score].set_index("who")
        if part.empty:
            continue
        row: dict[str, Any] = {"score": label}
        for who in WHO:
            r = part.loc[who]
            row[who] = format_ci(r["mean"], [r["low"], r["high"]])
        mine = part.loc[WHO[0]]
        row["volumes"] = int(mine["n"])
        row["beats chance"] = "yes" if bool(mine["beats_chance"]) else "no"
        rows.append(row)
    return pd.DataFrame(rows, columns=["score", *WHO, "volumes", "beats chance"])


def localisation_figure(summary: pd.DataFrame, method_label: str = "Grad-CAM") -> go.Figure:
    """Grouped bars of each score's mean for the map and its two baselines, with 95% bootstrap intervals."""
    fig = go.Figure()
    labels = {score: label for score, (label, _, _) in SCORES.items()}
    for who in WHO:
        part = summary[summary["who"] == who]
        mean = part["mean"].astype(float).to_numpy()
        name = f"{method_label} (model)" if who == WHO[0] else f"baseline: {who}"
        fig.add_trace(go.Bar(
            x=[labels[s] for s in part["score"]], y=mean, name=name, marker_color=WHO_COLORS[who],
            error_y={"type": "data", "symmetric": False, "array": part["high"].astype(float).to_numpy() - mean,
                         "arrayminus": mean - part["low"].astype(float).to_numpy()},
            customdata=part[["low", "high", "n"]].to_numpy(dtype=float),
            hovertemplate="%{x}: %{y:.1%} [%{customdata[0]:.1%}, %{customdata[1]:.1%}], %{customdata[2]:.0f} "
                          "volumes<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group", height=360, margin={"t": 30, "b": 40, "l": 60, "r": 20},
                      legend={"orientation": "h", "y": 1.12, "x": 0})
    fig.update_yaxes(title_text="Mean over the test volumes", range=[0, 1.02], tickformat=".0%")
    return fig
