"""CNN layers (Wan et al. sec. 3.4, fig. 8-10): first-layer filters, hidden neurons by guided backpropagation and
activation maps."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

import engine
from dashboard.exports import export_name
from dashboard.features_charts import image_labels
from dashboard.layers_charts import filter_figure, filters_unchanged, image_grid_figure, sample_rows
from dashboard.url_state import flag, url_widget
from dashboard.widgets import caption, depth_slider, figure, require_runs, run_images
from engine.layers import (
    FILTER_VIEWS,
    block_output_layers,
    layer_choices,
    run_activation_maps,
    run_filter_grid,
    run_guided_backprop,
    run_guided_backprop_across_layers,
)

FILTER_LABELS = {"before": "Before fine-tuning", "after": "After fine-tuning",
                 "difference": "Difference (after − before)"}
PICK_LABELS = {"top": "8 most activated", "random": "8 random"}
N_NEURONS = 8  # Wan fig. 9: eight neurons per layer
N_IMAGES = 8  # Wan fig. 10: eight example images


# ``finished`` keys the caches so that a run trained again under the same id is not served stale.
@st.cache_data(show_spinner=False, max_entries=64)
def _filters(run_id: str, finished: float, which: str) -> np.ndarray:
    return run_filter_grid(engine.load_run(run_id), which)


@st.cache_data(show_spinner=False, max_entries=64)
def _layers(run_id: str, finished: float) -> tuple[dict[str, str], list[str]]:
    model = engine.load_run(run_id).load_model()
    return dict(layer_choices(model)), block_output_layers(model)


@st.cache_data(show_spinner=False, max_entries=32)
def _neurons(run_id: str, finished: float, row: int, layer: str, mode: str, seed: int,
             gray: bool) -> tuple[np.ndarray, list[int]]:
    return run_guided_backprop(engine.load_run(run_id), row, layer, N_NEURONS, mode, seed, gray)


@st.cache_data(show_spinner=False, max_entries=16)
def _across_layers(run_id: str, finished: float, rows: tuple[int, ...], mode: str, seed: int,
                   gray: bool) -> tuple[np.ndarray, list[int]]:
    return run_guided_backprop_across_layers(engine.load_run(run_id), rows, mode, seed, gray)


@st.cache_data(show_spinner=False, max_entries=32)
def _activations(run_id: str, finished: float, row: int, layer: str) -> tuple[np.ndarray, list[int]]:
    return run_activation_maps(engine.load_run(run_id), row, layer)


def _file(run: engine.Run, row: int) -> str:
    """The file name of ``run.predictions`` row ``row``: how links and exports name an image."""
    return str(run.predictions["file"].iloc[row])


def _short(label: str) -> str:
    """``"block 3 · conv 1 (blocks.2.6)"`` -> ``"block 3 · conv 1"``."""
    return label.split(" (")[0]


def _gray_as_rgb(tiles: np.ndarray) -> np.ndarray:
    """(n, k, k) gray tiles as (n, k, k, 3) with R = G = B, so that 0.5 (no change) is drawn mid-grey: a 2-D mosaic
    would be contrast-stretched to its own min and max by plotly."""
    return np.repeat(tiles[..., None], 3, axis=-1) if tiles.ndim == 3 else tiles


def _filters_section(run: engine.Run, depth: int) -> None:
    st.subheader("First-layer filters (Wan et al., fig. 8)")
    view = url_widget(st.radio, "Filters", FILTER_VIEWS, key="layers_filter_view", param="filters",
                      default=FILTER_VIEWS[0], format_func=FILTER_LABELS.get, horizontal=True)
    try:
        with st.spinner("Reading the first-layer weights…"):
            filters = _filters(run.id, run.result["finished"], view)
            difference = filters if view == "difference" else _filters(run.id, run.result["finished"], "difference")
    except engine.ConfigError as exc:
        st.info(f"First-layer filters cannot be shown for {run.config.backbone}: {exc}")
        return
    except engine.LungLensError as exc:
        st.error(f"The first-layer filters of this run cannot be read: {exc}")
        return
    n, k = filters.shape[:2]
    chart, notes = st.columns([3, 2])
    figure(filter_figure(_gray_as_rgb(filters)), export_name(run, f"filters-{view}"), key="layers_filters",
           where=chart)
    with notes:
        if filters_unchanged(difference):
            trained = ("no conv block trains" if depth == 0
                       else f"only the last {depth} of {engine.N_BLOCKS} conv blocks train")
            st.info(f"conv1 is frozen at this depth, so before = after: at fine-tuning depth {depth} {trained}; "
                    f"block 1, which holds conv1, trains only at depth {engine.N_BLOCKS}.")
        else:
            st.success("conv1 changed during fine-tuning: compare 'before' and 'after', or see the difference.")
        init = {"imagenet": "the ImageNet weights", "builtin": "the built-in backbone pretrained on the phantom corpus",
                "xrv-densenet121": "TorchXRayVision's weights pretrained on chest X-rays",
                "scratch": "a seeded random initialisation"}.get(run.config.init, run.config.init)
        caption(
            f"The {n} filters of {run.config.backbone}'s first conv layer, {k} × {k} each, drawn as gray images and "
            "magnified with nearest-neighbour pixels (Wan's AlexNet had 96 such 11 × 11 filters; torchvision's has "
            "64). The input is one gray image copied into the three colour channels, so a filter acts on it as the "
            "sum of its three channel kernels (each divided by its channel's normalisation std): that sum is drawn. "
            f"Before / after: each filter min-max scaled on its own. 'Before' is {init}. Difference: after − "
            "before on one scale for all filters, mid-grey = unchanged, so filters that changed more look stronger."
        )


def _neurons_tab(run: engine.Run, row: int, layer: str, label: str, mode: str, seed: int, gray: bool) -> None:
    finished = run.result["finished"]
    with st.spinner("Guided backpropagation of 8 neurons…"):
        recon, channels = _neurons(run.id, finished, row, layer, mode, seed, gray)
    image_col, grid_col = st.columns([1, 6])
    image_col.image(run_images(run)[row], caption="input", width="stretch")
    figure(image_grid_figure(recon, cols=N_NEURONS, titles=[f"ch {c}" for c in channels], row_height=110),
           export_name(run, f"neurons-{layer}-{_file(run, row)}"), key="layers_neurons", where=grid_col)
    how = ("the 8 channels with the highest mean activation on this image" if mode == "top"
           else f"8 channels drawn at random (seed {seed}), as in Wan")
    caption(
        f"Wan et al. fig. 9: what 8 neurons of {label} respond to in this image. For each of {how}, the neuron at "
        "the channel's most activated position is guided-backpropagated to the input (Springenberg et al.; Wan eq. "
        "6: only positive activations and positive gradients pass) with Captum's NeuronGuidedBackprop; each "
        "reconstruction is min-max scaled on its own."
    )


def _across_layers_tab(run: engine.Run, choices: dict[str, str], block_layers: list[str], mode: str, seed: int,
                       gray: bool) -> None:
    preds = run.predictions
    split = "test" if (preds["split"] == "test").any() else "train"
    c1, c2, _ = st.columns([2, 1, 3])
    label = url_widget(c1.selectbox, "Images of class", range(len(run.classes)), key="layers_fig10_class",
                       param="class", default=run.positive, encode=lambda i: run.classes[i],
                       format_func=lambda i: run.classes[i])
    draw = url_widget(c2.number_input, "Image draw", range(1000), key="layers_fig10_draw", param="draw", default=0,
                      min_value=0, max_value=999, help="Seed of the random choice of images, as Wan chose them at "
                                                       "random.")
    rows = sample_rows(preds, split, label, N_IMAGES, int(draw))
    if not rows:
        st.info(f"The {split} split has no image of class {run.classes[label]}.")
        return
    with st.spinner(f"Guided backpropagation of one neuron per layer on {len(rows)} images…"):
        recon, channels = _across_layers(run.id, run.result["finished"], tuple(rows), mode, seed, gray)
    n_layers, n_images = recon.shape[:2]
    row_titles = [f"{_short(choices[name])} · ch {c}" for name, c in zip(block_layers, channels, strict=True)]
    fig = image_grid_figure(recon.reshape(n_layers * n_images, *recon.shape[2:]), cols=n_images, row_titles=row_titles,
                            column_titles=[Path(preds["file"].iloc[r]).stem for r in rows], row_height=120)
    figure(fig, export_name(run, f"one-neuron-per-layer-{run.classes[label]}-draw{draw}"), key="layers_across")
    pick = "the highest mean activation over these images" if mode == "top" else f"drawn at random (seed {seed})"
    caption(
        f"Wan et al. fig. 10: rows are the last conv layer of each of the {n_layers} blocks (low to high level), "
        f"columns {n_images} {split} images of class {run.classes[label]} drawn at random. Per layer one channel "
        f"({pick}) is reconstructed on every image, at each image's most activated position. Wan drew these in colour "
        "'to clearly show the patterns'; the Grayscale toggle averages the colour channels."
    )


def _activations_tab(run: engine.Run, row: int, layer: str, label: str) -> None:
    with st.spinner("Computing the layer's activations…"):
        maps, channels = _activations(run.id, run.result["finished"], row, layer)
    upper = min(64, len(maps))
    n = url_widget(st.slider, "Maps shown (highest mean activation first)", range(1, upper + 1), key="layers_top_n",
                   param="maps", default=min(16, upper), min_value=1, max_value=upper)
    fig = image_grid_figure(maps[:n], cols=8, titles=[f"ch {c}" for c in channels[:n]], row_height=130)
    figure(fig, export_name(run, f"activations-{layer}-{_file(run, row)}"), key="layers_activations")
    caption(
        f"The output of {label} ({maps.shape[1]} × {maps.shape[2]} per channel, {len(maps)} channels) for the chosen "
        f"image: the {n} channels with the highest mean activation, each map min-max scaled on its own (bright = "
        "strong response). The conv layer's output is taken before its ReLU."
    )


def _hidden_section(run: engine.Run) -> None:
    st.subheader("Hidden layers (Wan et al., fig. 9-10)")
    try:
        choices, block_layers = _layers(run.id, run.result["finished"])
    except engine.LungLensError as exc:
        st.error(f"The model of this run cannot be loaded: {exc}")
        return
    if not choices:
        st.info(f"{run.config.backbone} has no convolutional layer to visualise.")
        return
    preds = run.predictions
    test_rows = [int(r) for r in np.flatnonzero((preds["split"] == "test").to_numpy())] or list(range(len(preds)))
    labels = image_labels(preds, run.classes)
    c1, c2, c3, c4, c5 = st.columns([4, 3, 2, 1, 2])
    row = url_widget(c1.selectbox, "Image (test split)", test_rows, key="layers_image", param="image",
                     default=test_rows[0], encode=lambda r: _file(run, r), format_func=labels.get)
    layer = url_widget(c2.selectbox, "Conv layer", list(choices), key="layers_layer", param="layer",
                       default=list(choices)[len(choices) // 2], format_func=choices.get)
    mode = url_widget(c3.radio, "Neurons", tuple(PICK_LABELS), key="layers_pick", param="neurons", default="top",
                      format_func=PICK_LABELS.get,
                      help="Wan picked neurons at random; the most activated ones show what the layer sees most.")
    seed = int(url_widget(c4.number_input, "Seed", range(1000), key="layers_seed", param="seed", default=0,
                          min_value=0, max_value=999, disabled=mode != "random",
                          help="Seed of the random choice of neurons."))
    gray = url_widget(c5.toggle, "Grayscale", (False, True), key="layers_gray", param="gray", default=False,
                      encode=flag, help="Average the reconstructions' colour channels.")
    fig9, fig10, activations = st.tabs(["Neurons of one layer (fig. 9)", "One neuron per layer (fig. 10)",
                                        "Activation maps"])
    seed = seed if mode == "random" else 0  # the top channels do not depend on it: one cache entry
    with fig9:
        _guarded(run, _neurons_tab, run, row, layer, choices[layer], mode, seed, gray)
    with fig10:
        _guarded(run, _across_layers_tab, run, choices, block_layers, mode, seed, gray)
    with activations:
        _guarded(run, _activations_tab, run, row, layer, choices[layer])


def _guarded(run: engine.Run, view: Callable[..., None], *args: Any) -> None:
    """Draw one view; a view that does not apply becomes an info box, another engine error an error box."""
    try:
        view(*args)
    except engine.ConfigError as exc:
        st.info(f"This view does not apply to {run.config.backbone}: {exc}")
    except engine.LungLensError as exc:
        st.error(f"This view cannot be computed for run {run.id}: {exc}")


st.title("Layers")
sel, runs = require_runs("Layers")
depth = depth_slider(runs, key="layers_depth")
run = runs[depth]
caption(f"Run `{run.id}`: {run.config.backbone}, fine-tuning depth {depth}, init {run.config.init}, "
        f"{run.config.image_size} px.", label="About this run")
_filters_section(run, depth)
_hidden_section(run)
