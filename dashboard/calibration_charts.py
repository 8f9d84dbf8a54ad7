"""Plotly figures and tables of calibration and operating points: reliability diagram, ECE / Brier, PPV and NPV."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.calibration import SPLITS, predictive_values

SPLIT_COLORS = {"train": "#0f766e", "val": "#2563eb", "test": "#c2410c"}
PPV_COLOR, NPV_COLOR = "#b91c1c", "#1d4ed8"
# The legend goes below the plot, where it hides no point of the curves (the modebar is above).
_LAYOUT = dict(height=440, margin=dict(t=30, b=40, l=60, r=20),
               legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.18, yanchor="top"))


def _ordered(splits: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A result's splits in train, val, test order (a cached result comes back with its keys sorted)."""
    return [(s, splits[s]) for s in SPLITS if s in splits]


def reliability_figure(raw: Mapping[str, Any], scaled: Mapping[str, Any] | None = None) -> go.Figure:
    """Share of positives against mean predicted probability per bin and split, with the diagonal (perfect).

    ``raw`` and ``scaled`` are ``run_calibration`` results; with ``scaled``, its curves are solid, the raw ones dotted.
    """
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                               line=dict(color="#94a3b8", dash="dash")))
    layers = [(raw, "" if scaled is None else " before", "solid" if scaled is None else "dot",
               1.0 if scaled is None else 0.45)]
    if scaled is not None:
        layers.append((scaled, f" after T = {scaled['temperature']:.2f}", "solid", 1.0))
    for result, suffix, dash, opacity in layers:
        for split, summary in _ordered(result["splits"]):
            rel = summary["reliability"]
            fig.add_trace(go.Scatter(
                x=rel["prob_pred"], y=rel["prob_true"], mode="lines+markers", name=f"{split}{suffix}",
                opacity=opacity, line=dict(color=SPLIT_COLORS.get(split), dash=dash),
                marker=dict(size=6 + 10 * np.sqrt(np.asarray(rel["count"]) / max(rel["count"]))),
                customdata=rel["count"],
                hovertemplate=f"{split}{suffix}: mean p %{{x:.3f}}, share positive %{{y:.3f}}, "
                              "%{customdata} images<extra></extra>",
            ))
    fig.update_layout(**_LAYOUT)
    fig.update_xaxes(range=[-0.01, 1.01], title_text=f"Mean predicted probability of {raw['class']}")
    fig.update_yaxes(range=[-0.01, 1.01], title_text=f"Share of {raw['class']} images (observed)")
    return fig


def calibration_table(raw: Mapping[str, Any], scaled: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per split: images, share positive, ECE and Brier score (and both after temperature scaling)."""
    rows = []
    for split, s in _ordered(raw["splits"]):
        row = {"split": split, "images": s["n"], "share positive": s["prevalence"], "ECE": s["ece"],
               "Brier": s["brier"]}
        if scaled is not None:
            row |= {"ECE after T": scaled["splits"][split]["ece"], "Brier after T": scaled["splits"][split]["brier"]}
        rows.append(row)
    return pd.DataFrame(rows)


def operating_table(point: Mapping[str, Any]) -> pd.DataFrame:
    """One row for the evaluated split and one for the split the threshold was chosen on: the four values and counts."""
    sides = [(point["split"], point)]
    if point.get("chosen_on_metrics") is not None and point.get("chosen_on") != point["split"]:
        sides.append((point["chosen_on"] or "val", point["chosen_on_metrics"]))
    cols = ("sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn", "n")
    return pd.DataFrame([{"split": name, **{c: side[c] for c in cols}} for name, side in sides]).rename(
        columns={"ppv": "PPV", "npv": "NPV", "tp": "TP", "fp": "FP", "tn": "TN", "fn": "FN", "n": "images"})


def prevalence_figure(sensitivity: float, specificity: float, prevalence: float, n_points: int = 201) -> go.Figure:
    """PPV and NPV against prevalence (0-1) at a fixed sensitivity and specificity, the given prevalence marked."""
    grid = np.linspace(0.0, 1.0, n_points)
    ppv, npv = predictive_values(sensitivity, specificity, grid)
    at_ppv, at_npv = (float(v[0]) for v in predictive_values(sensitivity, specificity, np.array([prevalence])))
    fig = go.Figure([
        go.Scatter(x=grid, y=ppv, mode="lines", name="PPV", line=dict(color=PPV_COLOR, width=2.5)),
        go.Scatter(x=grid, y=npv, mode="lines", name="NPV", line=dict(color=NPV_COLOR, width=2.5)),
        go.Scatter(x=[prevalence, prevalence], y=[at_ppv, at_npv], mode="markers", name="test split prevalence",
                   marker=dict(size=11, color="#facc15", line=dict(width=1, color="#854d0e")),
                   hovertemplate="prevalence %{x:.3f}: %{y:.3f}<extra></extra>"),
    ])
    fig.add_vline(x=prevalence, line=dict(color="#64748b", dash="dot"))
    fig.update_layout(**_LAYOUT)
    fig.update_xaxes(range=[0, 1], title_text="Prevalence of the positive class")
    fig.update_yaxes(range=[-0.01, 1.01], title_text="Predictive value")
    return fig
