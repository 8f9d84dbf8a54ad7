"""Plotly figures of the Layers page: first-layer filter mosaics and image grids (Wan et al. fig. 8-10)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from skimage.util import montage

#: Grid lines between mosaic tiles: white, as in Wan's fig. 8.
MOSAIC_FILL = 1.0
#: Top margin (px) kept free for the Plotly toolbar (PNG export, full screen), so it covers no tile or title.
TOOLBAR_PX = 30


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] -> uint8 0-255 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def mosaic(tiles: np.ndarray, cols: int, scale: int = 1, pad: int = 1) -> np.ndarray:
    """(n, h, w[, 3]) tiles in [0, 1] -> one image: tiles upscaled ``scale`` times by nearest neighbour (sharp pixels),
    laid out row by row in ``cols`` columns with ``pad`` white pixels around each; unused cells are white."""
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim not in (3, 4) or len(tiles) == 0:
        raise ValueError(f"Expected (n, h, w) or (n, h, w, 3) tiles, got shape {tiles.shape}")
    big = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    rgb = tiles.ndim == 4
    return montage(big, fill=(MOSAIC_FILL,) * 3 if rgb else MOSAIC_FILL,
                   grid_shape=(math.ceil(len(tiles) / cols), cols), padding_width=pad, channel_axis=-1 if rgb else None)


def gray_as_rgb(tiles: np.ndarray) -> np.ndarray:
    """(n, h, w) gray tiles as (n, h, w, 3) with R = G = B (RGB tiles unchanged), so that an image trace draws them
    as they are: a 2-D heatmap would be contrast-stretched to its own min and max by plotly."""
    tiles = np.asarray(tiles)
    return np.repeat(tiles[..., None], 3, axis=-1) if tiles.ndim == 3 else tiles


def filter_figure(filters: np.ndarray, cols: int = 8, scale: int = 8) -> go.Figure:
    """First-layer filters, (n, k, k) gray or (n, k, k, 3) RGB in [0, 1], as one sharp mosaic image, ``cols`` filters
    a row (Wan fig. 8)."""
    fig = px.imshow(to_uint8(mosaic(gray_as_rgb(filters), cols, scale, pad=2)), binary_string=True)
    fig.update_traces(hoverinfo="skip")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=max(240, 60 * math.ceil(len(filters) / cols)) + TOOLBAR_PX,
                      margin=dict(t=TOOLBAR_PX, b=5, l=5, r=5))
    return fig


def _lines(titles: Sequence[str] | None) -> int:
    """The most lines (``<br>``-separated) of any title; 0 without titles."""
    return max((t.count("<br>") + 1 for t in titles), default=0) if titles else 0


def _colour_bar(fig: go.Figure, colorscale: str, title: str) -> None:
    """A colour bar from 0 to 1 for RGB tiles coloured on ``colorscale`` (an invisible one-point trace carries it)."""
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
                             marker=dict(color=[0], colorscale=colorscale, cmin=0, cmax=1, showscale=True,
                                         colorbar=dict(title=title, thickness=10, len=0.8))))


def image_grid_figure(tiles: np.ndarray, cols: int, titles: Sequence[str] | None = None,
                      row_titles: Sequence[str] | None = None, column_titles: Sequence[str] | None = None,
                      colorscale: str = "Viridis", row_height: int = 150, colorbar: str | None = None) -> go.Figure:
    """Tiles on a grid of subplots, row by row: (n, h, w, 3) as RGB images (floats in [0, 1], or uint8), (n, h, w)
    as heatmaps sharing one colour scale. ``titles`` label each tile; ``row_titles`` / ``column_titles`` label whole
    rows / columns (``<br>`` breaks a title's line). ``colorbar``: the title of a 0-1 colour bar on ``colorscale``
    for RGB tiles coloured by it (overlays). Titles sit below the top margin kept free for the toolbar."""
    tiles = np.asarray(tiles)
    rows = math.ceil(len(tiles) / cols)
    gap = 16 * _lines(titles) + 6 if titles else 6  # px between rows: room for the next row's tile titles
    plot_height = row_height * rows + gap * (rows - 1)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        row_titles=list(row_titles) if row_titles else None,
                        column_titles=list(column_titles) if column_titles else None,
                        horizontal_spacing=0.01, vertical_spacing=gap / plot_height if rows > 1 else 0)
    rgb = tiles.ndim == 4
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        name = titles[i] if titles else f"tile {i}"
        if rgb:
            trace = px.imshow(tile if tile.dtype == np.uint8 else to_uint8(tile), binary_string=True).data[0]
            trace.update(name=name, hoverinfo="skip")
        else:
            trace = go.Heatmap(z=tile, coloraxis="coloraxis", name=name,
                               hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}: %{{z:.2f}}<extra></extra>")
        fig.add_trace(trace, row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False, constrain="domain")
    # Square pixels in every cell; heatmaps are drawn with row 0 at the top, as images are.
    fig.update_yaxes(visible=False, constrain="domain", autorange="reversed")
    for i in range(rows * cols):
        suffix = "" if i == 0 else str(i + 1)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    fig.update_annotations(font_size=12)
    top = TOOLBAR_PX + 16 * max(_lines(titles), _lines(column_titles)) + (8 if titles or column_titles else 0)
    right = 25 if row_titles else 5
    if colorbar is not None and rgb:
        _colour_bar(fig, colorscale, colorbar)
    if not rgb:
        fig.update_layout(coloraxis=dict(colorscale=colorscale, cmin=0, cmax=1,
                                         colorbar=dict(title=colorbar or "scaled", thickness=10, len=0.8)))
    fig.update_layout(height=plot_height + top + 10, margin=dict(t=top, b=5, l=5, r=right))
    return fig


def filters_unchanged(difference: np.ndarray) -> bool:
    """Whether a ``run_filter_grid(run, "difference")`` is uniformly mid-grey, i.e. the first layer did not change."""
    return bool(np.all(np.asarray(difference) == 0.5))
