"""Plotly figures of Cheng et al.'s Table 1 (``engine.cheng``): a score per backbone without and with augmentation,
and the change augmentation makes per backbone and class. Both take one depth and fold of the comparison."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.cheng import ALL_CLASSES

#: Without augmentation, then with it: legend name and bar colour.
SIDES = ((False, "without augmentation", "#94a3b8"), (True, "with augmentation", "#2563eb"))


def _class_of(figure: str, class_: str) -> str:
    """The ``class`` of a figure's rows: accuracy is of every class together."""
    return ALL_CLASSES if figure == "accuracy" else class_


def figure_label(figure: str, class_: str) -> str:
    """``covid F1``, or ``accuracy``."""
    return figure if figure == "accuracy" else f"{class_} {figure}"


def augmentation_bars(table: pd.DataFrame, figure: str, class_: str) -> go.Figure:
    """Grouped bars of one score per backbone, without and with augmentation, its 95% CI as error bars."""
    rows = table[(table["figure"] == figure) & (table["class"] == _class_of(figure, class_))]
    backbones = list(dict.fromkeys(rows["backbone"]))
    fig = go.Figure()
    for on, name, color in SIDES:
        side = rows[rows["augment"] == on].set_index("backbone").reindex(backbones)
        value = side["value"].to_numpy(dtype=float)
        fig.add_trace(go.Bar(
            x=backbones, y=value, name=name, marker_color=color,
            error_y=dict(type="data", array=side["high"].to_numpy(dtype=float) - value,
                         arrayminus=value - side["low"].to_numpy(dtype=float), visible=True),
            customdata=np.c_[side["low"], side["high"], side["seconds"]].astype(float),
            hovertemplate=f"%{{x}}, {name}: %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
                          "<br>trained in %{customdata[2]:.0f} s<extra></extra>"))
    fig.update_layout(barmode="group", height=400, margin=dict(t=50, b=70, l=60, r=20),
                      title=dict(text=f"Test {figure_label(figure, class_)} with and without augmentation", x=0),
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.14, yanchor="top"))
    fig.update_yaxes(range=[0, 1.05], title_text=f"{figure_label(figure, class_)} (95% CI)")
    return fig


def change_heatmap(effect: pd.DataFrame, classes: list[str], figure: str = "F1") -> go.Figure:
    """The change augmentation makes (with - without) per backbone: accuracy, then ``figure`` of every class, in a
    red-blue scale centred on 0; the hover gives both values and the change's paired 95% CI."""
    columns = [("accuracy", ALL_CLASSES), *((figure, c) for c in classes)]
    backbones = list(dict.fromkeys(effect["backbone"]))
    indexed = effect.set_index(["backbone", "figure", "class"])
    cells = [[indexed.loc[(b, f, c)] if (b, f, c) in indexed.index else None for f, c in columns] for b in backbones]

    def grid(name: str) -> np.ndarray:
        return np.array([[np.nan if cell is None else float(cell[name]) for cell in row] for row in cells])

    change = grid("change")
    extent = float(np.nanmax(np.abs(change))) if np.isfinite(change).any() else 0.0
    fig = go.Figure(go.Heatmap(
        z=change, x=[figure_label(f, c) for f, c in columns], y=backbones, zmid=0, zmin=-max(extent, 0.01),
        zmax=max(extent, 0.01), colorscale="RdBu", colorbar=dict(title="change"),
        text=[[("" if not np.isfinite(v) else f"{v:+.3f}") for v in row] for row in change], texttemplate="%{text}",
        customdata=np.dstack([grid("without"), grid("with"), grid("low"), grid("high")]),
        hovertemplate="%{y}, %{x}: %{customdata[0]:.3f} without, %{customdata[1]:.3f} with augmentation<br>"
                      "change %{z:+.3f} [%{customdata[2]:.3f}, %{customdata[3]:.3f}]<extra></extra>"))
    fig.update_layout(height=max(260, 60 + 44 * len(backbones)), margin=dict(t=50, b=60, l=110, r=20),
                      title=dict(text="Change with augmentation (with - without)", x=0))
    fig.update_yaxes(autorange="reversed")
    return fig
