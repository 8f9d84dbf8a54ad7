"""The Performance page's "External test" section: a run scored on another site's folder, next to its own test split."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import engine
from dashboard.background import background, cached
from dashboard.exports import csv_button, export_name
from dashboard.external_picker import external_picker
from dashboard.performance_charts import format_ci
from dashboard.url_state import url_widget
from dashboard.widgets import caption, figure
from engine.calibration import THRESHOLD_PRESETS
from engine.external import METRIC_KEYS, ExternalRun, evaluate_view, gap_by_depth, generalisation_gap, internal_scores

LABELS = {"acc": "ACC", "balanced_acc": "Balanced ACC", "sensitivity": "Sensitivity", "specificity": "Specificity",
          "ppv": "PPV", "npv": "NPV", "f1": "F1", "auc": "AUC"}
SIDE_COLOURS = {"internal": "#2563eb", "external": "#dc2626"}
#: Above this share of images unlike the training data, the section warns that the scores transfer poorly.
UNLIKE_WARNING = 0.2


def _gap(runs: Sequence[engine.Run], view: ExternalRun, metric: str) -> pd.DataFrame:
    """``gap_by_depth`` of ``view``'s folder and mapping (a view is keyed by its run, data and mapping)."""
    return gap_by_depth(runs, view.source, view.mapping, metric)


def gap_table(gap: pd.DataFrame) -> pd.DataFrame:
    """The generalisation-gap table as text: metric, internal [CI], external [CI], gap."""
    return pd.DataFrame({
        "metric": [LABELS[m] for m in gap["metric"]],
        "internal test": [format_ci(r.internal, r.internal_low, r.internal_high) for r in gap.itertuples()],
        "external test": [format_ci(r.external, r.external_low, r.external_high) for r in gap.itertuples()],
        "gap (external − internal)": ["n/a" if pd.isna(g) else f"{g:+.3f}" for g in gap["gap"]],
    })


def gap_depth_figure(curve: pd.DataFrame, metric: str) -> go.Figure:
    """Metric against fine-tuning depth: the internal test split and the external folder, with 95% intervals."""
    fig = go.Figure()
    for side, rows in curve.groupby("side", sort=False):
        fig.add_trace(go.Scatter(
            x=rows["depth"], y=rows["value"], mode="lines+markers", name=f"{side} test",
            line={"color": SIDE_COLOURS[side], "dash": "solid" if side == "internal" else "dash"},
            error_y={"type": "data", "symmetric": False, "array": rows["high"] - rows["value"],
                     "arrayminus": rows["value"] - rows["low"]},
            hovertemplate="depth %{x}: %{y:.3f}<extra>" + side + "</extra>"))
    fig.update_layout(xaxis_title="fine-tuning depth (trainable conv blocks)", yaxis_title=LABELS[metric],
                      yaxis_range=[0, 1.02], height=360, margin={"t": 30, "b": 40}, legend={"orientation": "h"})
    fig.update_xaxes(dtick=1)
    return fig


def _counts(result: Mapping[str, Any]) -> None:
    c1, c2, c3 = st.columns(3)
    c1.metric("External images scored", result["n"])
    c2.metric("Left out (class unknown to the run)", result["n_left_out"],
              help=", ".join(f"{c}: {k}" for c, k in result["left_out"].items()) or None)
    c3.metric("Unlike the training data", f"{result['unlike_share']:.0%}",
              help=f"Deep-feature distance to the run's training images above the {result['unlike']['percentile']:g}th "
                   f"percentile of its validation split ({result['unlike']['method']}).")
    if result["unlike_share"] > UNLIKE_WARNING:
        st.warning(f"{result['unlike_share']:.0%} of these images are unlike anything the model was trained on: the "
                   "external scores tell how it fails on new data, not how it would do on data like its own.")
    if result["skipped"]:
        st.caption(f"{len(result['skipped'])} unreadable image(s) skipped, e.g. {result['skipped'][0][1]}")


def _calibration(run: engine.Run, result: Mapping[str, Any]) -> None:
    cal = result["calibration"]
    text = f"Calibration on the external images (positive class): ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}"
    if cal.get("temperature"):
        text += (f"; with the run's temperature (T = {cal['temperature']:.2f}, fitted on its validation split): "
                 f"ECE {cal['ece_scaled']:.3f}, Brier {cal['brier_scaled']:.3f}")
    st.caption(text + ".")
    points = result.get("operating_points") or {}
    rows = [{"threshold preset (chosen on the run's validation split)": THRESHOLD_PRESETS.get(name, name),
             "threshold": p["threshold"],
             "sensitivity": p["sensitivity"], "specificity": p["specificity"], "PPV": p["ppv"], "NPV": p["npv"]}
            for name, p in points.items() if "error" not in p]
    if rows:
        table = pd.DataFrame(rows)
        st.dataframe(table, hide_index=True, width="stretch", key="external_operating_table",
                     column_config={k: st.column_config.NumberColumn(format="%.3f")
                                    for k in ("threshold", "sensitivity", "specificity", "PPV", "NPV")})
        csv_button(table, export_name(run, "external-operating-points"), key="external_operating_csv")


def _explanations(run: engine.Run, view: ExternalRun) -> None:
    if not (view.predictions["mask"] != "").any():
        st.caption("This folder has no lesion masks, so the explanations cannot be scored on it.")
        return
    if not st.toggle("Score Grad-CAM against the external lesion masks (consistency, baselines, pointing game)",
                     key="external_explanations"):
        return
    result = background(evaluate_view, view, explanations=True, label="Grad-CAM on every external image",
                        name="external_explain_job")
    if result is None:
        return
    ex = result["explanation"]
    if ex is None:
        st.info("No external image of the run's classes has a non-empty lesion mask.")
        return
    table = pd.DataFrame([{
        "images with lesions": ex["n"], "consistency": format_ci(ex["consistency"], *ex["consistency_ci"]),
        "lung-area-matched baseline": format_ci(ex["lung_area_matched_baseline"], *ex["lung_area_matched_baseline_ci"]),
        "random baseline": format_ci(ex["random_baseline"], *ex["random_baseline_ci"]),
        "pointing game": format_ci(ex["pointing_game"], None, None), "beats chance": "yes" if ex["beats_chance"] else "no",
    }])
    st.dataframe(table, hide_index=True, width="stretch", key="external_explanations_table")
    csv_button(table, export_name(run, "external-explanations"), key="external_explanations_csv")
    caption("The explanation report's localisation scores (Support Regions) on the external images with a lesion "
            "mask: consistency degree (Wan et al.) against two baselines scored the same way; a map beats chance "
            "when its interval lies above both. Support Regions shows the maps themselves for an external folder.")


def external_section(run: engine.Run, runs: Mapping[int, engine.Run]) -> None:
    """Draw the section: pick a folder, see internal vs external test with CIs, and both against depth."""
    st.subheader("External test: another site's images")
    st.caption("A model that scores well on its own split can fail at the next hospital; reporting guidelines "
               "(CLAIM) ask for an external test. Pick a folder: the run scores it as it is, with the same "
               "preprocessing, and nothing is trained on it.")
    view = external_picker(run, key="performance_external")
    if view is None:
        return
    try:
        internal = cached(internal_scores, run)
        result = background(evaluate_view, view, explanations=False, name="external_score_job",
                            label=f"Scoring {len(view.source.items)} external images")
    except engine.LungLensError as exc:
        st.error(str(exc))
        return
    if result is None:
        return
    _counts(result)
    gap = gap_table(generalisation_gap(internal, result))
    st.table(gap)
    csv_button(gap, export_name(run, "external-gap"), key="external_gap_csv")
    caption(f"Run `{run.id}` (depth {run.config.depth}) on its own test split ({internal['n']} images) and on "
            f"{result['n']} external images; 95% percentile-bootstrap intervals ({result['n_boot']} resamples). "
            f"Sensitivity, specificity, PPV, NPV, F1 and AUC are of the positive class ({result['positive']}).")
    _calibration(run, result)
    metric = url_widget(st.selectbox, "Metric against depth", list(METRIC_KEYS), key="external_metric",
                        param="external_metric", default="auc", format_func=LABELS.get)
    ordered = [runs[d] for d in sorted(runs)]
    try:
        curve = background(_gap, ordered, view, metric, name="external_depth_job",
                           label=f"Scoring the external folder with {len(ordered)} runs")
    except engine.LungLensError as exc:
        st.error(str(exc))
        return
    if curve is not None:
        figure(gap_depth_figure(curve, metric), export_name(run, f"external-{metric}-vs-depth"),
               key="external_depth_curve")
        csv_button(curve, export_name(run, f"external-{metric}-vs-depth"), key="external_depth_csv")
        caption("Solid: the run's own test split; dashed: the external folder; bars: 95% bootstrap intervals. The "
                "distance between the lines is the generalisation gap at each fine-tuning depth.")
    _explanations(run, view)
