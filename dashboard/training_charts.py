"""Plotly figures of training dynamics (Wan et al. fig. 4-5): loss and the five criteria per epoch, with epoch marks."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from engine import Run

#: The five criteria of Wan et al. (eq. 1-5), as the history names its columns, with their display names.
CRITERIA = {"acc": "ACC", "sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}
#: What the compare mode can overlay: the loss or one criterion.
QUANTITIES = {"loss": "Loss", **CRITERIA}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
#: Train solid, validation dotted, test dashed, everywhere on the Training page.
SPLIT_DASH = {"train": "solid", "val": "dot", "test": "dash"}
SPLIT_COLOR = {"train": "#0f766e", "val": "#64748b", "test": "#c2410c"}
BEST_COLOR, STOP_COLOR, LR_COLOR = "#16a34a", "#dc2626", "#94a3b8"
#: Config fields that must agree for two runs to be compared: same initialisation, budget, input size and split.
SAME_EXPERIMENT = ("init", "epochs", "image_size", "clahe", "seed", "test_fraction", "val_fraction", "folds", "fold")


def lr_drops(history: pd.DataFrame) -> list[tuple[int, float]]:
    """(epoch, new learning rate) for every epoch trained at a lower rate than the one before (plateau steps)."""
    lr = history["lr"].to_numpy(dtype=float)
    epochs = history["epoch"].to_numpy()
    return [(int(epochs[i]), float(lr[i])) for i in range(1, len(lr)) if lr[i] < lr[i - 1]]


def _has(history: pd.DataFrame, column: str) -> bool:
    return column in history and history[column].notna().any()


def _mark_epochs(fig: go.Figure, history: pd.DataFrame, best_epoch: int, stopped_early: bool, labels: bool) -> None:
    """Vertical lines in every panel at the best epoch, the early stop and each learning-rate drop; ``labels``
    writes what each line is in the (first) panel, which a narrow panel has no room for."""
    first, last = int(history["epoch"].min()), int(history["epoch"].max())
    marks = [(best_epoch, f"best epoch {best_epoch}", BEST_COLOR, "solid")]
    if stopped_early:
        marks.append((last, f"early stop after {last}", STOP_COLOR, "dash"))
    marks += [(e, f"lr → {lr:.0e}", LR_COLOR, "dot") for e, lr in lr_drops(history)]
    for i, (epoch, text, color, dash) in enumerate(marks):
        fig.add_vline(x=epoch, line=dict(color=color, dash=dash, width=1.5), row="all", col="all")
        if labels:  # staggered, so that marks on neighbouring epochs stay legible; the last epoch's label points left
            fig.add_annotation(x=epoch, y=1 - 0.08 * (i % 3), xref="x", yref="y domain", text=text, showarrow=False,
                               xanchor="right" if epoch == last else "left", font=dict(size=11, color=color),
                               bgcolor="rgba(255,255,255,0.7)")
    fig.update_xaxes(range=[first - 0.3, last + 0.3])


def loss_figure(history: pd.DataFrame, best_epoch: int, stopped_early: bool) -> go.Figure:
    """Cross-entropy loss per epoch on train, validation and test, with the epoch marks (Wan fig. 4)."""
    fig = make_subplots(rows=1, cols=1)
    for split in SPLIT_NAMES:
        if _has(history, f"{split}_loss"):
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[f"{split}_loss"], mode="lines+markers",
                                     name=SPLIT_NAMES[split],
                                     line=dict(color=SPLIT_COLOR[split], dash=SPLIT_DASH[split])))
    _mark_epochs(fig, history, best_epoch, stopped_early, labels=True)
    fig.update_layout(height=360, margin=dict(t=30, b=40, l=60, r=20), hovermode="x unified",
                      legend=dict(orientation="h", y=1.12, x=0))
    fig.update_xaxes(title_text="Epoch", dtick=1 if len(history) <= 20 else None)
    fig.update_yaxes(title_text="Cross-entropy loss")
    return fig


def criteria_figure(history: pd.DataFrame, best_epoch: int, stopped_early: bool,
                    splits: Sequence[str] = ("train", "test"), prefix: str = "") -> go.Figure:
    """One panel per criterion, a line per split (Wan fig. 5); ``prefix="macro_"``: macro averages (ACC as is)."""
    fig = make_subplots(rows=1, cols=len(CRITERIA), shared_yaxes=True, horizontal_spacing=0.02,
                        subplot_titles=list(CRITERIA.values()))
    for col, key in enumerate(CRITERIA, start=1):
        # ACC is one number over all classes: it has no macro variant.
        columns = {s: f"{s}_{key}" if key == "acc" else f"{s}_{prefix}{key}" for s in splits}
        drawn = {s: c for s, c in columns.items() if _has(history, c)}
        for split, column in drawn.items():
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers",
                                     name=SPLIT_NAMES[split], legendgroup=split, showlegend=col == 1,
                                     line=dict(color=SPLIT_COLOR[split], dash=SPLIT_DASH[split]),
                                     marker=dict(size=5)), row=1, col=col)
        if not drawn:
            fig.add_annotation(text="undefined at<br>every epoch", showarrow=False, font=dict(color=LR_COLOR),
                               xref=f"x{col} domain", yref="y domain", x=0.5, y=0.5)
    _mark_epochs(fig, history, best_epoch, stopped_early, labels=False)
    fig.update_layout(height=340, margin=dict(t=60, b=40, l=50, r=20), legend=dict(orientation="h", y=1.25, x=0))
    fig.update_xaxes(title_text="Epoch", dtick=1 if len(history) <= 10 else None)
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def compare_figure(histories: Mapping[str, pd.DataFrame], quantity: str, splits: Sequence[str],
                   best_epochs: Mapping[str, int]) -> go.Figure:
    """``quantity`` per epoch of several runs in one chart: a colour per run, a dash per split, stars at best epochs."""
    if quantity not in QUANTITIES:
        raise ValueError(f"Unknown quantity {quantity!r}; choose one of {', '.join(QUANTITIES)}.")
    fig = go.Figure()
    palette = qualitative.D3
    for i, (label, history) in enumerate(histories.items()):
        color = palette[i % len(palette)]
        for split in splits:
            column = f"{split}_{quantity}"
            if not _has(history, column):
                continue
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines", legendgroup=label,
                                     name=f"{label} · {SPLIT_NAMES[split]}",
                                     line=dict(color=color, dash=SPLIT_DASH[split])))
            best = history[history["epoch"] == best_epochs[label]]
            fig.add_trace(go.Scatter(x=best["epoch"], y=best[column], mode="markers", legendgroup=label,
                                     showlegend=False, name=f"{label} · best epoch",
                                     marker=dict(symbol="star", size=13, color=color,
                                                 line=dict(width=1, color="white")),
                                     hovertemplate=f"{label}: best epoch %{{x}}<br>{SPLIT_NAMES[split]} "
                                                   f"{QUANTITIES[quantity]} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(height=440, margin=dict(t=30, b=40, l=60, r=20), legend=dict(font=dict(size=11)))
    fig.update_xaxes(title_text="Epoch")
    fig.update_yaxes(title_text=QUANTITIES[quantity], range=None if quantity == "loss" else [-0.02, 1.02])
    return fig


def related_runs(base: Run, candidates: Iterable[Run]) -> dict[tuple[str, int], Run]:
    """Runs comparable with ``base`` by (backbone, depth): same data fingerprint and ``SAME_EXPERIMENT`` fields.

    Runs of ``base``'s own backbone must match its whole config but the depth (the same sweep); of another backbone,
    only the experiment fields (its head width or optimiser may differ). The first candidate wins a (backbone, depth),
    so pass the selection's own runs first and the rest newest first.
    """
    out: dict[tuple[str, int], Run] = {}
    cfg = base.config
    for run in candidates:
        other = run.config
        if run.meta["data_fingerprint"] != base.meta["data_fingerprint"]:
            continue
        if other.backbone == cfg.backbone:
            same = other.key_dict() | {"depth": 0} == cfg.key_dict() | {"depth": 0}
        else:
            same = all(getattr(other, f) == getattr(cfg, f) for f in SAME_EXPERIMENT)
        if same:
            out.setdefault((other.backbone, other.depth), run)
    return out


#: The line of the mean over folds, drawn over the per-fold lines.
MEAN_COLOR = "#111827"


def fold_curves_figure(curve: pd.DataFrame, label: str, best_epochs: Mapping[int, int],
                       bounded: bool = False) -> go.Figure:
    """``crossval.fold_epoch_curve``'s table: a thin line per fold, the mean over folds thick, a star at each fold's
    best epoch (``best_epochs``: fold -> epoch); ``bounded``: a y axis from 0 to 1 (a criterion, not the loss)."""
    fig = go.Figure()
    palette = qualitative.D3
    folds = [c for c in curve.columns if c.startswith("fold_")]
    for i, column in enumerate(folds):
        fold = int(column.removeprefix("fold_"))
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=curve["epoch"], y=curve[column], mode="lines", name=f"fold {fold}",
                                 legendgroup=column, line=dict(color=color, width=1.5)))
        best = curve[curve["epoch"] == best_epochs.get(fold)]
        if len(best):
            star = dict(symbol="star", size=12, color=color, line=dict(width=1, color="white"))
            fig.add_trace(go.Scatter(x=best["epoch"], y=best[column], mode="markers", legendgroup=column,
                                     showlegend=False, name=f"fold {fold} · best epoch", marker=star,
                                     hovertemplate=f"fold {fold}: best epoch %{{x}}, {label} %{{y:.3f}}"
                                                   "<extra></extra>"))
    fig.add_trace(go.Scatter(x=curve["epoch"], y=curve["mean"], mode="lines", name=f"mean of {len(folds)} folds",
                             line=dict(color=MEAN_COLOR, width=4), customdata=np.stack([curve["sd"], curve["n"]], 1),
                             hovertemplate="epoch %{x}: mean %{y:.3f} ± %{customdata[0]:.3f} (sd over "
                                           "%{customdata[1]} folds)<extra></extra>"))
    fig.update_layout(height=400, margin=dict(t=30, b=40, l=60, r=20), legend=dict(font=dict(size=11)))
    fig.update_xaxes(title_text="Epoch", dtick=1 if len(curve) <= 20 else None)
    fig.update_yaxes(title_text=label, range=[-0.02, 1.02] if bounded else None)
    return fig
