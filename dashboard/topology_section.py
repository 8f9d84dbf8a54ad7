"""Layers page: the network topology view Wan et al. proposed (sec. 4), computed and cached by the engine."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import engine
from engine.topology import MAX_EDGES, REACH

from .background import background
from .exports import export_name
from .topology_charts import change_table, topology_figure
from .url_state import url_widget
from .widgets import caption, figure

VIEW_LABELS = {"before": "Before fine-tuning", "after": "After fine-tuning", "change": "Change (after − before)"}
CHANNEL_CHOICES = (8, 16, 24, 32)
DEFAULT_CHANNELS, DEFAULT_EDGES = 24, 12
BLOCKS = tuple(range(1, engine.N_BLOCKS + 1))


def _pickers() -> tuple[str, int, int, list[int]]:
    """The view, channels per layer, edges per pair and blocks shown, each kept in the URL."""
    c1, c2, c3, c4 = st.columns([2, 1.2, 1.4, 2.4])
    view = url_widget(c1.radio, "Weights", engine.TOPOLOGY_VIEWS, key="layers_topo_view", param="topo_view",
                      default="after", format_func=VIEW_LABELS.get, horizontal=True,
                      help="The same channels with the initial weights, the trained ones, or the change.")
    k = url_widget(c2.select_slider, "Channels per layer", CHANNEL_CHOICES, key="layers_topo_channels",
                   param="topo_channels", default=DEFAULT_CHANNELS,
                   help="Each layer's channels with the largest filter norm; the rest are hidden (counted).")
    n = url_widget(c3.slider, "Edges per layer pair", range(1, MAX_EDGES + 1), key="layers_topo_edges",
                   param="topo_edges", default=DEFAULT_EDGES, min_value=1, max_value=MAX_EDGES,
                   help="The strongest connections between the shown channels of each pair of consecutive layers.")
    blocks = url_widget(c4.multiselect, "Blocks", BLOCKS, key="layers_topo_blocks", param="topo_blocks",
                        default=list(BLOCKS), help="Zoom in on some of the five blocks (deep backbones have many "
                                                   "layers).")
    return view, int(k), int(n), sorted(blocks) or list(BLOCKS)


def _block_changes(runs: tuple[engine.Run, ...]) -> dict[int, list[float]]:
    """``engine.run_block_change`` of each run, by its depth."""
    return {run.config.depth: engine.run_block_change(run) for run in runs}


def _change_by_depth(runs: dict[int, engine.Run]) -> None:
    """How much each block's convolutions changed at each trained depth of the selection."""
    changes = background(_block_changes, tuple(runs[d] for d in sorted(runs)), label="Weight change per block",
                         name="layers_topology_change_job")
    if changes is None:
        return
    st.dataframe(pd.DataFrame(change_table(changes)), hide_index=True, width="content")
    caption("Relative change of each block's convolution weights in fine-tuning, ‖W_after − W_before‖ / "
            "‖W_before‖ over all its kernels, for each trained depth of this experiment: at depth d only the last d "
            "blocks train, so the others read 0.00%.", label="About this table")


def topology_section(run: engine.Run, runs: dict[int, engine.Run]) -> None:
    """The layered channel graph of the run's backbone with bundled edges, before / after fine-tuning / the change."""
    st.subheader("Network topology (Wan et al. §4)")
    view, k, n, blocks = _pickers()
    try:
        topo = background(engine.run_topology, run, view, k, MAX_EDGES, reports=True, name="layers_topology_job",
                          label=f"Topology of {run.config.backbone} ({VIEW_LABELS[view].lower()})")
    except engine.LungLensError as exc:
        st.info(f"The topology of {run.config.backbone} cannot be drawn: {exc}")
        return
    if topo is None:
        return
    fig = topology_figure(topo.layers, topo.nodes, topo.edges, topo.curves, view=view, n_edges=n, blocks=blocks)
    figure(fig, export_name(run, f"topology-{view}"), key="layers_topology")
    if view == "change" and not len(topo.edges["src"]):
        st.info(f"No connection changed: at fine-tuning depth {run.config.depth} no block trains.")
    hidden = sum(layer["hidden"] for layer in topo.layers if layer["block"] in blocks)
    shown = sum(layer["shown"] for layer in topo.layers if layer["block"] in blocks)
    joined = sum(1 for layer in topo.layers[1:] if layer["other_inputs"])
    trains = ("no block trains" if run.config.depth == 0 else
              f"blocks {engine.N_BLOCKS - run.config.depth + 1}-{engine.N_BLOCKS} train (orange)")
    caption(
        f"{run.config.backbone}'s convolutions along its main path as columns ({len(topo.layers)} layers), grouped "
        f"by LungLens's five blocks; at fine-tuning depth {run.config.depth} {trains}. Nodes: each layer's {k} "
        f"channels with the largest filter L2 norm ({shown} drawn, sized by it within their layer; {hidden} hidden, a "
        "column's +N under it). "
        f"Edges: between consecutive layers, the {n} strongest connections of the drawn channels, strength = the "
        "L2 norm of the next layer's spatial kernel on that channel; line width and shade by strength"
        + (", red = stronger after fine-tuning, blue = weaker; frozen blocks have none" if view == "change" else "")
        + ". Which input channel carries which channel was measured by offsetting each layer's outputs, so "
        "concatenations, shortcut sums and grouped convolutions are followed"
        + (f"; {joined} layers also read channels that the previous one does not give (a concatenation of earlier "
           "layers' outputs), which have no edge here" if joined else "")
        + ". Wan et al. proposed this view, noting the millions "
        "of links between two layers, with geometry-based edge bundling (Cui et al. 2008): here each pair's kept "
        "edges are clustered by k-means on their end heights and each cluster is routed through one control point "
        f"midway. The first view of a backbone traces its layers (up to {REACH} blocks on from each), then is cached."
    )
    if len(runs) > 1:
        _change_by_depth(runs)
