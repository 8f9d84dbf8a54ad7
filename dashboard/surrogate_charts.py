"""Plotly figures of the decision-tree surrogate (Wan et al. sec. 4): fidelity against tree depth, and the tree."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

#: The fidelity curve's lines: column -> (legend name, dash).
FIDELITY_LINES: dict[str, tuple[str, str]] = {
    "test_fidelity": ("test fidelity (agreement with the CNN)", "solid"),
    "train_fidelity": ("train fidelity (what the tree was fitted to)", "dash"),
    "test_accuracy": ("tree's test accuracy vs true labels", "dot"),
}
#: Nodes down to this depth (and those on the traced path) get a text box; deeper ones are markers with hover text.
BOX_DEPTH = 3
#: Leaves get boxes only when there are at most this many (more would overlap); else only on the path.
MAX_BOXED_LEAVES = 10
#: Characters per line of a node's box.
WRAP = 24
#: Pixels per tree level, and the colour of the traced path.
LEVEL_PX = 125
PATH_COLOUR = "#111111"
#: Fill of the chosen leaf's box.
LEAF_FILL = "#fff1a8"
PALETTE = qualitative.D3


def class_colour(index: int) -> str:
    """The colour of class ``index`` (as the Features page colours classes)."""
    return PALETTE[index % len(PALETTE)]


def fidelity_figure(table: pd.DataFrame, depth: int, target: float) -> go.Figure:
    """Test and train fidelity and the tree's test accuracy against tree depth, the CNN's test accuracy as a line,
    ``target`` fidelity dotted and the chosen ``depth`` marked."""
    fig = go.Figure()
    for column, (name, dash) in FIDELITY_LINES.items():
        fig.add_trace(go.Scatter(x=table["depth"], y=table[column], name=name, mode="lines+markers",
                                 line=dict(dash=dash, width=3 if column == "test_fidelity" else 2),
                                 hovertemplate="depth %{x}: %{y:.1%}<extra>" + name + "</extra>"))
    cnn = float(table["cnn_test_accuracy"].iloc[0])
    fig.add_hline(y=cnn, line=dict(color="gray", dash="longdash", width=1),
                  annotation_text=f"CNN's test accuracy {cnn:.1%}", annotation_position="bottom right")
    fig.add_hline(y=target, line=dict(color="lightgray", dash="dot", width=1),
                  annotation_text=f"{target:.0%} fidelity", annotation_position="top left")
    fig.add_vline(x=depth, line=dict(color=PATH_COLOUR, width=1, dash="dot"))
    fig.update_layout(height=360, margin=dict(t=30, b=10, l=10, r=10), xaxis=dict(title="tree depth", dtick=1),
                      yaxis=dict(title="share of images", tickformat=".0%", range=[0, 1.05]),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return fig


def tree_positions(nodes: Sequence[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """(x, y) of each node: leaves side by side left to right in depth-first order, a split node above the middle of
    its two children, one level per unit of y (the root at 0, going down)."""
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(i: int) -> float:
        node = nodes[i]
        if node["leaf"]:
            x = next_leaf[0]
            next_leaf[0] += 1
        else:
            x = (place(node["left"]) + place(node["right"])) / 2
        pos[i] = (x, -float(node["depth"]))
        return x

    place(0)
    return pos


def node_text(node: dict[str, Any], classes: Sequence[str]) -> str:
    """A node's box: its split (feature <= threshold, wrapped), images and the CNN's majority class there."""
    n = node["n_train"]
    share = max(node["cnn_counts"]) / n if n else 0.0
    if node["leaf"]:  # narrow: leaves sit side by side
        return f"leaf {node['id']} · n = {n}<br>{classes[node['predicted']]} {share:.0%}"
    split = "<br>".join(textwrap.wrap(f"{node['feature']} ≤ {node['threshold']:.3g}", WRAP))
    return f"{split}<br>n = {n} · {classes[node['predicted']]} {share:.0%}"


def _hover(node: dict[str, Any], classes: Sequence[str]) -> str:
    """A node's hover text: split, counts of the CNN's predictions on train and test, Gini impurity."""
    counts = ", ".join(f"{c} {k}" for c, k in zip(classes, node["cnn_counts"], strict=True))
    tests = ", ".join(f"{c} {k}" for c, k in zip(classes, node["cnn_counts_test"], strict=True))
    split = "leaf" if node["leaf"] else f"{node['feature']} ≤ {node['threshold']:.4g}?"
    return (f"node {node['id']}: {split}<br>train images: {node['n_train']} (CNN predicts {counts})<br>"
            f"test images: {node['n_test']} (CNN predicts {tests})<br>tree predicts: {classes[node['predicted']]}"
            f" · Gini {node['impurity']:.3f}")


def _edges(nodes: Sequence[dict[str, Any]], pos: dict[int, tuple[float, float]],
           on: set[tuple[int, int]]) -> tuple[list[float | None], list[float | None], list[float | None],
                                               list[float | None], list[dict[str, Any]]]:
    """Line coordinates of the edges off and on the path, and the edges' <= / > labels (on the path, or all when the
    tree is shallow)."""
    xs, ys, px, py, labels = [], [], [], [], []
    shallow = max(n["depth"] for n in nodes) <= BOX_DEPTH
    for node in nodes:
        if node["leaf"]:
            continue
        for child, sign in ((node["left"], "≤"), (node["right"], ">")):
            (x0, y0), (x1, y1) = pos[node["id"]], pos[child]
            tx, ty = (px, py) if (node["id"], child) in on else (xs, ys)
            tx += [x0, x1, None]
            ty += [y0, y1, None]
            if shallow or (node["id"], child) in on:
                labels.append(dict(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=f"{sign} {node['threshold']:.3g}",
                                   showarrow=False, font=dict(size=10, color="#444"), bgcolor="white"))
    return xs, ys, px, py, labels


def tree_figure(tree: dict[str, Any], path: Sequence[int] = (), leaf: int | None = None) -> go.Figure:
    """The surrogate tree top-down: nodes coloured by the tree's class (the CNN's majority prediction among the train
    images there), boxes with their split down to ``BOX_DEPTH`` levels (deeper nodes: markers with hover text),
    edges labelled <= / >; the nodes ``path`` (a traced image's route) boxed and joined in black, ``leaf``'s box
    filled yellow."""
    nodes, classes = tree["nodes"], tree["classes"]
    pos = tree_positions(nodes)
    on = set(pairwise(path))
    xs, ys, px, py, labels = _edges(nodes, pos, on)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#bbbbbb", width=1.5), hoverinfo="skip",
                             showlegend=False))
    if px:
        fig.add_trace(go.Scatter(x=px, y=py, mode="lines", line=dict(color=PATH_COLOUR, width=4), hoverinfo="skip",
                                 name="traced image's path"))
    on_path = set(path)
    for c, name in enumerate(classes):
        mine = [n for n in nodes if n["predicted"] == c]
        if not mine:
            continue
        fig.add_trace(go.Scatter(
            x=[pos[n["id"]][0] for n in mine], y=[pos[n["id"]][1] for n in mine], mode="markers",
            name=f"tree predicts {name}", customdata=[n["id"] for n in mine],
            marker=dict(symbol="square", size=[16 if n["leaf"] else 12 for n in mine], color=class_colour(c),
                        line=dict(color=[PATH_COLOUR if n["id"] in on_path else "white" for n in mine],
                                  width=[3 if n["id"] in on_path else 1 for n in mine])),
            text=[_hover(n, classes) for n in mine], hovertemplate="%{text}<extra></extra>"))
    n_leaves = sum(n["leaf"] for n in nodes)
    for node in nodes:  # a box on the node itself, hiding its marker (its hover text moves to the box)
        boxed = node["depth"] <= BOX_DEPTH and (not node["leaf"] or n_leaves <= MAX_BOXED_LEAVES)
        if boxed or node["id"] in on_path or node["id"] == leaf:
            x, y = pos[node["id"]]
            labels.append(dict(x=x, y=y, text=node_text(node, classes), showarrow=False,
                               font=dict(size=11, color="#222"), bgcolor=LEAF_FILL if node["id"] == leaf else "white",
                               bordercolor=class_colour(node["predicted"]), borderpad=3,
                               borderwidth=4 if node["id"] in on_path else 2, hovertext=_hover(node, classes)))
    levels = max(n["depth"] for n in nodes)
    width = max(pos[n["id"]][0] for n in nodes)
    fig.update_layout(annotations=labels, height=LEVEL_PX * (levels + 1) + 120,
                      margin=dict(t=40, b=10, l=10, r=10), plot_bgcolor="white",
                      xaxis=dict(visible=False, range=[-0.7, width + 0.7]),
                      yaxis=dict(visible=False, range=[-levels - 0.6, 0.6]),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig
