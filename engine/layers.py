"""Wan et al. sec. 3.4: first-layer filters, hidden neurons by guided backpropagation (Captum) and activation maps.

3-D CT runs (model input (1, 1, D, H, W)): first-layer filters are k x k x k kernels, shown by a central section
(``filter_sections``); activation maps and guided-backprop reconstructions are shown on one axial slice of the volume
(``case_slice``: by default the slice with the most lesion).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import pandas as pd
import torch
from captum.attr import NeuronGuidedBackprop
from torch import nn

from .data.arrays import mask_arrays
from .data.transforms import IMAGENET_STD, to_model_input
from .errors import ConfigError, DataError
from .explain.overlay import heatmap_overlay
from .explain.volume import busiest_slice, is_volume_run
from .models.backbones import conv_layers
from .models.names import REGISTRY
from .progress import CancelCheck, Progress, step
from .store import cached_arrays

if TYPE_CHECKING:
    from .runs import Run

ChannelPick = Literal["top", "random"]
FilterView = Literal["before", "after", "difference"]
FILTER_VIEWS: tuple[str, ...] = ("before", "after", "difference")
#: Sections of a 3-D first-layer kernel (k, k, k) -> the kernel axis each fixes at its centre ("all": the three side by
#: side, axial | coronal | sagittal).
SECTION_AXES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
FILTER_SECTIONS: tuple[str, ...] = (*SECTION_AXES, "all")
#: Value of the one-pixel gap between the sections of "all" (white, as the mosaic's grid lines).
SECTION_GAP = 1.0
#: Guided-backprop display: this percentile of an image's non-zero |gradient| is drawn black / white (SmoothGrad's
#: 99th-percentile cap, Smilkov et al. 2017); the few stronger pixels are clipped.
STRETCH_PERCENTILE = 99.0
#: Neurons reconstructed per backward pass: progress is reported, and a cancel honoured, between passes.
NEURON_CHUNK = 4


# ---- display scaling -------------------------------------------------------------------------------------------

def _minmax(a: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Rescale each slice over ``axis`` to [0, 1] independently; a constant slice becomes mid-grey (0.5)."""
    lo, hi = a.min(axis=axis, keepdims=True), a.max(axis=axis, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0.5).astype(np.float32)


def _stretch(maps: np.ndarray) -> np.ndarray:
    """One (H, W, 3) gradient image -> [0, 1] around mid-grey: 0 is 0.5, and +/- the ``STRETCH_PERCENTILE``-th
    percentile of its non-zero |values| are white / black (beyond it clipped); an all-zero image is mid-grey."""
    nonzero = np.abs(maps[maps != 0])
    scale = float(np.percentile(nonzero, STRETCH_PERCENTILE)) if nonzero.size else 0.0
    if scale == 0:
        return np.full(maps.shape, 0.5, np.float32)
    return np.clip(0.5 + 0.5 * maps / scale, 0.0, 1.0).astype(np.float32)


def gradient_images(attributions: np.ndarray, grayscale: bool = False) -> np.ndarray:
    """(..., 3, H, W) gradients -> (..., H, W, 3) images in [0, 1], each stretched on its own around mid-grey
    (``_stretch``); ``grayscale``: the mean of the three channels, stretched, in all three. One-channel gradients
    (a CT slice) are always drawn gray."""
    maps = np.moveaxis(np.asarray(attributions, np.float64), -3, -1)
    grayscale = grayscale or maps.shape[-1] == 1
    if grayscale:
        maps = maps.mean(axis=-1, keepdims=True)
    flat = maps.reshape(-1, *maps.shape[-3:])
    images = np.stack([_stretch(m) for m in flat]).reshape(maps.shape) if len(flat) else maps.astype(np.float32)
    return np.repeat(images, 3, axis=-1) if grayscale else images


# ---- layers ----------------------------------------------------------------------------------------------------

def _conv(model: nn.Module, layer_name: str) -> nn.Conv2d:
    layers = dict(conv_layers(model))
    if layer_name not in layers:
        raise ConfigError(f"{layer_name!r} is not a convolutional layer of this model; "
                          "pick one of layer_choices(model).")
    return layers[layer_name]


def _conv_label(arch: str, name: str, nth: int) -> str:
    """The human name of conv layer ``name``, the ``nth`` conv of its block, as the architecture's papers name it
    (``"conv5 (block 5)"``, ``"layer2 unit 1 · conv2 (block 3)"``; timm's DPN, EfficientNet and Inception by timm's
    module names, ``"conv3_1.c1x1_a (block 3)"``), with its block among LungLens's five."""
    parts = name.split(".")
    block = int(parts[1]) + 1
    where = f"(block {block})"
    family = REGISTRY[arch].family if arch in REGISTRY else ""
    if family == "alexnet":
        return f"conv{block} {where}"
    if family == "vgg":
        return f"conv{block}_{nth} {where}"
    if block == 1 and family in ("resnet", "densenet"):
        return f"stem {'conv1' if family == 'resnet' else 'conv0'} {where}"
    if family == "resnet" and len(parts) >= 4:
        conv = "shortcut conv" if parts[3] == "downsample" else parts[3]
        return f"layer{block - 1} unit {int(parts[2]) + 1} · {conv} {where}"
    if family == "densenet" and len(parts) >= 4:
        if parts[2] == "1":  # the transition after the dense block
            return f"transition {block - 1} {where}"
        layer = parts[3].removeprefix("denselayer")
        return f"dense block {block - 1} · layer {layer} · {parts[-1]} {where}"
    path = ".".join(p for p in parts[2:] if p != "conv")  # timm's own names, without the wrapped ".conv"
    if path[:1].isdigit():  # Inception-v4's modules are timm's features.0 ... features.21
        path = f"features.{path}"
    return f"{path or f'conv {nth}'} {where}"


def layer_choices(model: nn.Module) -> list[tuple[str, str]]:
    """Every conv layer as (qualified name, human label such as ``"conv5 (block 5)"``), input to output."""
    arch = str(getattr(model, "arch", ""))
    choices, count = [], {}
    for name, _ in conv_layers(model):
        block = int(name.split(".")[1])  # StagedNet names its conv layers "blocks.<i>...."
        count[block] = count.get(block, 0) + 1
        choices.append((name, _conv_label(arch, name, count[block])))
    return choices


def block_output_layers(model: nn.Module) -> list[str]:
    """The last conv layer of each block: one layer per stage (for AlexNet, its five conv layers)."""
    last = {int(name.split(".")[1]): name for name, _ in conv_layers(model)}
    return [last[block] for block in sorted(last)]


def _layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output of ``layer`` when the model runs on ``x``, captured by a forward hook."""
    captured = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _is_volume(x: torch.Tensor) -> bool:
    """Whether ``x`` is a batch of model input volumes (B, 1, D, H, W)."""
    return x.ndim == 5


def _check_one_image(image: torch.Tensor) -> None:
    if image.ndim not in (4, 5) or tuple(image.shape[:2]) != ((1, 1) if _is_volume(image) else (1, 3)):
        raise DataError("Expected one model input image (1, 3, H, W) or volume (1, 1, D, H, W), got "
                        f"{tuple(image.shape)}.")


def _check_slices(x: torch.Tensor, slices: Sequence[int] | None) -> list[int] | None:
    """The axial slice of each input volume of ``x`` (one per row, within its depth), None for 2-D input."""
    if not _is_volume(x):
        return None
    depth = x.shape[2]
    if slices is None or len(slices) != len(x) or not all(0 <= int(z) < depth for z in slices):
        raise DataError(f"Volumes need one axial slice each in 0-{depth - 1} ({len(x)} volumes), got {slices}.")
    return [int(z) for z in slices]


def feature_slice(z: int, depth: int, feature_depth: int) -> int:
    """The slice of a layer's ``feature_depth``-deep output whose centre is nearest input slice ``z`` of ``depth``."""
    return min(feature_depth - 1, int((z + 0.5) * feature_depth / depth))


def depth_slice(maps: np.ndarray, z: int, depth: int) -> np.ndarray:
    """(C, d, h, w) maps of a ``depth``-slice volume -> (C, h, w) at input slice ``z``: linear in depth, as slice ``z``
    of ``torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`` to ``depth`` slices."""
    d = maps.shape[1]
    src = max((z + 0.5) * d / depth - 0.5, 0.0)
    lo = min(int(src), d - 1)
    hi = min(lo + 1, d - 1)
    frac = np.float32(src - lo)
    return ((1 - frac) * maps[:, lo] + frac * maps[:, hi]).astype(np.float32)


# ---- first-layer filters ---------------------------------------------------------------------------------------

def first_layer_weights(model: nn.Module, gray_input: bool = True) -> np.ndarray:
    """Weights of the first conv layer: (n, k, k) gray filters, or (n, k, k, 3) with RGB last if not ``gray_input``;
    a 3-D model's (n, k, k, k) kernels (one input channel: the CT intensity).

    LungLens feeds every model one gray image g copied into the three channels, each ImageNet-normalised
    ((g - mean_c) / std_c), so an RGB filter w acts on g as the single kernel sum_c w_c / std_c (plus a constant):
    that is the gray filter returned. A first layer with one input channel (xrv's DenseNet, whose adapter rescales
    g linearly) is its own gray filter. Gray filters are exact up to one positive factor per model.
    """
    name, conv = conv_layers(model)[0]
    weight = conv.weight.detach().cpu().to(torch.float64)
    if conv.in_channels == 1:
        return weight[:, 0].numpy().astype(np.float32)
    if conv.in_channels != 3:
        raise ConfigError(f"The first conv layer {name} has {conv.in_channels} input channels; "
                          "filters are shown for 1 (gray) or 3 (RGB) input channels.")
    if gray_input:
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
        return (weight / std).sum(1).numpy().astype(np.float32)
    return weight.permute(0, 2, 3, 1).numpy().astype(np.float32)


def _filter_axes(filters: np.ndarray) -> tuple[int, ...]:
    """The axes of one filter: (k, k) for gray filters, (k, k, 3) for RGB ones."""
    return tuple(range(1, filters.ndim))


def filter_grid(model: nn.Module, gray_input: bool = True) -> np.ndarray:
    """First-layer filters (AlexNet: 64 of 11 x 11) as (n, k, k) gray images (``gray_input``, LungLens's models) or
    (n, k, k, 3) RGB ones (a 3-D model: (n, k, k, k) kernels), each filter min-max scaled to [0, 1] on its own."""
    weights = first_layer_weights(model, gray_input)
    return _minmax(weights, axis=_filter_axes(weights))


def filter_difference(before: nn.Module, after: nn.Module, gray_input: bool = True) -> np.ndarray:
    """``after - before`` first-layer filters (shaped as ``filter_grid``) in [0, 1], zero change at 0.5 (mid-grey).

    One scale for all filters (the largest absolute change), so filters that changed more look stronger; a frozen
    first layer is uniformly grey.
    """
    diff = first_layer_weights(after, gray_input) - first_layer_weights(before, gray_input)
    scale = float(np.abs(diff).max())
    return (0.5 + 0.5 * diff / scale if scale > 0 else np.full_like(diff, 0.5)).astype(np.float32)


def filter_sections(filters: np.ndarray, section: str = "axial") -> np.ndarray:
    """(n, k, k, k) 3-D kernels (as ``filter_grid`` gives them) -> (n, k, k) central sections: ``axial`` (the middle
    slice in depth), ``coronal`` (middle row), ``sagittal`` (middle column); ``all``: the three side by side,
    (n, k, 3k + 2) with a ``SECTION_GAP`` column between them. Values are kept (scaled over the whole kernel)."""
    filters = np.asarray(filters)
    if filters.ndim != 4 or len(set(filters.shape[1:])) != 1:
        raise DataError(f"Expected (n, k, k, k) 3-D kernels, got shape {filters.shape}.")
    if section not in FILTER_SECTIONS:
        raise ConfigError(f"Unknown filter section {section!r}: choose one of {', '.join(FILTER_SECTIONS)}.")
    if section != "all":
        return np.take(filters, filters.shape[1] // 2, axis=SECTION_AXES[section] + 1)
    axial, coronal, sagittal = (filter_sections(filters, name) for name in SECTION_AXES)
    gap = np.full((*filters.shape[:2], 1), SECTION_GAP, dtype=filters.dtype)
    return np.concatenate([axial, gap, coronal, gap, sagittal], axis=2)


# ---- guided backpropagation ------------------------------------------------------------------------------------

def _pick_channels(scores: torch.Tensor, n: int, mode: ChannelPick, rng: np.random.Generator) -> list[int]:
    """The ``n`` channels with the highest ``scores`` (highest first), or ``n`` distinct random ones."""
    if mode == "top":
        return torch.argsort(scores, descending=True, stable=True)[:n].tolist()
    if mode == "random":
        return sorted(rng.choice(len(scores), size=min(n, len(scores)), replace=False).tolist())
    raise ConfigError(f"Unknown channel choice {mode!r}: use 'top' or 'random'.")


def _neuron_guided_backprop(model: nn.Module, layer: nn.Conv2d, inputs: torch.Tensor, channels: Sequence[int],
                            slices: Sequence[int] | None = None) -> np.ndarray:
    """Captum NeuronGuidedBackprop of one neuron per input row: channel ``channels[b]`` of ``layer`` at the spatial
    position where that channel fires most on ``inputs[b]``. Returns (B, 3, H, W) float32 gradients.

    Volumes (B, 1, D, H, W): the neuron is the channel's strongest in the layer's slice nearest axial slice
    ``slices[b]`` (``feature_slice``), and the gradient's slice ``slices[b]`` is returned, (B, 1, H, W).

    A single neuron (not the whole channel) follows Wan et al. and Springenberg et al.: the reconstruction shows the
    part of the image that drives that neuron, i.e. the channel's strongest response. All rows go through one
    forward/backward pass: in eval mode the rows are independent, so the gradient of the sum of the selected
    neurons splits into each row's own neuron gradient.
    """
    if model.training:
        raise ConfigError("Guided backpropagation needs the model in eval mode (call model.eval()); batch-norm "
                          "statistics would otherwise mix the images.")
    zs = _check_slices(inputs, slices)
    rows = torch.arange(len(inputs))
    chans = torch.as_tensor(list(channels))
    response = _layer_output(model, layer, inputs)[rows, chans]  # (B, *spatial)
    if zs is not None:  # only the layer's slice nearest each row's axial slice competes
        keep = torch.zeros_like(response, dtype=torch.bool)
        for b, z in enumerate(zs):
            keep[b, feature_slice(z, inputs.shape[2], response.shape[1])] = True
        response = response.masked_fill(~keep, -torch.inf)
    where = torch.unravel_index(response.flatten(1).argmax(1), response.shape[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum's notice, every call
        attr = NeuronGuidedBackprop(model, layer).attribute(
            inputs.detach().clone().requires_grad_(True), neuron_selector=lambda o: o[(rows, chans, *where)]
        )
    attr = attr.detach().cpu()
    if zs is not None:
        attr = attr[rows, :, torch.as_tensor(zs)]
    return attr.numpy().astype(np.float32)


def _neuron_attributions(model: nn.Module, image: torch.Tensor, layer_name: str, n: int, mode: ChannelPick,
                         seed: int, progress: Progress | None = None, cancel: CancelCheck | None = None,
                         slice_index: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Raw (n, 3, H, W) guided-backprop gradients of ``n`` channels of one layer for one image, and the channels;
    ``NEURON_CHUNK`` neurons per backward pass, with ``progress`` / ``cancel`` between passes. A volume: (n, 1, H, W)
    on axial slice ``slice_index``, channels ranked by their mean on the layer's slice nearest it."""
    _check_one_image(image)
    slices = _check_slices(image, None if slice_index is None else [slice_index])
    layer = _conv(model, layer_name)
    image = image.to(_device(model))
    out = _layer_output(model, layer, image)[0]
    if slices is not None:
        out = out[:, feature_slice(slices[0], image.shape[2], out.shape[1])]
    channels = _pick_channels(out.mean(dim=tuple(range(1, out.ndim))), n, mode, np.random.default_rng(seed))
    parts = []
    for start in range(0, len(channels), NEURON_CHUNK):
        chunk = channels[start : start + NEURON_CHUNK]
        step(progress, cancel, start / len(channels), f"neurons {start + 1}-{start + len(chunk)} of {len(channels)}")
        batch = image.expand(len(chunk), *image.shape[1:])
        chunk_slices = None if slices is None else slices * len(chunk)
        parts.append(_neuron_guided_backprop(model, layer, batch, chunk, chunk_slices))
    return np.concatenate(parts), channels


def guided_backprop_neurons(
    model: nn.Module, image: torch.Tensor, layer_name: str, *, n: int = 8, mode: ChannelPick = "top", seed: int = 0,
    grayscale: bool = False, slice_index: int | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Wan fig. 9: guided-backprop reconstructions of ``n`` neurons of one conv layer for one image.

    Channels are the ``n`` with the highest mean activation (``mode="top"``, highest first) or ``n`` random ones
    (``"random"``, seeded, as in the paper); each channel's neuron is its most activated position. Returns
    (n, H, W, 3) images in [0, 1], zero gradient mid-grey, each stretched on its own (``_stretch``; ``grayscale``:
    mean over RGB) and the channel indices. A volume (1, 1, D, H, W): each neuron is taken in the layer's slice
    nearest axial slice ``slice_index`` and its reconstruction drawn on that slice (gray).
    """
    attr, channels = _neuron_attributions(model, image, layer_name, n, mode, seed, slice_index=slice_index)
    return gradient_images(attr, grayscale), channels


def _across_layer_attributions(model: nn.Module, images: torch.Tensor, layer_names: Sequence[str], mode: ChannelPick,
                               seed: int, progress: Progress | None = None, cancel: CancelCheck | None = None,
                               slices: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Raw (n_layers, B, 3, H, W) gradients of one channel per layer for every image, and the channel per layer;
    ``progress`` / ``cancel`` between layers. Volumes: (n_layers, B, 1, H, W) on each volume's axial slice
    ``slices[b]``."""
    slices = _check_slices(images, slices)
    images = images.to(_device(model))
    rng = np.random.default_rng(seed)
    attrs, channels = [], []
    for i, name in enumerate(layer_names):
        step(progress, cancel, i / len(layer_names), f"layer {i + 1} of {len(layer_names)} on {len(images)} images")
        layer = _conv(model, name)
        out = _layer_output(model, layer, images)
        channel = _pick_channels(out.mean(dim=(0, *range(2, out.ndim))), 1, mode, rng)[0]
        attrs.append(_neuron_guided_backprop(model, layer, images, [channel] * len(images), slices))
        channels.append(channel)
    return np.stack(attrs), channels


def guided_backprop_across_layers(model: nn.Module, images: torch.Tensor, *, layer_names: Sequence[str] | None = None,
                                  mode: ChannelPick = "top", seed: int = 0, grayscale: bool = False,
                                  slices: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Wan fig. 10: one neuron per layer reconstructed on each image -> (n_layers, B, H, W, 3) in [0, 1] (each
    stretched as in ``guided_backprop_neurons``), and the channel per layer.

    Per layer one channel is used for all images (the highest mean activation over the images, or a seeded random
    one), at each image's most activated position. ``layer_names`` defaults to the last conv layer of each block.
    Volumes (B, 1, D, H, W): on each volume's axial slice ``slices[b]`` (see ``guided_backprop_neurons``).
    """
    if not ((images.ndim == 4 and images.shape[1] == 3) or (images.ndim == 5 and images.shape[1] == 1)):
        raise DataError("Expected model input images (B, 3, H, W) or volumes (B, 1, D, H, W), got "
                        f"{tuple(images.shape)}.")
    attr, channels = _across_layer_attributions(model, images, layer_names or block_output_layers(model), mode, seed,
                                                slices=slices)
    return gradient_images(attr, grayscale), channels


# ---- activation maps -------------------------------------------------------------------------------------------

def activation_maps(model: nn.Module, image: torch.Tensor, layer_name: str,
                    slice_index: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Every channel's output of a conv layer for one image as (C, h, w) maps in [0, 1] (each min-max scaled),
    ordered by mean activation, highest first; and the channel index of each map.

    A volume (1, 1, D, H, W): the maps at axial slice ``slice_index`` of the input (``depth_slice``: the layer's
    output interpolated linearly in depth), ranked by their mean on that slice.
    """
    _check_one_image(image)
    slices = _check_slices(image, None if slice_index is None else [slice_index])
    out = _layer_output(model, _conv(model, layer_name), image.to(_device(model)))[0].cpu()
    if slices is not None:
        out = torch.from_numpy(depth_slice(out.numpy(), slices[0], image.shape[2]))
    order = torch.argsort(out.mean(dim=(1, 2)), descending=True, stable=True)
    return _minmax(out[order].numpy(), axis=(1, 2)), order.tolist()


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) maps -> (n, H, W) for ``size`` = (H, W) by bilinear interpolation (pixel centres aligned, as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)."""
    height, width = size
    return np.stack([cv2.resize(np.asarray(m, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
                     for m in maps])


def activation_overlays(image: np.ndarray, maps: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(n, h, w) activation maps in [0, 1], each upsampled bilinearly to the gray uint8 ``image``'s size and blended
    on it in jet colours with opacity ``alpha`` (as Support Regions' heatmaps) -> (n, H, W, 3) uint8 RGB."""
    up = upsample(maps, image.shape[:2])
    return np.stack([heatmap_overlay(image, m, alpha) for m in up])


# ---- images of the fig. 10 view ----------------------------------------------------------------------------------

def sample_rows(predictions: pd.DataFrame, split: str, label: int, n: int, seed: int) -> list[int]:
    """Up to ``n`` seeded random ``run.predictions`` rows of one split and true class, in row order."""
    rows = np.flatnonzero((predictions["split"] == split).to_numpy() & (predictions["y"] == label).to_numpy())
    picked = np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False)
    return sorted(int(r) for r in picked)


# ---- cached wrappers for the pages -----------------------------------------------------------------------------

def case_slice(run: Run, image_index: int) -> int | None:
    """The axial slice a 3-D run's views show of volume ``image_index`` (a row of run.predictions) by default: the
    one with the most lesion, the middle one without a lesion; None for a 2-D run."""
    if not is_volume_run(run):
        return None
    lesion = mask_arrays(run.dataset(), run.config.image_size)[0]
    if not 0 <= image_index < len(lesion):
        raise DataError(f"Image index {image_index} is out of range: the run has {len(lesion)} volumes.")
    return busiest_slice(lesion[image_index], 0)


def _slice_of(run: Run, image_index: int, slice_index: int | None) -> tuple[int | None, str]:
    """The axial slice to show of a 3-D run's volume (``slice_index``, or ``case_slice``) and its artifact-name tag
    (``"-z12"``); (None, "") for a 2-D run."""
    if not is_volume_run(run):
        return None, ""
    z = case_slice(run, image_index) if slice_index is None else int(slice_index)
    return z, f"-z{z}"


def _run_image(run: Run, image_index: int) -> torch.Tensor:
    """Model input (1, 3, S, S) of the run's image at row ``image_index`` of ``run.predictions`` ((1, 1, D, H, W)
    for a 3-D run's volume)."""
    images = run.images()
    if not 0 <= image_index < len(images):
        raise DataError(f"Image index {image_index} is out of range: the run has {len(images)} images.")
    return to_model_input(images[image_index : image_index + 1])


def run_layer_choices(run: Run) -> tuple[list[tuple[str, str]], list[str]]:
    """The run's model's ``layer_choices`` and ``block_output_layers`` (what the Layers page offers)."""
    model = run.load_model()
    return layer_choices(model), block_output_layers(model)


def run_guided_backprop(run: Run, image_index: int, layer_name: str, n: int = 8, mode: ChannelPick = "top",
                        seed: int = 0, grayscale: bool = False, *, slice_index: int | None = None,
                        progress: Progress | None = None,
                        cancel: CancelCheck | None = None) -> tuple[np.ndarray, list[int]]:
    """``guided_backprop_neurons`` of the run's trained model on image ``image_index`` (a row of run.predictions);
    a 3-D run's on axial slice ``slice_index`` (default ``case_slice``).

    The raw gradients are cached, so switching ``grayscale`` costs nothing. ``progress(fraction, text)`` hears of
    each backward pass; ``cancel()`` returning True stops between them (nothing partial is cached).
    """
    z, tag = _slice_of(run, image_index, slice_index)

    def compute() -> dict[str, np.ndarray]:
        step(progress, cancel, 0.0, "loading the model")
        attr, channels = _neuron_attributions(run.load_model(), _run_image(run, image_index), layer_name, n, mode, seed,
                                              progress, cancel, z)
        return {"attributions": attr, "channels": np.asarray(channels)}

    name = f"gbp-img{image_index}{tag}-{layer_name}-n{n}-{mode}-seed{seed}.npz"
    cached = cached_arrays(run.artifact(name), compute)
    return gradient_images(cached["attributions"], grayscale), cached["channels"].tolist()


def run_guided_backprop_across_layers(run: Run, image_indices: Sequence[int], mode: ChannelPick = "top", seed: int = 0,
                                      grayscale: bool = False, *, progress: Progress | None = None,
                                      cancel: CancelCheck | None = None) -> tuple[np.ndarray, list[int]]:
    """``guided_backprop_across_layers`` of the run's trained model on the given images (rows of run.predictions).

    A 3-D run's volumes are each shown on their ``case_slice``. ``progress(fraction, text)`` hears of each layer;
    ``cancel()`` returning True stops between layers (nothing partial is cached).
    """
    indices = [int(i) for i in image_indices]

    def compute() -> dict[str, np.ndarray]:
        step(progress, cancel, 0.0, "loading the model")
        model = run.load_model()
        images = torch.cat([_run_image(run, i) for i in indices])
        slices = [case_slice(run, i) for i in indices] if is_volume_run(run) else None
        attr, channels = _across_layer_attributions(model, images, block_output_layers(model), mode, seed, progress,
                                                    cancel, slices)
        return {"attributions": attr, "channels": np.asarray(channels)}

    name = f"gbp-layers-img{'_'.join(map(str, indices))}-{mode}-seed{seed}.npz"
    cached = cached_arrays(run.artifact(name), compute)
    return gradient_images(cached["attributions"], grayscale), cached["channels"].tolist()


def run_activation_maps(run: Run, image_index: int, layer_name: str,
                        slice_index: int | None = None) -> tuple[np.ndarray, list[int]]:
    """``activation_maps`` of the run's trained model on image ``image_index`` (a row of run.predictions); a 3-D
    run's at axial slice ``slice_index`` (default ``case_slice``)."""
    z, tag = _slice_of(run, image_index, slice_index)

    def compute() -> dict[str, np.ndarray]:
        maps, order = activation_maps(run.load_model(), _run_image(run, image_index), layer_name, z)
        return {"maps": maps, "channels": np.asarray(order)}

    cached = cached_arrays(run.artifact(f"activations-img{image_index}{tag}-{layer_name}.npz"), compute)
    return cached["maps"], cached["channels"].tolist()


def run_filter_grid(run: Run, which: FilterView) -> np.ndarray:
    """First-layer gray filters before fine-tuning, after it, or their difference (see ``filter_difference``); a 3-D
    run's (n, k, k, k) kernels (``filter_sections`` cuts them for display)."""
    if which not in FILTER_VIEWS:
        raise ConfigError(f"Unknown filter view {which!r}: choose one of {', '.join(FILTER_VIEWS)}.")

    def compute() -> dict[str, np.ndarray]:
        if which == "before":
            return {"filters": filter_grid(run.initial_model())}
        if which == "after":
            return {"filters": filter_grid(run.load_model())}
        return {"filters": filter_difference(run.initial_model(), run.load_model())}

    # "-gray": earlier LungLens versions cached RGB filters under "filters-{which}.npz".
    return cached_arrays(run.artifact(f"filters-{which}-gray.npz"), compute)["filters"]
