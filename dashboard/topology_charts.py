"""The network topology figure (Wan et al. sec. 4): channel nodes in layer columns grouped by block, bundled edges."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

#: Edge magnitude bins (fractions of the largest drawn magnitude) and each bin's line width: one trace per bin.
EDGE_BINS = (0.0, 0.25, 0.5, 0.75)
EDGE_WIDTHS = (0.6, 1.2, 2.2, 3.6)
#: Edge colours (RGB) of the before / after views, and of a change's increase / decrease.
EDGE_RGB = {"weight": (31, 119, 180), "up": (214, 39, 40), "down": (44, 90, 200)}
#: Block bands: frozen and trainable at the run's depth.
BAND_COLOURS = {False: "rgba(120, 120, 120, 0.08)", True: "rgba(255, 165, 0, 0.14)"}
#: The plot area's rough size in pixels (width, height), for the node size.
PLOT_PX = (1000, 460)
#: Columns up to which each layer's name is a tick label and its hidden channels are noted.
LABELLED_COLUMNS = 24


def _short(label: str) -> str:
    """A layer label without its block suffix: ``conv5 (block 5)`` -> ``conv5``."""
    return label.split(" (block")[0]


def shown_edges(edges: dict[str, np.ndarray], layers: Sequence[dict], n_edges: int,
                blocks: Sequence[int]) -> np.ndarray:
    """Rows of the edges to draw: the ``n_edges`` strongest of each pair whose two layers are in ``blocks``."""
    block = np.array([layer["block"] for layer in layers])
    if not len(edges["pair"]):
        return np.zeros(0, np.int64)
    pair = edges["pair"]
    inside = np.isin(block[pair], blocks) & np.isin(block[pair + 1], blocks)
    return np.flatnonzero((edges["rank"] < n_edges) & inside)


def _edge_traces(curves: np.ndarray, weight: np.ndarray, change: bool) -> list[go.Scatter]:
    """One line trace per magnitude bin (and sign, for a change): polylines separated by gaps."""
    magnitude = np.abs(weight)
    top = magnitude.max() if len(magnitude) else 1.0
    level = np.clip(np.searchsorted(EDGE_BINS, magnitude / (top or 1.0), side="right") - 1, 0, len(EDGE_BINS) - 1)
    signs = (("up", weight > 0), ("down", weight <= 0)) if change else (("weight", np.ones(len(weight), bool)),)
    traces = []
    for colour, in_sign in signs:
        for b, width in enumerate(EDGE_WIDTHS):
            rows = np.flatnonzero(in_sign & (level == b))
            if not len(rows):
                continue
            lines = np.concatenate([curves[rows], np.full((len(rows), 1, 2), np.nan)], axis=1).reshape(-1, 2)
            r, g, bl = EDGE_RGB[colour]
            what = {"weight": "strength", "up": "stronger after", "down": "weaker after"}[colour]
            low, high = EDGE_BINS[b], EDGE_BINS[b + 1] if b + 1 < len(EDGE_BINS) else 1.0
            traces.append(go.Scatter(
                x=lines[:, 0], y=lines[:, 1], mode="lines", hoverinfo="skip",
                line={"width": width, "color": f"rgba({r}, {g}, {bl}, {0.25 + 0.6 * b / len(EDGE_WIDTHS):.2f})"},
                name=f"{what} {low:.0%}-{high:.0%} of max", legendgroup=colour))
    return traces


def _node_trace(nodes: dict[str, np.ndarray], layers: Sequence[dict], keep: np.ndarray) -> go.Scatter:
    """Channel markers sized by importance (relative to their layer's most important), with the layer, channel and
    importance on hover."""
    imp = nodes["importance"][keep]
    layer = nodes["layer"][keep]
    # Sized within each layer (filters of different layers have different numbers of weights).
    top = np.zeros(len(layers))
    np.maximum.at(top, layer, imp)
    # At most ~70% of the gap between two columns or two nodes (a plot about PLOT_PX wide and high), so that deep
    # backbones' many columns stay apart.
    span = np.ptp(nodes["x"][keep]) + 1 if len(keep) else 1.0
    per_column = np.bincount(layer, minlength=len(layers)).max() if len(keep) else 1
    biggest = float(np.clip(0.7 * min(PLOT_PX[0] / span, PLOT_PX[1] / per_column), 3, 14))
    size = biggest * (0.35 + 0.65 * imp / np.where(top[layer] > 0, top[layer], 1.0))
    text = [f"{layers[c]['label']}<br>channel {ch}<br>importance (filter L2 norm) {v:.3g}"
            for c, ch, v in zip(layer, nodes["channel"][keep], imp, strict=True)]
    return go.Scatter(x=nodes["x"][keep], y=nodes["y"][keep], mode="markers", name="channels", text=text,
                      hovertemplate="%{text}<extra></extra>",
                      marker={"size": size, "color": "#333", "line": {"width": 0.5, "color": "white"}})


def _bands(fig: go.Figure, layers: Sequence[dict], blocks: Sequence[int]) -> None:
    """A shaded band and a title per block: trainable blocks (at the run's depth) in orange."""
    for b in blocks:
        xs = [layer["x"] for layer in layers if layer["block"] == b]
        if not xs:
            continue
        trains = any(layer["trainable"] for layer in layers if layer["block"] == b)
        fig.add_shape(type="rect", x0=min(xs) - 0.4, x1=max(xs) + 0.4, y0=-0.06, y1=1.06, line_width=0,
                      fillcolor=BAND_COLOURS[trains], layer="below")
        fig.add_annotation(x=(min(xs) + max(xs)) / 2, y=1.1, text=f"block {b}" + (" · trains" if trains else ""),
                           showarrow=False, font={"color": "#b36b00" if trains else "#555"})


def topology_figure(layers: Sequence[dict], nodes: dict[str, np.ndarray], edges: dict[str, np.ndarray],
                    curves: np.ndarray, *, view: str, n_edges: int, blocks: Sequence[int],
                    height: int = 560) -> go.Figure:
    """The layered graph: block bands, bundled edges (few traces, by magnitude bin) and channel nodes."""
    blocks = [b for b in blocks if any(layer["block"] == b for layer in layers)]
    columns = [i for i, layer in enumerate(layers) if layer["block"] in blocks]
    rows = shown_edges(edges, layers, n_edges, blocks)
    keep = np.flatnonzero(np.isin(nodes["layer"], columns))
    fig = go.Figure([*_edge_traces(curves[rows], edges["weight"][rows], view == "change"),
                     _node_trace(nodes, layers, keep)])
    _bands(fig, layers, blocks)
    xaxis: dict[str, Any] = {"showgrid": False, "zeroline": False, "showticklabels": False}
    if len(columns) <= LABELLED_COLUMNS:
        xaxis.update(showticklabels=True, tickangle=-50, tickvals=[layers[i]["x"] for i in columns],
                     ticktext=[_short(layers[i]["label"]) for i in columns])
        for i in columns:
            if layers[i]["hidden"]:
                fig.add_annotation(x=layers[i]["x"], y=-0.1, text=f"+{layers[i]['hidden']}", showarrow=False,
                                   font={"size": 10, "color": "#777"})
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 60, "b": 10}, plot_bgcolor="white",
                      xaxis=xaxis, yaxis={"visible": False, "range": [-0.16, 1.16]},
                      legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
                      hovermode="closest")
    return fig


def change_table(changes: dict[int, list[float]]) -> dict[str, list]:
    """Columns of the per-block weight-change table: one row per depth."""
    depths = sorted(changes)
    table: dict[str, list] = {"depth": depths}
    for b in range(len(next(iter(changes.values()), []))):
        table[f"block {b + 1}"] = [f"{changes[d][b]:.2%}" for d in depths]
    return table
