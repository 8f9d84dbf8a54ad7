"""Support Regions page helpers: grids of heatmaps on one colour scale with the support contour and mask outlines
(Wan §3.5, figs. 11-12), consistency-degree charts, class probabilities, and the message on whether an upload is
like the training data."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.explain import lime_overlay
from engine.explain.overlay import LIME_AGAINST, LIME_FOR
from engine.ood import METHOD_LABELS

#: Which test images the image picker lists.
OUTCOMES = ("All", "Correct", "Wrong")

#: Support contour magenta: it stays visible on jet red, on gray X-rays and in the legend.
SUPPORT_COLOR, LESION_COLOR, LUNG_COLOR = "#ff00ff", "#22c55e", "#22d3ee"
MODEL_COLOR, LUNG_BASELINE_COLOR, RANDOM_BASELINE_COLOR = "#c2410c", "#0f766e", "#64748b"


def filter_test_rows(rows: pd.DataFrame, classes: Sequence[str], true_classes: Sequence[str],
                     outcome: str = "All") -> pd.DataFrame:
    """Test rows whose true class is one of ``true_classes`` (all when empty), correct / wrong / all by ``outcome``."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    keep = np.ones(len(rows), dtype=bool)
    if true_classes:
        keep &= rows["y"].isin([list(classes).index(c) for c in true_classes]).to_numpy()
    if outcome != "All":
        correct = (rows["y"] == rows["pred"]).to_numpy()
        keep &= correct if outcome == "Correct" else ~correct
    return rows[keep]


def short_name(file: str) -> str:
    """A file's name without its folders (for labels and panel titles)."""
    return str(file).replace("\\", "/").rsplit("/", 1)[-1]


def image_label(row: pd.Series, classes: Sequence[str]) -> str:
    """One short line naming a test image (its file name without folders) with its true and predicted class and the
    predicted class's probability: ``cov_003.png · covid → normal ✗ 0.62``."""
    true, pred = classes[int(row["y"])], classes[int(row["pred"])]
    verdict = "✓" if true == pred else "✗"
    return f"{short_name(row['file'])} · {true} → {pred} {verdict} {float(row[f'prob_{pred}']):.2f}"


def probability_figure(probabilities: Mapping[str, float], true_class: str | None = None) -> go.Figure:
    """Horizontal bars of the class probabilities, the predicted class highlighted and the true class marked."""
    names = list(probabilities)
    values = [float(probabilities[c]) for c in names]
    predicted = names[int(np.argmax(values))]
    labels = [f"{c} (true)" if c == true_class else c for c in names]
    fig = go.Figure(go.Bar(
        x=values, y=labels, orientation="h", text=[f"{v:.3f}" for v in values], textposition="auto",
        marker_color=[MODEL_COLOR if c == predicted else "#94a3b8" for c in names],
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    fig.update_layout(height=90 + 45 * len(names), margin=dict(t=60, b=40, l=10, r=10),
                      title=dict(text=f"Class probabilities (predicted: {predicted})", font=dict(size=14)))
    fig.update_xaxes(range=[0, 1], title_text="Softmax probability")
    fig.update_yaxes(autorange="reversed")
    return fig


def _outline(field: np.ndarray, level: float, name: str, color: str, dash: str = "solid",
             showlegend: bool = True) -> go.Contour:
    """A contour line of ``field`` at ``level`` (a heatmap's support boundary, a mask's outline)."""
    return go.Contour(
        # coloring="none" draws the line in ``color``; "lines" would take its colour from a colour scale.
        z=np.asarray(field, dtype=np.float32), autocontour=False,
        contours=dict(start=level, end=level, size=1, coloring="none"),
        line=dict(color=color, width=2, dash=dash), showscale=False, hoverinfo="skip", name=name,
        showlegend=showlegend, legendgroup=name,
    )


@dataclass(frozen=True)
class Panel:
    """One image of a grid: the image with its [0, 1] map (None: the image alone), LIME's signed superpixels
    (``segments`` and ``map``: drawn red / blue instead of the jet map), mask outlines and a title (2 lines at most)."""

    image: np.ndarray
    heatmap: np.ndarray | None = None
    lime: Mapping[str, np.ndarray] | None = None
    lesion: np.ndarray | None = None
    lung: np.ndarray | None = None
    title: str = ""


#: The shared colour scales: every map on one jet scale (0 to 1), LIME's weights on one diverging scale.
HEATMAP_AXIS, LIME_AXIS = "coloraxis", "coloraxis2"
#: Pixels a grid row keeps above its panels for a two-line title, and below the grid for the scales and legend.
TITLE_PX, FOOTER_PX, TOP_PX = 50, 140, 84


def _rgb(colour: np.ndarray) -> str:
    return "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * np.asarray(colour)))


def _panel_traces(p: Panel, threshold: float, opacity: float) -> list[go.BaseTraceType]:
    """The traces of one panel: the image (LIME: its tinted superpixels), the map, its support contour, outlines."""
    if p.lime is not None:
        traces: list[go.BaseTraceType] = [
            go.Image(z=lime_overlay(p.image, dict(p.lime), opacity), hoverinfo="skip"),
            # invisible, for the hover and the shared LIME scale: each pixel's weight, scaled by the largest
            go.Heatmap(z=p.lime["map"] / max(float(np.abs(p.lime["map"]).max()), 1e-12), coloraxis=LIME_AXIS,
                       opacity=0, hovertemplate="LIME weight %{z:.2f} (of the largest)<extra></extra>")]
    else:
        traces = [go.Heatmap(z=p.image, colorscale="gray", zmin=0, zmax=255, showscale=False, hoverinfo="skip")]
        if p.heatmap is not None:
            traces.append(go.Heatmap(z=p.heatmap, coloraxis=HEATMAP_AXIS, opacity=opacity,
                                     hovertemplate="x %{x}, y %{y}<br>heatmap %{z:.2f}<extra></extra>"))
    if p.heatmap is not None and np.nanmax(p.heatmap) > threshold:
        traces.append(_outline(p.heatmap, threshold, f"support (heatmap > {threshold:g})", SUPPORT_COLOR))
    if p.lesion is not None and p.lesion.any():
        traces.append(_outline(p.lesion, 0.5, "lesion mask", LESION_COLOR))
    if p.lung is not None and p.lung.any():
        traces.append(_outline(p.lung, 0.5, "lung mask", LUNG_COLOR, dash="dot"))
    return traces


def grid_figure(panels: Sequence[Panel], *, columns: int, threshold: float = 0.7, opacity: float = 0.5,
                panel_px: int = 340, title_size: int = 14) -> go.Figure:
    """Image panels in a grid, row by row, about ``panel_px`` square: one jet colour scale (0 to 1, the support
    threshold marked) for every map, one diverging scale for LIME's weights when a panel has them, and one legend
    of the outlines, all below the grid; panel titles in ``title_size`` px."""
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    height = TOP_PX + rows * panel_px + (rows - 1) * TITLE_PX + FOOTER_PX
    plot_px = height - TOP_PX - FOOTER_PX
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[p.title for p in panels],
                        horizontal_spacing=0.02 if columns > 1 else 0.0,
                        vertical_spacing=TITLE_PX / plot_px if rows > 1 else 0.0)
    shown: set[str] = set()
    for k, p in enumerate(panels):
        row, col = divmod(k, columns)
        for trace in _panel_traces(p, threshold, opacity):
            if isinstance(trace, go.Contour):  # one legend entry per outline across the grid
                trace.showlegend = trace.name not in shown
                shown.add(trace.name)
            fig.add_trace(trace, row=row + 1, col=col + 1)
    for k in range(rows * columns):
        axis = "" if k == 0 else str(k + 1)
        row, col = divmod(k, columns)
        # a panel narrower than its cell hangs from the top, under its title
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{axis}", constrain="domain", constraintoward="top",
                         visible=False, row=row + 1, col=col + 1)
        fig.update_xaxes(visible=False, constrain="domain", row=row + 1, col=col + 1)
    below = -12 / plot_px  # the scales sit in the bottom margin, the legend under them (wrapping when narrow)
    bar = dict(orientation="h", thickness=12, lenmode="fraction", y=below, yanchor="top", xanchor="left",
               title=dict(side="top"))
    fig.update_layout(coloraxis=dict(
        colorscale="Jet", cmin=0, cmax=1,
        colorbar=dict(bar, x=0.0, len=0.3, tickvals=[0, threshold, 1], ticktext=["0", f"{threshold:g} support", "1"],
                      title_text="Heatmap (every method)")))
    if any(p.lime is not None for p in panels):
        ramp = [[0.0, _rgb(LIME_AGAINST)], [0.5, "rgb(247,247,247)"], [1.0, _rgb(LIME_FOR)]]
        fig.update_layout(coloraxis2=dict(
            colorscale=ramp, cmin=-1, cmax=1,
            colorbar=dict(bar, x=0.34, len=0.26, tickvals=[-1, 0, 1], ticktext=["against", "0", "for"],
                          title_text="LIME weight (superpixels)")))
    fig.update_annotations(yshift=4, font_size=title_size)
    # fixed margins: the scales and the legend must not shrink the panels (Plotly would widen the margins for them)
    fig.update_layout(height=height, margin=dict(t=TOP_PX, b=FOOTER_PX, l=4, r=4, autoexpand=False),
                      plot_bgcolor="rgba(0,0,0,0)",
                      legend=dict(orientation="h", x=0, xanchor="left", y=-90 / plot_px, yanchor="top"))
    return fig


def consistency_histogram(df: pd.DataFrame, summary: Mapping[str, Any], method_label: str = "Grad-CAM") -> go.Figure:
    """Distributions of the per-image consistency degree of the map and of both baselines, with their means.

    ``df`` is ``run_localisation``'s table (columns ``consistency``, ``lung_area_matched_baseline``,
    ``random_baseline``) and ``summary`` the engine's ``localisation_summary`` of it (the means drawn).
    """
    series = [(f"{method_label} (model)", "consistency", MODEL_COLOR),
              ("lungs, same area", "lung_area_matched_baseline", LUNG_BASELINE_COLOR),
              ("random smooth map", "random_baseline", RANDOM_BASELINE_COLOR)]
    fig = go.Figure()
    for name, column, color in series:
        values = df[column].dropna()
        if values.empty:
            continue
        # Bins centred on 0, 0.05, ..., 1 so that the common values 0 and 1 get a bar inside the axis.
        fig.add_trace(go.Histogram(x=values, name=name, marker_color=color, opacity=0.6,
                                   xbins=dict(start=-0.025, end=1.025, size=0.05),
                                   hovertemplate="%{x}: %{y} images<extra>" + name + "</extra>"))
        fig.add_vline(x=float(summary[column]), line=dict(color=color, dash="dash", width=2))
    fig.update_layout(barmode="overlay", height=360, margin=dict(t=30, b=40, l=60, r=20),
                      legend=dict(orientation="h", y=1.12, x=0))
    fig.update_xaxes(title_text="Consistency degree (share of the lesion covered by support)", range=[-0.03, 1.03],
                     tickformat=".0%")
    fig.update_yaxes(title_text="Test images")
    return fig


def consistency_depth_figure(table: pd.DataFrame) -> go.Figure:
    """Mean consistency degree and pointing-game hit rate per fine-tuning depth, the baselines dashed."""
    fig = go.Figure()
    lines = [("consistency", "mean consistency degree", MODEL_COLOR, "solid"),
             ("pointing_game", "pointing-game hit rate", "#7c3aed", "solid"),
             ("lung_area_matched_baseline", "baseline: lungs, same area", LUNG_BASELINE_COLOR, "dash"),
             ("random_baseline", "baseline: random map", RANDOM_BASELINE_COLOR, "dash")]
    for column, name, color, dash in lines:
        if table[column].notna().any():
            fig.add_trace(go.Scatter(x=table["depth"], y=table[column].astype(float), name=name, mode="lines+markers",
                                     line=dict(color=color, dash=dash),
                                     hovertemplate="depth %{x}: %{y:.1%}<extra>" + name + "</extra>"))
    fig.update_layout(height=360, margin=dict(t=30, b=40, l=60, r=20), legend=dict(orientation="h", y=1.15, x=0))
    fig.update_xaxes(title_text="Fine-tuning depth (trainable conv blocks)", dtick=1)
    fig.update_yaxes(title_text="Share", range=[0, 1.02], tickformat=".0%")
    return fig


def markdown_literal(text: str) -> str:
    """``text`` with every ASCII punctuation mark backslash-escaped, so Markdown shows it as written."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def unlike_message(check: Mapping[str, Any]) -> tuple[str, str]:
    """("warning", text) when ``check_unlike``'s one-image result says the image is unlike the training data, else
    ("caption", text): its distance against the validation split's threshold."""
    distance, threshold, pct = check["distance"], check["threshold"], check["percentile"]
    where = f"the {pct:g}th percentile of the distances of the {check['n_val']} validation images"
    if check["unlike"]:
        return "warning", (
            f"This image is unlike the training data: the distance of its deep features to the training images is "
            f"{distance:.1f}, above {threshold:.1f} ({where}). The model has not seen images like it, so this "
            "prediction should not be trusted.")
    return "caption", (f"Like the training data: deep-feature distance {distance:.1f} to the training images, within "
                       f"{threshold:.1f} ({where}; {METHOD_LABELS.get(check['method'], check['method'])}).")
