"""Plotly figures and tables of diagnostic performance: Wan's Table 1 with CIs, confusion, ROC / PR, depth curves."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from pandas.io.formats.style import Styler
from plotly.colors import qualitative

from engine.evaluation import METRICS

#: The best value of a column: bold on a green tint, a positive mark (Wan et al.'s red in Table 1 reads as "bad"),
#: in the colours of the explanation report's best values (``report_charts.BEST_STYLE``).
BEST_CSS = "background-color: #dcfce7; color: #166534; font-weight: 700"
#: Table 1's values are shown, and compared for the best of a column, to this many decimals.
DIGITS = 3


def format_ci(value: float | None, low: float | None, high: float | None, digits: int = 3) -> str:
    """``0.912 [0.871, 0.947]``; ``n/a`` for an undefined value, the value alone when its interval is undefined."""
    def finite(x: float | None) -> bool:
        return x is not None and bool(np.isfinite(x))

    if not finite(value):
        return "n/a"
    if not (finite(low) and finite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _leaders(table: pd.DataFrame, metric: str, digits: int) -> list[str]:
    """The methods sharing the highest value of ``metric`` as shown (rounded to ``digits``); [] if all undefined."""
    # Compared as printed, so that two cells that read the same are a tie.
    shown = pd.Series([float(f"{v:.{digits}f}") if np.isfinite(v) else np.nan for v in table[metric].astype(float)],
                      index=table.index)
    if not shown.notna().any():
        return []
    return table.loc[shown == shown.max(), "method"].tolist()


def best_methods(table: pd.DataFrame, digits: int = DIGITS) -> dict[str, list[str]]:
    """For each metric of ``compare_methods``' table, the one method with the highest value as shown (rounded to
    ``digits``); none when two or more methods share it (see ``tied_metrics``) or every value is undefined."""
    out = {}
    for metric in METRICS:
        leaders = _leaders(table, metric, digits)
        out[metric] = leaders if len(leaders) == 1 else []
    return out


def tied_metrics(table: pd.DataFrame, digits: int = DIGITS) -> list[str]:
    """The metrics whose highest value as shown (rounded to ``digits``) is shared by two or more methods."""
    return [m for m in METRICS if len(_leaders(table, m, digits)) > 1]


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """``compare_methods``' table as text, one row per method: every metric as ``value [low, high]`` and the SVM's C."""
    rows = {}
    for r in table.to_dict("records"):
        row = {m: format_ci(r[m], r[f"{m}_low"], r[f"{m}_high"], DIGITS) for m in METRICS}
        row["SVM C"] = "—" if pd.isna(r["C"]) else f"{r['C']:g}"
        rows[r["method"]] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def comparison_marks(table: pd.DataFrame) -> pd.DataFrame:
    """A bool frame shaped like ``comparison_table``: True at the best method of each metric (none on a tie)."""
    text = comparison_table(table)
    marks = pd.DataFrame(False, index=text.index, columns=text.columns)
    for metric, methods in best_methods(table).items():
        marks.loc[methods, metric] = True
    return marks


def comparison_styler(table: pd.DataFrame) -> Styler:
    """``comparison_table`` with the best method of each metric in bold on a green tint; a tied column unmarked."""
    css = comparison_marks(table).replace({True: BEST_CSS, False: ""})
    return comparison_table(table).style.apply(lambda _: css, axis=None)


def table1_caption(n_test: int, positive: str, backbone: str, tied: Sequence[str], lbp: bool = True) -> str:
    """What Table 1 shows and how: intervals, the best-value mark (and the tied columns left unmarked), the methods;
    ``lbp``: whether the LBP + SVM row is there (not for 3-D runs)."""
    ties = (f" Tied best ({', '.join(tied)}): two or more methods share the best value as shown, so none of that "
            "column is marked." if tied else "")
    methods = (f"All three methods on the same {n_test} test images" if lbp
               else f"Both methods on the same {n_test} test volumes")
    features = ("LBP + SVM: 59-bin uniform LBP histogram (P = 8, R = 1, Wan sec. 3.2). " if lbp else "")
    svms = "Both SVMs use" if lbp else "The SVM uses"
    return (
        f"{methods}; each cell is the value and its 95% percentile-bootstrap interval (1,000 resamples of the test "
        "set, the same resamples for every method). The best value of each "
        f"column (to the {DIGITS} decimals shown) is in bold on a green tint (Wan's Table 1 marks it in red).{ties} "
        "Overlapping intervals mean the difference may be chance. Sensitivity, specificity, PPV, NPV, F1 and AUC are "
        f"of the positive class ({positive}) one-vs-rest. {features}Deep features + SVM: the flattened output of this "
        f"fine-tuned {backbone}'s last conv stage (9216-d for AlexNet, as in Wan). {svms} an RBF kernel on "
        "standardised features, C (column SVM C) chosen by cross-validation (balanced accuracy) on the training split "
        "only, and Platt-calibrated probabilities."
    )


def confusion_figure(matrix: Sequence[Sequence[float]], classes: Sequence[str], normalised: bool) -> go.Figure:
    """Heatmap of a confusion matrix, true class in rows (top to bottom in class order), predicted in columns."""
    fig = px.imshow(np.asarray(matrix, dtype=float), x=list(classes), y=list(classes), color_continuous_scale="Blues",
                    text_auto=".2f" if normalised else ".0f", zmin=0, zmax=1 if normalised else None,
                    labels=dict(x="Predicted class", y="True class",
                                color="Share of true class" if normalised else "Images"))
    fig.update_layout(height=380, margin=dict(t=30, b=40, l=60, r=20))
    fig.update_xaxes(side="bottom")
    return fig


def _curves(curves: Mapping[str, Mapping[str, Any]], x: str, y: str, score: str, score_name: str,
            positive: str) -> go.Figure:
    fig = go.Figure()
    palette = qualitative.D3
    for i, (name, c) in enumerate(curves.items()):
        label = f"{name} ({score_name} {c[score]:.3f})" if c[score] is not None else f"{name} ({score_name} n/a)"
        fig.add_trace(go.Scatter(x=c[x], y=c[y], mode="lines", name=label,
                                 line=dict(color=palette[i % len(palette)], width=3 if name == positive else 1.8)))
    fig.update_layout(height=380, margin=dict(t=30, b=40, l=60, r=20), legend=dict(x=1, xanchor="right", y=0.02,
                                                                                   bgcolor="rgba(255,255,255,0.8)"))
    fig.update_xaxes(range=[-0.01, 1.01])
    fig.update_yaxes(range=[-0.01, 1.01])
    return fig


def roc_figure(roc: Mapping[str, Mapping[str, Any]], positive: str) -> go.Figure:
    """One-vs-rest ROC curve per class, its AUC in the legend (the positive class thicker), and the chance line."""
    fig = _curves(roc, "fpr", "tpr", "auc", "AUC", positive)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="#94a3b8", dash="dash")))
    fig.update_xaxes(title_text="False positive rate (1 − specificity)")
    fig.update_yaxes(title_text="True positive rate (sensitivity)")
    return fig


def pr_figure(pr: Mapping[str, Mapping[str, Any]], positive: str) -> go.Figure:
    """One-vs-rest precision-recall curve per class with its average precision (AP) in the legend."""
    fig = _curves(pr, "recall", "precision", "ap", "AP", positive)
    fig.update_xaxes(title_text="Recall (sensitivity)")
    fig.update_yaxes(title_text="Precision (PPV)")
    return fig


def per_class_figure(per_class: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Grouped bars of precision, recall and F1 per class (Cheng et al. tables 2-3)."""
    df = pd.DataFrame(per_class)
    fig = go.Figure([
        go.Bar(x=df["class"], y=df[m].astype(float), name=m, textposition="outside", marker_color=color,
               text=[format_ci(v, None, None) for v in df[m].astype(float)])
        for m, color in (("precision", "#0f766e"), ("recall", "#2563eb"), ("F1", "#c2410c"))
    ])
    fig.update_layout(barmode="group", height=380, margin=dict(t=40, b=70, l=60, r=20),  # legend below: the
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.14, yanchor="top"))  # modebar is above
    fig.update_yaxes(range=[0, 1.1], title_text="Score")
    return fig


def depth_figure(curve: pd.DataFrame, metric: str) -> go.Figure:
    """``depth_curve``'s table as metric vs fine-tuned blocks, a line per backbone, CI error bars, the best starred.

    Given ``crossval.fold_depth_curve``'s table (it has an ``sd`` column), the points are fold means, the error bars
    ± 1 sd over folds, and the hover adds min, max and the number of folds.
    """
    fig = go.Figure()
    palette = qualitative.D3
    folds = "sd" in curve.columns
    for i, (backbone, df) in enumerate(curve.groupby("backbone", sort=True)):
        if folds:
            customdata = np.stack([df["sd"], df["min"], df["max"], df["n"]], axis=1).astype(float)
            hover = (f"{backbone} depth %{{x}}: mean %{{y:.3f}} ± %{{customdata[0]:.3f}} sd, "
                     "min %{customdata[1]:.3f}, max %{customdata[2]:.3f} over %{customdata[3]:.0f} folds<extra></extra>")
        else:
            customdata = np.stack([df["low"], df["high"]], axis=1)
            hover = (f"{backbone} depth %{{x}}: %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
                     "<extra></extra>")
        fig.add_trace(go.Scatter(
            x=df["depth"], y=df["value"], mode="lines+markers", name=backbone,
            line=dict(color=palette[i % len(palette)]), marker=dict(size=8),
            error_y=dict(type="data", array=df["high"] - df["value"], arrayminus=df["value"] - df["low"], visible=True),
            customdata=customdata, hovertemplate=hover,
        ))
    best = curve[curve["best"]]
    if len(best):
        b = best.iloc[0]
        fig.add_trace(go.Scatter(x=[b["depth"]], y=[b["value"]], mode="markers", name="best",
                                 marker=dict(symbol="star", size=20, color="#facc15",
                                             line=dict(width=1, color="#854d0e")),
                                 hoverinfo="skip"))
        mean = "mean " if folds else ""
        # Off to the side that has room, clear of the point's own error bar.
        right = b["depth"] < curve["depth"].max()
        fig.add_annotation(x=b["depth"], y=b["value"],
                           text=f"best: {b['backbone']} depth {b['depth']} ({mean}{b['value']:.3f})",
                           showarrow=True, arrowhead=0, ax=40 if right else -40, ay=-30,
                           xanchor="left" if right else "right", bgcolor="rgba(255,255,255,0.8)")
    fig.update_layout(height=400, margin=dict(t=30, b=40, l=60, r=20))
    fig.update_xaxes(title_text="Fine-tuned convolutional blocks (depth)", dtick=1)
    fig.update_yaxes(title_text=f"Test {metric}" + (" (mean over folds)" if folds else ""))
    return fig


def fold_roc_figure(roc: Mapping[str, Any], name: str | None = None) -> go.Figure:
    """``crossval.fold_roc``: the positive class's ROC curve of every fold, its AUC in the legend, mean ± sd AUC over
    folds in the title (after ``name``, e.g. a training variant; Ouyang et al. fig. 4), and the chance line."""
    fig = go.Figure()
    palette = qualitative.D3
    for i, f in enumerate(roc["folds"]):
        fig.add_trace(go.Scatter(x=f["fpr"], y=f["tpr"], mode="lines", name=f"fold {f['fold']} (AUC {f['auc']:.3f})",
                                 line=dict(color=palette[i % len(palette)], width=2)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="#94a3b8", dash="dash")))
    spread = roc["auc"]
    sd = f" ± {spread['sd']:.3f}" if np.isfinite(spread["sd"]) else ""
    fig.update_layout(
        title=dict(text=(f"{name}: " if name else "") + f"{roc['positive']} vs rest" + (
            f", {roc['n_folds']} folds: AUC {spread['mean']:.3f}{sd} (mean ± sd)" if roc["n_folds"] > 1
            else f": AUC {spread['mean']:.3f} (hold-out)"), x=0, font=dict(size=14)),
        height=420, margin=dict(t=50, b=40, l=60, r=20),
        legend=dict(x=1, xanchor="right", y=0.02, bgcolor="rgba(255,255,255,0.8)"))
    fig.update_xaxes(range=[-0.01, 1.01], title_text="False positive rate (1 − specificity)")
    fig.update_yaxes(range=[-0.01, 1.01], title_text="True positive rate (sensitivity)")
    return fig


def fold_table(per_fold: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """``crossval.fold_metrics``' rows (fold as text) followed by the mean and sd rows of ``fold_metric_summary``."""
    metrics = list(summary.columns)
    rows = per_fold.assign(fold=per_fold["fold"].astype(str))[["fold", *metrics, "best_epoch", "run"]]
    extra = summary.loc[["mean", "sd"], metrics].rename_axis("fold").reset_index()
    return pd.concat([rows, extra], ignore_index=True)


#: The scores of ``engine.attention_effect`` drawn with their 95% intervals: column -> label.
EFFECT_SCORES = {"consistency": "Consistency degree with the lesion", "on_marker": "Share of support on the marker"}
EFFECT_COLORS = ("#64748b", "#7c3aed")


def _finite(value: Any) -> bool:
    return value is not None and bool(np.isfinite(value))


def attention_effect_table(effect: pd.DataFrame) -> pd.DataFrame:
    """``engine.attention_effect``'s rows as text: test accuracy, the test images with a lesion mask (those scored),
    each score as ``value [low, high]`` (those undefined for every model left out) and the accuracy with / without the
    shortcut marker where there is one."""
    shown = [m for m in EFFECT_SCORES if effect[m].map(_finite).any()]
    accuracy = [c for c in ("acc_with_marker", "acc_without_marker") if effect[c].map(_finite).any()]
    rows = {}
    for r in effect.to_dict("records"):
        row = {"test ACC": format_ci(r["test_acc"], None, None, DIGITS), "with a lesion": int(r["n_lesion"])}
        row.update({EFFECT_SCORES[m]: format_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"], DIGITS) for m in shown})
        row.update({c.replace("acc_", "ACC ").replace("_", " "): format_ci(r[c], None, None, DIGITS)
                    for c in accuracy})
        rows[r["model"]] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def attention_effect_figure(effect: pd.DataFrame) -> go.Figure:
    """Bars of each score of ``engine.attention_effect`` (consistency with the lesion; share on the marker where
    there is one) per model, with their 95% bootstrap intervals as error bars."""
    fig = go.Figure()
    for color, (model, r) in zip(EFFECT_COLORS * len(effect), effect.set_index("model").iterrows()):
        shown = [m for m in EFFECT_SCORES if _finite(r[m])]
        value = np.array([r[m] for m in shown], dtype=float)
        fig.add_trace(go.Bar(
            x=[EFFECT_SCORES[m] for m in shown], y=value, name=model, marker_color=color,
            error_y=dict(type="data", array=np.array([r[f"{m}_hi"] for m in shown], dtype=float) - value,
                         arrayminus=value - np.array([r[f"{m}_lo"] for m in shown], dtype=float), visible=True),
            customdata=np.array([[r[f"{m}_lo"], r[f"{m}_hi"]] for m in shown], dtype=float),
            hovertemplate=f"{model}: %{{x}} %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
                          "<extra></extra>"))
    fig.update_layout(barmode="group", height=380, margin=dict(t=40, b=70, l=60, r=20),
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.14, yanchor="top"))
    fig.update_yaxes(range=[0, 1.1], title_text="Mean over the test images (95% CI)")
    return fig
