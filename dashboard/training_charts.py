"""Plotly figures of training dynamics (Wan et al. fig. 4-5): loss and the five criteria per epoch, with epoch marks."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

#: The five criteria of Wan et al. (eq. 1-5), as the history names its columns, with their display names.
CRITERIA = {"acc": "ACC", "sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}
#: What the compare mode can overlay: the loss or one criterion.
QUANTITIES = {"loss": "Loss", **CRITERIA}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
#: Train solid, validation dotted, test dashed, everywhere on the Training page.
SPLIT_DASH = {"train": "solid", "val": "dot", "test": "dash"}
SPLIT_COLOR = {"train": "#0f766e", "val": "#64748b", "test": "#c2410c"}
BEST_COLOR, STOP_COLOR, LR_COLOR = "#16a34a", "#dc2626", "#94a3b8"


def lr_drops(history: pd.DataFrame) -> list[tuple[int, float]]:
    """(epoch, new learning rate) for every epoch trained at a lower rate than the one before (plateau steps)."""
    lr = history["lr"].to_numpy(dtype=float)
    epochs = history["epoch"].to_numpy()
    return [(int(epochs[i]), float(lr[i])) for i in range(1, len(lr)) if lr[i] < lr[i - 1]]


def _has(history: pd.DataFrame, column: str) -> bool:
    return column in history and history[column].notna().any()


#: Labels of the epoch marks sit in lanes above the plot: lane height (px), and the narrowest plot area (px) their
#: widths are estimated for, so that labels of nearby epochs never share a lane on any wider screen.
LANE_PX, LABEL_PLOT_PX, LABEL_FONT = 16, 560, 11
#: Top margin above the lanes, clear of the Plotly toolbar (PNG export, full screen) in the figure's top-right corner.
TOOLBAR_PX = 30


def label_lanes(marks: Sequence[tuple[int, str]], first: int, last: int) -> list[tuple[int, str]]:
    """A lane (0 = lowest) and an anchor (``left`` or ``right``) for each ``(epoch, text)`` mark label, so that labels
    whose estimated extents overlap on an x axis from ``first - 0.3`` to ``last + 0.3`` go to different lanes."""
    epoch_px = LABEL_PLOT_PX / (last - first + 0.6)
    extents = []
    for epoch, text in marks:
        width = (0.62 * LABEL_FONT * len(text) + 12) / epoch_px  # in epochs
        anchor = "right" if epoch + width > last + 0.3 else "left"  # a label that would run off the right edge
        extents.append((epoch - width, epoch, anchor) if anchor == "right" else (epoch, epoch + width, anchor))
    lanes: list[list[tuple[float, float]]] = []
    out: list[tuple[int, str]] = [(0, "left")] * len(marks)
    for i in sorted(range(len(marks)), key=lambda j: extents[j][0]):
        lo, hi, anchor = extents[i]
        lane = next((k for k, used in enumerate(lanes) if all(hi <= a or lo >= b for a, b in used)), len(lanes))
        if lane == len(lanes):
            lanes.append([])
        lanes[lane].append((lo, hi))
        out[i] = (lane, anchor)
    return out


def _mark_epochs(fig: go.Figure, history: pd.DataFrame, best_epoch: int, stopped_early: bool, labels: bool) -> int:
    """Vertical lines in every panel at the best epoch, the early stop and each learning-rate drop; ``labels``
    writes what each line is above the plot, in as many lanes as needed for no two labels to overlap (a narrow panel
    has no room: the caption says it). Returns the number of lanes."""
    first, last = int(history["epoch"].min()), int(history["epoch"].max())
    marks = [(best_epoch, f"best epoch {best_epoch}", BEST_COLOR, "solid")]
    if stopped_early:
        marks.append((last, f"early stop after {last}", STOP_COLOR, "dash"))
    marks += [(e, f"lr → {lr:.0e}", LR_COLOR, "dot") for e, lr in lr_drops(history)]
    for epoch, _, color, dash in marks:
        fig.add_vline(x=epoch, line=dict(color=color, dash=dash, width=1.5), row="all", col="all")
    fig.update_xaxes(range=[first - 0.3, last + 0.3])
    if not labels:
        return 0
    lanes = label_lanes([(e, t) for e, t, _, _ in marks], first, last)
    for (epoch, text, color, _), (lane, anchor) in zip(marks, lanes, strict=True):
        fig.add_annotation(x=epoch, y=1, xref="x", yref="y domain", yanchor="bottom", yshift=2 + LANE_PX * lane,
                           text=text, showarrow=False, xanchor=anchor, font=dict(size=LABEL_FONT, color=color))
    return 1 + max(lane for lane, _ in lanes)


#: Ouyang et al.'s attention loss in the history (train split only: it needs the lesion masks of training cases).
ATTENTION_LOSS = "train_attention_loss"
ATTENTION_COLOR = "#7c3aed"
ATTENTION_LABEL = "L_ex, attention loss (Ouyang et al. eq. 3)"


def _epoch_figure(history: pd.DataFrame, lines: Mapping[str, tuple[str, dict]], best_epoch: int,
                  stopped_early: bool, y_title: str) -> go.Figure:
    """History columns per epoch (``lines``: column -> (name, line style)), with the labelled epoch marks."""
    fig = make_subplots(rows=1, cols=1)
    for column, (name, line) in lines.items():
        if _has(history, column):
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=name,
                                     line=line))
    lanes = _mark_epochs(fig, history, best_epoch, stopped_early, labels=True)
    # the legend below the plot: above it are the epoch-mark labels
    fig.update_layout(height=380 + LANE_PX * lanes, margin=dict(t=TOOLBAR_PX + LANE_PX * lanes, b=40, l=60, r=20),
                      hovermode="x unified", legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    fig.update_xaxes(title_text="Epoch", dtick=1 if len(history) <= 20 else None)
    fig.update_yaxes(title_text=y_title)
    return fig


def loss_figure(history: pd.DataFrame, best_epoch: int, stopped_early: bool) -> go.Figure:
    """Cross-entropy loss per epoch on train, validation and test, with the epoch marks (Wan fig. 4)."""
    lines = {f"{s}_loss": (SPLIT_NAMES[s], dict(color=SPLIT_COLOR[s], dash=SPLIT_DASH[s])) for s in SPLIT_NAMES}
    return _epoch_figure(history, lines, best_epoch, stopped_early, "Cross-entropy loss")


def has_attention_loss(history: pd.DataFrame) -> bool:
    """Whether the run was trained with Ouyang's attention loss (its history records L_ex per epoch)."""
    return _has(history, ATTENTION_LOSS)


def attention_loss_figure(history: pd.DataFrame, best_epoch: int, stopped_early: bool) -> go.Figure:
    """Ouyang et al.'s attention loss L_ex (eq. 3) per epoch on the training split, with the epoch marks."""
    lines = {ATTENTION_LOSS: (f"train {ATTENTION_LABEL}", dict(color=ATTENTION_COLOR))}
    return _epoch_figure(history, lines, best_epoch, stopped_early, ATTENTION_LABEL)


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


#: The compare chart's colours: one per depth, the same in every panel, from light (shallow) to dark (deep) along
#: Viridis (its lightest tenth, yellow, vanishes on white).
DEPTH_SCALE, DEPTH_LIGHTEST = "Viridis", 0.85
#: At most this many backbones in the compare chart (a row of panels each): more rows get too short to read.
MAX_BACKBONES = 3
#: Height (px) of one row of compare panels, and the space under them for the x title and the legend.
ROW_PX, LEGEND_PX = 300, 110


def depth_colours(depths: Sequence[int]) -> dict[int, str]:
    """A colour per fine-tuning depth: darker for deeper, evenly spread over the scale (one depth: the middle)."""
    ordered = sorted(set(depths))
    n = len(ordered)
    where = [DEPTH_LIGHTEST * (1 - k / (n - 1)) if n > 1 else DEPTH_LIGHTEST / 2 for k in range(n)]
    return dict(zip(ordered, sample_colorscale(DEPTH_SCALE, where), strict=True))


def run_label(backbone: str, depth: int) -> str:
    """A compared run's name in hovers and tables: ``alexnet d5``."""
    return f"{backbone} d{depth}"


def compare_table(histories: Mapping[str, pd.DataFrame], quantity: str, splits: Sequence[str]) -> pd.DataFrame:
    """``quantity`` per epoch of several runs as one long table (run, split, epoch, value): the compare chart's data."""
    if quantity not in QUANTITIES:
        raise ValueError(f"Unknown quantity {quantity!r}; choose one of {', '.join(QUANTITIES)}.")
    parts = [pd.DataFrame({"run": label, "split": split, "epoch": h["epoch"].to_numpy(),
                           quantity: h[f"{split}_{quantity}"].to_numpy(dtype=float)})
             for label, h in histories.items() for split in splits if _has(h, f"{split}_{quantity}")]
    columns = ["run", "split", "epoch", quantity]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def compare_figure(histories: Mapping[tuple[str, int], pd.DataFrame], quantity: str, splits: Sequence[str],
                   best_epochs: Mapping[tuple[str, int], int]) -> go.Figure:
    """``quantity`` per epoch of several runs keyed by (backbone, depth): a row of panels per backbone, a panel per
    split (its dash as elsewhere on the page), a colour per depth shared by every panel with one legend entry per
    depth under the plot (clicking it hides that depth everywhere), stars at best epochs."""
    if quantity not in QUANTITIES:
        raise ValueError(f"Unknown quantity {quantity!r}; choose one of {', '.join(QUANTITIES)}.")
    backbones = list(dict.fromkeys(b for b, _ in histories))
    several = len(backbones) > 1
    titles = [f"{b} · {SPLIT_NAMES[s]}" if several else SPLIT_NAMES[s].capitalize() for b in backbones for s in splits]
    fig = make_subplots(rows=len(backbones), cols=len(splits), shared_yaxes="all", shared_xaxes="all",
                        horizontal_spacing=0.03, vertical_spacing=0.12 / len(backbones), subplot_titles=titles)
    colours = depth_colours([d for _, d in histories])
    name = QUANTITIES[quantity]
    in_legend: set[int] = set()
    for (backbone, depth), history in sorted(histories.items(), key=lambda kv: (kv[0][1], backbones.index(kv[0][0]))):
        label, color, row = run_label(backbone, depth), colours[depth], backbones.index(backbone) + 1
        for col, split in enumerate(splits, start=1):
            column = f"{split}_{quantity}"
            if not _has(history, column):
                continue
            group = dict(legendgroup=f"depth {depth}", meta={"run": label, "split": split})
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines", name=f"depth {depth}",
                                     showlegend=depth not in in_legend, line=dict(color=color, dash=SPLIT_DASH[split],
                                                                                  width=2),
                                     hovertemplate=f"{label} · {SPLIT_NAMES[split]}<br>epoch %{{x}}: {name} "
                                                   "%{y:.3f}<extra></extra>", **group), row=row, col=col)
            in_legend.add(depth)
            best = history[history["epoch"] == best_epochs[(backbone, depth)]]
            fig.add_trace(go.Scatter(x=best["epoch"], y=best[column], mode="markers", showlegend=False,
                                     name=f"{label} · best epoch",
                                     marker=dict(symbol="star", size=12, color=color,
                                                 line=dict(width=1, color="white")),
                                     hovertemplate=f"{label}: best epoch %{{x}}<br>{SPLIT_NAMES[split]} "
                                                   f"{name} %{{y:.3f}}<extra></extra>", **group), row=row, col=col)
    height = ROW_PX * len(backbones)
    # One legend entry per depth, in one row under the panels (six depths at most: it never scrolls).
    fig.update_layout(height=height + 40 + LEGEND_PX, margin=dict(t=40, b=LEGEND_PX, l=60, r=20),
                      legend=dict(orientation="h", yanchor="top", y=-80 / height, x=0,
                                  title=dict(text="Fine-tuning depth (star: best epoch)", side="left")))
    longest = max(len(h) for h in histories.values())
    fig.update_xaxes(dtick=1 if longest <= 20 else None)  # whole epochs
    fig.update_xaxes(title_text="Epoch", row=len(backbones))
    fig.update_yaxes(range=None if quantity == "loss" else [-0.02, 1.02])
    for row in range(1, len(backbones) + 1):
        fig.update_yaxes(title_text=name, row=row, col=1)
    return fig


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
