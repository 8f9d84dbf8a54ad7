"""CNN layers (Wan et al. sec. 3.4, fig. 8-10): first-layer filters, hidden neurons by guided backpropagation and
activation maps on the image. 3-D CT runs: sections of the 3-D first-layer kernels, and the hidden-layer views on one
axial slice of the volume."""
from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import engine
from dashboard.background import background, cached
from dashboard.exports import export_name
from dashboard.features_charts import image_labels
from dashboard.layers_charts import filter_figure, filters_unchanged, gray_as_rgb, image_grid_figure
from dashboard.surrogate_section import surrogate_section
from dashboard.topology_section import topology_section
from dashboard.url_state import flag, url_tabs, url_widget
from dashboard.widgets import caption, depth_slider, figure, require_runs, run_images
from engine.data.volume import volume_stem
from engine.explain.volume import is_volume_run
from engine.layers import (
    FILTER_SECTIONS,
    FILTER_VIEWS,
    STRETCH_PERCENTILE,
    activation_overlays,
    case_slice,
    filter_sections,
    run_activation_maps,
    run_filter_grid,
    run_guided_backprop,
    run_guided_backprop_across_layers,
    run_layer_choices,
    sample_rows,
)

FILTER_LABELS = {"before": "Before fine-tuning", "after": "After fine-tuning",
                 "difference": "Difference (after − before)"}
SECTION_LABELS = {"axial": "Axial (central slice)", "coronal": "Coronal", "sagittal": "Sagittal",
                  "all": "All three (axial | coronal | sagittal)"}
PICK_LABELS = {"top": "8 most activated", "random": "8 random"}
#: The hidden-layer views: URL code -> tab label (only the open tab is computed).
VIEWS = {"neurons": "Neurons of one layer (fig. 9)", "across": "One neuron per layer (fig. 10)",
         "activations": "Activation maps"}
VIEW_KEY = "layers_view"
SHOW_LABELS = {"overlay": "Overlay", "raw": "Raw maps"}
OPACITIES = tuple(round(0.1 * i, 1) for i in range(1, 11))
N_NEURONS = 8  # Wan fig. 9: eight neurons per layer
N_IMAGES = 8  # Wan fig. 10: eight example images
#: Grid columns: few, so that every tile is large.
NEURON_COLS, OVERLAY_COLS, RAW_COLS = 5, 6, 8
#: Column widths of each tab's second row of pickers (fig. 9 and 10: neurons, seed, grayscale; activation maps:
#: number, overlay or raw, opacity); the first row holds the image (or class) and the layer (or draw).
PICKER_WIDTHS = [2, 1, 1.5]
#: Wrap width (characters) of fig. 10's column titles.
TITLE_WIDTH = 22
STRETCH = (f"Drawn around mid-grey: zero gradient is mid-grey, positive brighter, negative darker; each "
           f"reconstruction on its own scale, its {STRETCH_PERCENTILE:g}th percentile of non-zero |gradient| at "
           "white / black (the few stronger pixels clipped), as SmoothGrad caps its maps (Smilkov et al. 2017).")


def _file(run: engine.Run, row: int) -> str:
    """The file name of ``run.predictions`` row ``row``: how links and exports name an image."""
    return str(run.predictions["file"].iloc[row])


def _input_tiles(run: engine.Run, rows: list[int], slices: list[int] | None = None) -> np.ndarray:
    """The run's gray images at ``rows`` as (n, S, S, 3) RGB tiles in [0, 1]; a 3-D run's volumes by their axial
    slices ``slices``."""
    images = run_images(run)[rows]
    if slices is not None:
        images = images[np.arange(len(rows)), slices]
    return gray_as_rgb(images) / 255.0


def _slice_picker(run: engine.Run, row: int, where: DeltaGenerator) -> int | None:
    """A 3-D run's axial slice of volume ``row`` (0-based; the URL's ``slice`` counts from 1), opening on the slice
    with the most lesion; None for a 2-D run."""
    default = cached(case_slice, run, row)
    if default is None:
        return None
    depth = run_images(run).shape[1]
    z = url_widget(where.slider, "Axial slice", range(1, depth + 1), key=f"layers_slice_{row}", param="slice",
                   default=default + 1, min_value=1, max_value=depth,
                   help="The slice of the volume the views are drawn on, superior to inferior; it opens on the slice "
                        "with the most lesion (the middle one without a lesion).")
    return int(z) - 1


def _slice_text(run: engine.Run, row: int, z: int) -> str:
    """How a caption names the shown slice: ``axial slice 12 of 32 (the slice with the most lesion)``."""
    default = cached(case_slice, run, row)
    why = " (the slice with the most lesion, or the middle one without a lesion)" if z == default else ""
    return f"axial slice {z + 1} of {run_images(run).shape[1]}{why}"


def _filters_section(run: engine.Run, depth: int) -> None:
    st.subheader("First-layer filters (Wan et al., fig. 8)")
    view = url_widget(st.radio, "Filters", FILTER_VIEWS, key="layers_filter_view", param="filters",
                      default=FILTER_VIEWS[0], format_func=FILTER_LABELS.get, horizontal=True)
    try:
        filters = cached(run_filter_grid, run, view)
        difference = filters if view == "difference" else cached(run_filter_grid, run, "difference")
    except engine.ConfigError as exc:
        st.info(f"First-layer filters cannot be shown for {run.config.backbone}: {exc}")
        return
    except engine.LungLensError as exc:
        st.error(f"The first-layer filters of this run cannot be read: {exc}")
        return
    n, k = filters.shape[:2]
    section = None
    if filters.ndim == 4 and filters.shape[-1] != 3:  # 3-D kernels (n, k, k, k): one section of each is drawn
        section = url_widget(st.radio, "Section", FILTER_SECTIONS, key="layers_section", param="section",
                             default=FILTER_SECTIONS[0], format_func=SECTION_LABELS.get, horizontal=True,
                             help="The 3-D kernels cut through their centre: across depth (axial), rows (coronal) or "
                                  "columns (sagittal).")
        filters = filter_sections(filters, section)
    chart, notes = st.columns([3, 2])
    name = f"filters-{view}" + (f"-{section}" if section else "")
    figure(filter_figure(filters, cols=4 if section == "all" else 8), export_name(run, name), key="layers_filters",
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
        if section:
            caption(
                f"The {n} filters of {run.config.backbone}'s first conv layer are 3-D kernels of {k} × {k} × {k} "
                "weights on the volume's one channel (the CT in the lung window, scaled to [0, 1]); shown: "
                + ("each kernel's central axial, coronal and sagittal sections side by side" if section == "all" else
                   f"each kernel's central {section} section (slice {k // 2 + 1} of {k})")
                + ", magnified with nearest-neighbour pixels. Before / after: each kernel min-max scaled over all "
                f"its {k ** 3} weights, so its sections share one scale. 'Before' is {init}. Difference: after − "
                "before on one scale for all kernels, mid-grey = unchanged."
            )
            return
        caption(
            f"The {n} filters of {run.config.backbone}'s first conv layer, {k} × {k} each, drawn as gray images and "
            "magnified with nearest-neighbour pixels (Wan's AlexNet had 96 such 11 × 11 filters; torchvision's has "
            "64). The input is one gray image copied into the three colour channels, so a filter acts on it as the "
            "sum of its three channel kernels (each divided by its channel's normalisation std): that sum is drawn. "
            f"Before / after: each filter min-max scaled on its own. 'Before' is {init}. Difference: after − "
            "before on one scale for all filters, mid-grey = unchanged, so filters that changed more look stronger."
        )


# --- pickers (each tab draws the ones it uses; shared ones keep their value through the URL) -------------------------

def _image_picker(run: engine.Run, where: DeltaGenerator) -> int:
    """A test image (any image when there is no test split), kept in the URL as ``image``; returns its row."""
    preds = run.predictions
    test_rows = [int(r) for r in np.flatnonzero((preds["split"] == "test").to_numpy())] or list(range(len(preds)))
    labels = image_labels(preds, run.classes)
    what = "Volume" if is_volume_run(run) else "Image"
    return url_widget(where.selectbox, f"{what} (test split)", test_rows, key="layers_image", param="image",
                      default=test_rows[0], encode=lambda r: _file(run, r), format_func=labels.get)


def _layer_picker(choices: dict[str, str], where: DeltaGenerator) -> str:
    """A conv layer by its human name, kept in the URL as ``layer``; returns its module name."""
    return url_widget(where.selectbox, "Conv layer", list(choices), key="layers_layer", param="layer",
                      default=list(choices)[len(choices) // 2], format_func=choices.get,
                      help="Conv layers from input to output, named as in the backbone's paper; the block is "
                           f"LungLens's fine-tuning block (1-{engine.N_BLOCKS}).")


def _neuron_pickers(c_mode: DeltaGenerator, c_seed: DeltaGenerator, c_gray: DeltaGenerator,
                    volume: bool = False) -> tuple[str, int, bool]:
    """How neurons are chosen (top / random), the random seed (0 for top) and the grayscale toggle (disabled for a
    ``volume``: its one input channel is drawn gray)."""
    mode = url_widget(c_mode.radio, "Neurons", tuple(PICK_LABELS), key="layers_pick", param="neurons", default="top",
                      format_func=PICK_LABELS.get, horizontal=True,
                      help="Wan picked neurons at random; the most activated ones show what the layer sees most.")
    seed = int(url_widget(c_seed.number_input, "Seed", range(1000), key="layers_seed", param="seed", default=0,
                          min_value=0, max_value=999, disabled=mode != "random",
                          help="Seed of the random choice of neurons."))
    gray = url_widget(c_gray.toggle, "Grayscale", (False, True), key="layers_gray", param="gray", default=False,
                      encode=flag, disabled=volume,
                      help="Not for CT volumes: they have one input channel, drawn gray." if volume else
                      "Average the reconstructions' colour channels.")
    return mode, (seed if mode == "random" else 0), gray  # the top channels do not depend on the seed


# --- the views ---------------------------------------------------------------------------------------------------------

def _neurons_tab(run: engine.Run, choices: dict[str, str]) -> None:
    c1, c2 = st.columns(2)
    row, layer = _image_picker(run, c1), _layer_picker(choices, c2)
    z = _slice_picker(run, row, st)
    mode, seed, gray = _neuron_pickers(*st.columns(PICKER_WIDTHS), volume=z is not None)
    label = choices[layer]
    result = background(run_guided_backprop, run, row, layer, N_NEURONS, mode, seed, gray, reports=True,
                        label=f"Guided backpropagation of {N_NEURONS} neurons of {label}", name="layers_neurons_job",
                        slice_index=z)
    if result is None:
        return
    recon, channels = result
    tiles = np.concatenate([_input_tiles(run, [row], None if z is None else [z]), recon])
    first = "input image" if z is None else f"axial slice {z + 1}"
    fig = image_grid_figure(tiles, cols=NEURON_COLS, titles=[first, *(f"ch {c}" for c in channels)], row_height=180)
    figure(fig, export_name(run, f"neurons-{label}-{_file(run, row)}"), key="layers_neurons")
    how = (f"the 8 channels with the highest mean activation on this {'image' if z is None else 'slice'}"
           if mode == "top"
           else f"8 channels drawn at random (seed {seed}), as in Wan")
    if z is not None:
        caption(
            f"Wan et al. fig. 9 in 3-D: what 8 neurons of {label} respond to in this volume, drawn on its "
            f"{_slice_text(run, row, z)} (first tile). For each of {how}, the neuron at the "
            "channel's most activated position in the layer's slice nearest this one is guided-backpropagated to the "
            "input volume with Captum's NeuronGuidedBackprop (Springenberg et al.; Wan eq. 6), and the gradient's "
            "slice is drawn in gray (the volume has one channel). " + STRETCH
        )
        return
    caption(
        f"Wan et al. fig. 9: what 8 neurons of {label} respond to in this image (first tile). For each of {how}, "
        "the neuron at the channel's most activated position is guided-backpropagated to the input (Springenberg et "
        "al.; Wan eq. 6: only positive activations and positive gradients pass) with Captum's NeuronGuidedBackprop. "
        + STRETCH + (" Grayscale: the mean of the three colour channels' gradients." if gray else
                     " Colour: the gradients of the three input channels, on one scale per image.")
    )


def _across_layers_tab(run: engine.Run, choices: dict[str, str], block_layers: list[str]) -> None:
    preds = run.predictions
    split = "test" if (preds["split"] == "test").any() else "train"
    c1, c2 = st.columns(2)
    label = url_widget(c1.selectbox, "Images of class", range(len(run.classes)), key="layers_fig10_class",
                       param="class", default=run.positive, encode=lambda i: run.classes[i],
                       format_func=lambda i: run.classes[i])
    draw = url_widget(c2.number_input, "Image draw", range(1000), key="layers_fig10_draw", param="draw", default=0,
                      min_value=0, max_value=999, help="Seed of the random choice of images, as Wan chose them at "
                                                       "random.")
    mode, seed, gray = _neuron_pickers(*st.columns(PICKER_WIDTHS), volume=is_volume_run(run))
    rows = sample_rows(preds, split, label, N_IMAGES, int(draw))
    if not rows:
        st.info(f"The {split} split has no image of class {run.classes[label]}.")
        return
    result = background(run_guided_backprop_across_layers, run, tuple(rows), mode, seed, gray, reports=True,
                        label=f"Guided backpropagation of one neuron per layer on {len(rows)} images",
                        name="layers_across_job")
    if result is None:
        return
    recon, channels = result
    n_layers, n_images = recon.shape[:2]
    slices = [cached(case_slice, run, r) for r in rows] if is_volume_run(run) else None
    # One row per image: the image, then its reconstruction by each layer's neuron.
    tiles = np.concatenate([_input_tiles(run, rows, slices)[:, None], recon.swapaxes(0, 1)], axis=1)
    first = "input image" if slices is None else "input (axial slice)"
    columns = [first] + ["<br>".join(textwrap.wrap(f"{choices[name]} · ch {c}", TITLE_WIDTH))
                         for name, c in zip(block_layers, channels, strict=True)]
    fig = image_grid_figure(tiles.reshape(-1, *tiles.shape[2:]), cols=n_layers + 1, column_titles=columns,
                            row_titles=[volume_stem(_file(run, r)) for r in rows], row_height=150)
    figure(fig, export_name(run, f"one-neuron-per-layer-{run.classes[label]}-draw{draw}"), key="layers_across")
    pick = "the highest mean activation over these images" if mode == "top" else f"drawn at random (seed {seed})"
    caption(
        f"Wan et al. fig. 10: rows are {n_images} {split} images of class {run.classes[label]} drawn at random (draw "
        f"{draw}); after each image, one column per block: its last conv layer, low to high level. Per layer one "
        f"channel ({pick}) is reconstructed on every image, at each image's most activated position. " + STRETCH
        + (" CT volumes: each on its axial slice with the most lesion (the middle one without a lesion), "
           "neurons taken in each layer's slice nearest it, drawn in gray (one input channel)." if slices else
           " Wan drew these in colour 'to clearly show the patterns'; the Grayscale toggle averages the channels.")
    )


def _activations_tab(run: engine.Run, choices: dict[str, str]) -> None:
    c1, c2 = st.columns(2)
    row, layer = _image_picker(run, c1), _layer_picker(choices, c2)
    z = _slice_picker(run, row, st)
    c3, c4, c5 = st.columns(PICKER_WIDTHS)
    show = url_widget(c4.radio, "Show", tuple(SHOW_LABELS), key="layers_show", param="show", default="overlay",
                      format_func=SHOW_LABELS.get, horizontal=True, help="Each map upsampled onto the image, or the maps as they are.")
    opacity = url_widget(c5.select_slider, "Opacity", OPACITIES, key="layers_opacity", param="opacity", default=0.5,
                         disabled=show != "overlay", help="Opacity of the maps over the image.")
    label = choices[layer]
    result = background(run_activation_maps, run, row, layer, z, label=f"Activations of {label}",
                        name="layers_activations_job")
    if result is None:
        return
    maps, channels = result
    upper = min(64, len(maps))
    n = url_widget(c3.slider, "Maps shown", range(1, upper + 1), key="layers_top_n", param="maps",
                   default=min(16, upper), min_value=1, max_value=upper,
                   help="The channels with the highest mean activation on this image, highest first.")
    titles = [f"ch {c}" for c in channels[:n]]
    h, w = maps.shape[1:]
    if show == "overlay":
        image = run_images(run)[row] if z is None else run_images(run)[row][z]
        overlays = cached(activation_overlays, image, maps[:n], opacity)
        fig = image_grid_figure(overlays, cols=OVERLAY_COLS, titles=titles, row_height=150, colorscale="Jet",
                                colorbar="activation<br>(scaled)")
        drawn = (f"each upsampled bilinearly from {h} × {w} to the image's {overlays.shape[1]} × "
                 f"{overlays.shape[2]} pixels and drawn over it in jet colours at opacity {opacity:g} (red = the "
                 "map's strongest response, blue = its weakest)")
    else:
        fig = image_grid_figure(maps[:n], cols=RAW_COLS, titles=titles, row_height=115)
        drawn = f"each drawn as its {h} × {w} grid of values (bright = strong response)"
    figure(fig, export_name(run, f"activations-{label}-{_file(run, row)}"), key="layers_activations")
    where = "the chosen image" if z is None else (
        f"the chosen volume's {_slice_text(run, row, z)}, the layer's 3-D output interpolated linearly in depth to "
        "that slice")
    caption(
        f"The output of {label} ({h} × {w} per channel, {len(maps)} channels) for {where}: the {n} channels "
        f"with the highest mean activation, each map min-max scaled on its own, {drawn}. The conv layer's output is "
        "taken before its ReLU."
    )


def _view_tabs() -> list[tuple[Any, str]]:
    """The hidden-layer tabs (the open one kept in the URL as ``view``) with their codes; only the open one runs."""
    return [(tab, code) for code, tab in url_tabs(VIEWS, VIEW_KEY, "view")[0].items()]


def _hidden_section(run: engine.Run) -> None:
    st.subheader("Hidden layers (Wan et al., fig. 9-10)")
    try:
        layer_list, block_layers = cached(run_layer_choices, run)
    except engine.LungLensError as exc:
        st.error(f"The model of this run cannot be loaded: {exc}")
        return
    choices = dict(layer_list)
    if not choices:
        st.info(f"{run.config.backbone} has no convolutional layer to visualise.")
        return
    draw: dict[str, Callable[[], None]] = {
        "neurons": lambda: _neurons_tab(run, choices),
        "across": lambda: _across_layers_tab(run, choices, block_layers),
        "activations": lambda: _activations_tab(run, choices),
    }
    for tab, view in _view_tabs():
        if tab.open:
            with tab:
                _guarded(run, draw[view])


def _guarded(run: engine.Run, view: Callable[[], None]) -> None:
    """Draw one view; a view that does not apply becomes an info box, another engine error an error box."""
    try:
        view()
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
surrogate_section(run, runs)
topology_section(run, runs)
