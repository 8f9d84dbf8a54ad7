"""Plotly figures of the Features page: LBP and deep features projected to 2-D or 3-D (Wan et al. fig. 6-7)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

METHOD_LABELS: dict[str, str] = {"pca": "PCA", "kpca-linear": "Kernel PCA (linear)", "kpca-rbf": "Kernel PCA (RBF)",
                                 "tsne": "t-SNE"}
AXIS_LABELS: dict[str, str] = {"pca": "PC", "kpca-linear": "KPC", "kpca-rbf": "KPC", "tsne": "t-SNE"}
CORRECT_COLOURS: dict[str, str] = {"correct": "#2ca02c", "wrong": "#d62728"}
ColourBy = Literal["class", "correct"]
#: The 3-D camera's position (Plotly's default is 1.25 on every axis, which crops a narrow scene).
SCENE_EYE = (1.7, 1.7, 1.25)


#: What an image picker's option says, for its help text.
IMAGE_LABEL_HELP = "Each option: file · true class (→ predicted class, when the prediction is wrong) (split)."


def image_labels(predictions: pd.DataFrame, classes: Sequence[str]) -> dict[int, str]:
    """``run.predictions`` row -> ``"name.png · covid → normal (test)"`` (the file's name, true class, the predicted
    one only when it differs, split), short enough for a picker in a narrow column."""
    names = np.asarray(classes)
    true, pred = names[predictions["y"].to_numpy()], names[predictions["pred"].to_numpy()]
    return {i: f"{PurePath(f).name} · {t}{'' if t == p else f' → {p}'} ({s})"
            for i, (f, t, p, s) in enumerate(zip(predictions["file"], true, pred, predictions["split"], strict=True))}


def score_text(value: float) -> str:
    """A score with three decimals, ``n/a`` when undefined (NaN)."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _groups(points: pd.DataFrame, classes: Sequence[str], colour_by: ColourBy) -> list[tuple[str, str, np.ndarray]]:
    """(legend name, colour, boolean row mask) per trace: one per class, or correct / wrong prediction."""
    if colour_by == "class":
        palette = qualitative.D3
        return [(c, palette[i % len(palette)], (points["label"] == c).to_numpy()) for i, c in enumerate(classes)]
    if colour_by == "correct":
        correct = points["correct"].to_numpy(dtype=bool)
        return [("correct", CORRECT_COLOURS["correct"], correct), ("wrong", CORRECT_COLOURS["wrong"], ~correct)]
    raise ValueError(f"colour_by must be 'class' or 'correct', got {colour_by!r}")


def projection_figure(points: pd.DataFrame, classes: Sequence[str], method: str, colour_by: ColourBy = "class",
                      selected: int | None = None) -> go.Figure:
    """Scatter of ``run_projection`` points: WebGL in 2-D, Scatter3d when a ``z`` column is present.

    One trace per class (or per correct / wrong prediction), the ``run.predictions`` row of each point in its
    ``customdata`` (what a Streamlit selection returns); ``selected`` (a row) is ringed in black as a last trace.
    """
    three_d = "z" in points.columns
    axis = AXIS_LABELS.get(method, method)
    hover = (points["file"] + "<br>true: " + points["label"] + " · predicted: " + points["pred"]
             + "<br>" + points["split"] + " split").to_numpy()
    rows = points.index.to_numpy()
    fig = go.Figure()

    def add(mask: np.ndarray, name: str, marker: dict[str, Any]) -> None:
        xyz = {k: points.loc[mask, k].to_numpy() for k in ("x", "y", "z") if k in points.columns}
        common = dict(mode="markers", name=name, text=hover[mask], customdata=rows[mask], marker=marker,
                      hovertemplate="%{text}<extra></extra>")
        fig.add_trace(go.Scatter3d(**xyz, **common) if three_d else go.Scattergl(**xyz, **common))

    for name, colour, mask in _groups(points, classes, colour_by):
        add(mask, f"{name} ({int(mask.sum())})", dict(color=colour, size=4 if three_d else 7, opacity=0.85,
                                                      line=dict(width=0)))
    if selected is not None and selected in points.index:
        add(rows == selected, "selected image", dict(symbol="circle-open", size=10 if three_d else 18, color="black",
                                                     line=dict(color="black", width=3)))

    # Legend under the plot: above it, it collides with Plotly's mode bar.
    fig.update_layout(height=480, margin=dict(t=30, b=30, l=10, r=10), uirevision=f"{method}-{3 if three_d else 2}d",
                      legend=dict(orientation="h", yanchor="top", y=-0.12 if not three_d else -0.01, x=0))
    if three_d:
        # A camera far enough out that the whole cube, its tick labels and axis titles fit a half-width column.
        small = dict(tickfont=dict(size=9), title_font=dict(size=12))
        fig.update_layout(scene=dict(xaxis=dict(title=f"{axis} 1", **small), yaxis=dict(title=f"{axis} 2", **small),
                                     zaxis=dict(title=f"{axis} 3", **small), aspectmode="cube",
                                     camera=dict(eye=dict(x=SCENE_EYE[0], y=SCENE_EYE[1], z=SCENE_EYE[2])),
                                     # Plotly drops the vertical axis' title from a narrow scene: written over the
                                     # top of the edge its ticks are on, as seen from SCENE_EYE.
                                     annotations=[dict(x=points["x"].max(), y=points["y"].min(), z=points["z"].max(),
                                                       text=f"{axis} 3", showarrow=False, yanchor="bottom",
                                                       yshift=6, font=dict(size=12))]),
                          height=440, margin=dict(t=20, b=10, l=20, r=20))
    else:
        fig.update_layout(xaxis_title=f"{axis} 1", yaxis_title=f"{axis} 2")
    return fig


def selected_row(points: Sequence[Mapping[str, Any]]) -> int | None:
    """The ``run.predictions`` row of the first point of a Streamlit Plotly selection, or None when none is selected."""
    for point in points:
        row = point.get("customdata")
        if isinstance(row, (list, tuple)):  # customdata with several fields per point arrives as a list
            row = row[0] if row else None
        if row is not None:
            return int(row)
    return None
