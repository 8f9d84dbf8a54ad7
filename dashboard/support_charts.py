"""Support Regions page helpers: heatmap figures with the support contour and mask outlines (Wan §3.5, figs. 11-12),
consistency-degree charts, class probabilities, and the message on whether an upload is like the training data."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.explain import lime_overlay
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


def image_label(row: pd.Series, classes: Sequence[str]) -> str:
    """One line naming a test image with its true and predicted class."""
    true, pred = classes[int(row["y"])], classes[int(row["pred"])]
    verdict = "✓" if true == pred else "✗"
    return f"{row['file']} · true {true} · predicted {pred} {verdict} (p = {float(row[f'prob_{pred}']):.2f})"


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


def _layers(image: np.ndarray, heatmap: np.ndarray | None, threshold: float, opacity: float,
            lesion: np.ndarray | None, lung: np.ndarray | None, base_rgb: np.ndarray | None, colorbar: bool,
            legend: bool) -> list[go.BaseTraceType]:
    """The traces of one panel: the image (or a ready RGB overlay), the heatmap, its support contour, mask outlines."""
    if base_rgb is not None:
        traces: list[go.BaseTraceType] = [go.Image(z=base_rgb, hoverinfo="skip")]
    else:
        traces = [go.Heatmap(z=image, colorscale="gray", zmin=0, zmax=255, showscale=False, hoverinfo="skip")]
        if heatmap is not None:
            scale = dict(title=dict(text="heatmap", side="right"), tickvals=[0, threshold, 1], len=0.8,
                         ticktext=["0", f"{threshold:g} (support)", "1"], thickness=12)
            traces.append(go.Heatmap(
                z=heatmap, zmin=0, zmax=1, colorscale="Jet", opacity=opacity, showscale=colorbar, colorbar=scale,
                hovertemplate="x %{x}, y %{y}<br>heatmap %{z:.2f}<extra></extra>"))
    if heatmap is not None and np.nanmax(heatmap) > threshold:
        traces.append(_outline(heatmap, threshold, f"support (heatmap > {threshold:g})", SUPPORT_COLOR,
                               showlegend=legend))
    if lesion is not None and lesion.any():
        traces.append(_outline(lesion, 0.5, "lesion mask", LESION_COLOR, showlegend=legend))
    if lung is not None and lung.any():
        traces.append(_outline(lung, 0.5, "lung mask", LUNG_COLOR, dash="dot", showlegend=legend))
    return traces


def _image_axes(fig: go.Figure, n: int = 1) -> None:
    """Square pixels, rows downwards, no ticks, for ``n`` side-by-side panels."""
    for i in range(1, n + 1):
        suffix = "" if i == 1 else str(i)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{suffix}", visible=False, row=1, col=i)
        fig.update_xaxes(visible=False, constrain="domain", row=1, col=i)


def support_figure(image: np.ndarray, heatmap: np.ndarray | None = None, *, threshold: float = 0.7,
                   opacity: float = 0.5, lesion: np.ndarray | None = None, lung: np.ndarray | None = None,
                   base_rgb: np.ndarray | None = None, title: str = "", height: int = 420,
                   colorbar: bool = True, legend: bool = True) -> go.Figure:
    """The image with the [0, 1] heatmap (jet, at ``opacity``), the support contour at ``threshold`` and mask outlines.

    ``base_rgb`` replaces the image and heatmap layers by a ready overlay (LIME's red/blue superpixels); the support
    contour is still drawn from ``heatmap``.
    """
    fig = make_subplots(rows=1, cols=1)
    for trace in _layers(image, heatmap, threshold, opacity, lesion, lung, base_rgb, colorbar, legend):
        fig.add_trace(trace)
    _image_axes(fig)
    fig.update_layout(height=height, margin=dict(t=40 if title else 10, b=10, l=10, r=10), showlegend=legend,
                      title=dict(text=title, font=dict(size=14)), plot_bgcolor="rgba(0,0,0,0)",
                      legend=dict(orientation="h", y=-0.02, x=0, yanchor="top", font=dict(size=11)))
    return fig


def lime_figure(image: np.ndarray, lime: Mapping[str, np.ndarray], *, threshold: float = 0.7, opacity: float = 0.5,
                lesion: np.ndarray | None = None, lung: np.ndarray | None = None, title: str = "",
                height: int = 420, legend: bool = True) -> go.Figure:
    """LIME's superpixels tinted red (support) or blue (against) as in Cheng et al. fig. 7, with the same outlines."""
    rgb = lime_overlay(image, dict(lime), opacity)
    return support_figure(image, lime["heatmap"], threshold=threshold, opacity=opacity, lesion=lesion, lung=lung,
                          base_rgb=rgb, title=title, height=height, colorbar=False, legend=legend)


def depth_strip_figure(image: np.ndarray, maps: Mapping[int, np.ndarray | None], titles: Mapping[int, str], *,
                       threshold: float = 0.7, opacity: float = 0.5, lesion: np.ndarray | None = None,
                       lung: np.ndarray | None = None, height: int = 360) -> go.Figure:
    """One panel per fine-tuning depth, left to right: the same image with that depth's heatmap (None: the image
    alone, for a map the page reports as empty instead of drawing it)."""
    depths = sorted(maps)
    fig = make_subplots(rows=1, cols=len(depths), subplot_titles=[titles[d] for d in depths],
                        horizontal_spacing=0.01)
    for i, d in enumerate(depths, start=1):
        for trace in _layers(image, maps[d], threshold, opacity, lesion, lung, None, colorbar=i == len(depths),
                             legend=i == 1):
            fig.add_trace(trace, row=1, col=i)
    _image_axes(fig, len(depths))
    fig.update_annotations(yshift=10, font=dict(size=13))  # panel titles above the images, not over them
    fig.update_layout(height=height, margin=dict(t=60, b=10, l=10, r=10), plot_bgcolor="rgba(0,0,0,0)",
                      legend=dict(orientation="h", y=-0.02, x=0, yanchor="top", font=dict(size=11)))
    return fig


def colour_scale_figure(threshold: float = 0.7) -> go.Figure:
    """A horizontal jet colour bar from 0 to 1 with the support threshold marked: the one scale of every map panel."""
    ramp = np.linspace(0, 1, 101, dtype=np.float32)[None, :]
    fig = go.Figure(go.Heatmap(z=ramp, x=ramp[0], zmin=0, zmax=1, colorscale="Jet", showscale=False,
                               hovertemplate="heatmap %{x:.2f}<extra></extra>"))
    fig.add_vline(x=threshold, line=dict(color=SUPPORT_COLOR, width=3))
    fig.update_yaxes(visible=False)
    fig.update_xaxes(range=[0, 1], tickvals=[0, threshold, 1], ticktext=["0", f"{threshold:g} (support)", "1"])
    fig.update_layout(height=90, margin=dict(t=28, b=26, l=10, r=10),
                      title=dict(text="Colour scale of every map (one scale for all methods)", font=dict(size=12)))
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


#: Columns of ``consistency_depth_table``.
DEPTH_TABLE_COLUMNS = ["depth", "n", "n_empty", "consistency", "lung_area_matched_baseline", "random_baseline",
                       "pointing_game", "pointing_chance", "support_area", "beats_chance"]


def consistency_depth_table(summaries: Mapping[int, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per fine-tuning depth from the engine's ``localisation_summary`` of each depth's run."""
    rows = [{"depth": d, **{c: s.get(c) for c in DEPTH_TABLE_COLUMNS[1:]}} for d, s in sorted(summaries.items())
            if s.get("n")]
    return pd.DataFrame(rows, columns=DEPTH_TABLE_COLUMNS)


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
