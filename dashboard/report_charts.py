"""Explanation-report helpers: the methods x scores table with 95% intervals and the best per column marked, its CSV,
the sanity-check (Adebayo et al. 2018) and consistency-curve charts, scores against fine-tuning depth, and the notes
a page shows next to a map (sanity verdict, empty map)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.explain.sanity import SANITY_SSIM_LIMIT

#: Score columns of the report the page shows: key -> (column title, higher is better, shown as a percentage).
SCORE_COLUMNS: dict[str, tuple[str, bool, bool]] = {
    "consistency": ("Consistency", True, True),
    "iou_otsu": ("IoU (Otsu)", True, True),
    "pointing_game": ("Pointing game", True, True),
    "relevance_mass": ("Relevance mass", True, True),
    "relevance_rank": ("Relevance rank", True, True),
    "deletion_auc": ("Deletion AUC ↓", False, False),
    "insertion_auc": ("Insertion AUC", True, False),
    "road": ("ROAD", True, False),
}
#: Baselines shown next to the consistency: key -> column title.
BASELINE_COLUMNS = {"lung_area_matched_baseline": "Lung-area baseline", "random_baseline": "Random-map baseline"}
#: Scores a page can plot against fine-tuning depth (``report_across_depths``'s ``score`` values): key -> label.
DEPTH_SCORES: dict[str, str] = {**{k: v[0].replace(" ↓", " (lower is better)") for k, v in SCORE_COLUMNS.items()},
                                "iou": "IoU (threshold)", "dice": "Dice (threshold)", "dice_otsu": "Dice (Otsu)",
                                "empty_share": "Share of empty maps", "sanity_ssim": "Sanity SSIM (lower is better)",
                                "seconds_per_image": "Seconds per image"}
#: The best value of a column: marked with this and drawn bold green (never red).
BEST_MARK = "★ "
BEST_STYLE = "font-weight: 700; color: #15803d"
PASS_COLOR, FAIL_COLOR = "#15803d", "#b91c1c"


def _number(value: Any) -> float:
    """``value`` as a float, NaN for None or anything not numeric."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def format_ci(mean: Any, ci: Any = None, percent: bool = True) -> str:
    """``"45.2% [40.1, 50.3]"`` (or ``"0.452 [0.401, 0.503]"``); "n/a" for a missing mean."""
    m = _number(mean)
    if np.isnan(m):
        return "n/a"
    fmt = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.3f}")
    text = f"{fmt(m)}%" if percent else fmt(m)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and not any(np.isnan(_number(v)) for v in ci):
        text += f" [{fmt(_number(ci[0]))}, {fmt(_number(ci[1]))}]"
    return text


def sanity_text(row: Mapping[str, Any] | None) -> str:
    """The sanity verdict of a report row in a few words: "pass (SSIM 0.12)", "FAIL (SSIM 0.93)", "not computed"."""
    if row is None or row.get("sanity_pass") is None:
        return "not computed"
    return f"{'pass' if row['sanity_pass'] else 'FAIL'} (SSIM {_number(row.get('sanity_ssim')):.2f})"


def report_table(report: pd.DataFrame, best: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report as display strings (one row per method) and a same-shaped bool frame marking each column's best.

    ``best`` is ``best_per_column``'s answer (column -> comma-separated method names; ties name every one). Best
    cells carry BEST_MARK, so the marking survives where styles do not.
    """
    records, marks = [], []
    for _, r in report.iterrows():
        rec: dict[str, Any] = {"Method": r["label"], "Kind": r["kind"], "Images": int(r["n_images"]),
                               "Empty maps": format_ci(r["empty_share"])}
        mark = {k: False for k in rec}
        for key, (title, _higher, percent) in SCORE_COLUMNS.items():
            is_best = r["method"] in str(best.get(key, "")).split(", ")
            rec[title] = (BEST_MARK if is_best else "") + format_ci(r.get(key), r.get(f"{key}_ci"), percent)
            mark[title] = is_best
            if key == "consistency":
                for base, base_title in BASELINE_COLUMNS.items():
                    rec[base_title] = format_ci(r.get(base), r.get(f"{base}_ci"))
                    mark[base_title] = False
                rec["Beats chance"] = "yes" if r.get("beats_chance") else "no"
                mark["Beats chance"] = False
        rec["Sanity check"] = sanity_text(r.to_dict())
        rec["s / image"] = f"{_number(r['seconds_per_image']):.3f}"
        mark["Sanity check"] = mark["s / image"] = False
        records.append(rec)
        marks.append(mark)
    columns = list(records[0]) if records else ["Method"]
    return pd.DataFrame(records, columns=columns), pd.DataFrame(marks, columns=columns).fillna(False).astype(bool)


def styled_report(table: pd.DataFrame, best: pd.DataFrame) -> Any:
    """A pandas Styler drawing the best cells bold green and failed sanity checks in red text."""
    def style(column: pd.Series) -> list[str]:
        if column.name == "Sanity check":
            return [f"color: {FAIL_COLOR}; font-weight: 700" if str(v).startswith("FAIL") else "" for v in column]
        return [BEST_STYLE if best.loc[i, column.name] else "" for i in column.index]

    return table.style.apply(style, axis=0)


def report_csv(report: pd.DataFrame) -> bytes:
    """The report as CSV: one row per method, every interval split into ``_lo`` and ``_hi``, nested columns left out."""
    flat = pd.DataFrame(index=report.index)
    for column in report.columns:
        if column in ("sanity_steps", "consistency_curve"):
            continue
        values = report[column]
        if column.endswith("_ci"):
            pairs = [v if isinstance(v, (list, tuple)) and len(v) == 2 else (np.nan, np.nan) for v in values]
            flat[f"{column[:-3]}_lo"] = [p[0] for p in pairs]
            flat[f"{column[:-3]}_hi"] = [p[1] for p in pairs]
        else:
            flat[column] = values
    return flat.to_csv(index=False).encode()


def _steps(report: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, cascade table) of every method whose report row has sanity steps."""
    out = []
    for _, r in report.iterrows():
        steps = r.get("sanity_steps")
        if isinstance(steps, list) and steps:
            out.append((r["label"], pd.DataFrame(steps).sort_values("step")))
    return out


def sanity_figure(report: pd.DataFrame) -> go.Figure:
    """Cascading randomisation (Adebayo et al. 2018, fig. 2 style): rank correlation and SSIM of each method's map
    with its original as the layers are randomised from the head down; one line per method."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Spearman rank correlation", "SSIM"),
                        horizontal_spacing=0.08)
    for k, (label, steps) in enumerate(_steps(report)):
        for col, metric in ((1, "spearman"), (2, "ssim")):
            fig.add_trace(go.Scatter(x=steps["layer"], y=steps[metric], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1,
                                     line=dict(color=_color(k)),
                                     hovertemplate="%{x}: %{y:.2f}<extra>" + label + "</extra>"), row=1, col=col)
    fig.add_hline(y=SANITY_SSIM_LIMIT, line=dict(color="#475569", dash="dash", width=1), row=1, col=2,
                  annotation_text=f"pass below {SANITY_SSIM_LIMIT:g}", annotation_position="top right",
                  annotation_font_size=11)
    fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)  # a rank correlation may turn negative
    fig.update_yaxes(range=[-0.25, 1.05], row=1, col=2)
    fig.update_xaxes(tickangle=-35)
    fig.update_layout(height=470, margin=dict(t=40, b=20, l=50, r=20),
                      legend=dict(orientation="h", yanchor="top", y=-0.28, x=0, font=dict(size=11)))
    return fig


_PALETTE = ("#c2410c", "#1d4ed8", "#15803d", "#7c3aed", "#0f766e", "#a16207", "#be185d", "#334155",
            "#ea580c", "#2563eb", "#16a34a", "#9333ea", "#0d9488", "#ca8a04", "#db2777", "#64748b")


def _color(k: int) -> str:
    return _PALETTE[k % len(_PALETTE)]


def consistency_curve_figure(report: pd.DataFrame, threshold: float | None = None) -> go.Figure:
    """Mean consistency degree against the support threshold (0.1..0.9), one line per method."""
    fig = go.Figure()
    for k, (_, r) in enumerate(report.iterrows()):
        curve = r.get("consistency_curve")
        if not isinstance(curve, Mapping) or not curve:
            continue
        xs = sorted(curve, key=float)
        fig.add_trace(go.Scatter(x=[float(x) for x in xs], y=[_number(curve[x]) for x in xs], name=r["label"],
                                 mode="lines+markers", line=dict(color=_color(k)),
                                 hovertemplate="threshold %{x}: %{y:.1%}<extra>" + r["label"] + "</extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line=dict(color="#475569", dash="dot", width=1))
    fig.update_layout(height=380, margin=dict(t=30, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.2, x=0))
    fig.update_xaxes(title_text="Support threshold (heatmap > t)", dtick=0.1)
    fig.update_yaxes(title_text="Mean consistency degree", range=[0, 1.02], tickformat=".0%")
    return fig


def depth_score_figure(long: pd.DataFrame, score: str) -> go.Figure:
    """One line per method: ``score`` against fine-tuning depth, from ``report_across_depths``'s long table."""
    fig = go.Figure()
    rows = long[long["score"] == score]
    for k, (label, g) in enumerate(rows.groupby("label", sort=False)):
        g = g.sort_values("depth")
        fig.add_trace(go.Scatter(x=g["depth"], y=g["value"].astype(float), name=str(label), mode="lines+markers",
                                 line=dict(color=_color(k)),
                                 hovertemplate="depth %{x}: %{y:.3f}<extra>" + str(label) + "</extra>"))
    fig.update_layout(height=400, margin=dict(t=30, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.2, x=0))
    fig.update_xaxes(title_text="Fine-tuning depth (trainable conv blocks)", dtick=1)
    fig.update_yaxes(title_text=DEPTH_SCORES.get(score, score))
    return fig


def missing_depths(long: pd.DataFrame, depths: Sequence[int], methods: Sequence[str]) -> dict[int, list[str]]:
    """Depth -> the methods (names) with no cached report row there; depths with every method computed left out."""
    have = set(zip(long["depth"].astype(int), long["method"])) if len(long) else set()
    out = {d: [m for m in methods if (int(d), m) not in have] for d in depths}
    return {d: m for d, m in out.items() if m}


def sanity_message(label: str, row: Mapping[str, Any] | None) -> tuple[str, str]:
    """(level, text) of the sanity note shown next to a method's map: "warning", "ok" or "missing"."""
    if row is None or row.get("sanity_pass") is None:
        return "missing", (f"{label}: sanity check (Adebayo et al. 2018) not computed yet; the Explanation report "
                           "tab computes it.")
    ssim = _number(row.get("sanity_ssim"))
    if not row["sanity_pass"]:
        return "warning", (f"{label} fails the model-randomisation sanity check: its map barely changes when the "
                           f"weights are random (SSIM {ssim:.2f}); it shows image structure, not the model's "
                           "reasoning (Adebayo et al. 2018).")
    return "ok", (f"{label} passes the model-randomisation sanity check: its map changes when the weights are "
                  f"random (SSIM {ssim:.2f}, Adebayo et al. 2018).")


def empty_map_message(label: str, class_name: str, layer: str | None, heatmap: np.ndarray) -> str:
    """What an all-zero or constant map means, said instead of drawing it blank."""
    h = np.asarray(heatmap)
    where = f" at {layer}" if layer else ""
    if float(np.max(h, initial=0.0)) == 0.0:
        return (f"This map is empty (all zero): {label} found no positive evidence for {class_name}{where}, so it "
                "has no support region.")
    return (f"This map is constant (every pixel {float(h.flat[0]):.2f}): {label} does not distinguish any region "
            f"for {class_name}{where}.")
