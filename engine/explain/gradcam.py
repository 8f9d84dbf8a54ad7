"""Grad-CAM (Wan et al. eqs. 7-9) and Guided Grad-CAM on any convolutional layer of a StagedNet, via Captum."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from torch import nn

from ..errors import ConfigError
from ..models.backbones import StagedNet, conv_layers, last_conv_layer
from .inference import Target, batch_targets, model_device, target_tensor
from .scaling import normalise_maps

#: Guided Grad-CAM maps are spiky: scale them by this percentile of their positive values, not by the maximum.
GUIDED_DISPLAY_PERCENTILE = 99.0


def conv_layer(model: StagedNet, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The Conv2d called ``layer`` (a qualified name from ``conv_layers``), or the last one when None."""
    if layer is None:
        return last_conv_layer(model)
    layers = dict(conv_layers(model))
    if layer not in layers:
        raise ConfigError(f"{layer!r} is not a convolutional layer of this {model.arch}; "
                          f"choose one of {', '.join(layers)}.")
    return layer, layers[layer]


def _block_of(name: str) -> int:
    """Index of the block holding the layer called ``name`` (0 when it is outside ``model.blocks``)."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else 0


def gradcam(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None,
            batch_size: int = 64) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of model inputs ``x`` (N, 3, H, W) for ``target`` (None: predicted class)."""
    name, conv = conv_layer(model, layer)
    # Grad-CAM needs gradients only from the chosen layer on, so the blocks before it run once without autograd
    # and Captum differentiates the rest of the network, started from their output. Channels-last inputs make
    # oneDNN's CPU convolutions about 30% faster; the values are the same up to float rounding.
    start = _block_of(name)
    suffix = partial(model.forward_from, start=start)

    def predicted_logit(h: torch.Tensor) -> torch.Tensor:
        # The largest logit is y^c of the predicted class c: explaining it needs no separate forward pass.
        return suffix(h).amax(dim=1)

    targets = target_tensor(target, len(x))
    cam = LayerGradCam(predicted_logit if targets is None else suffix, conv)
    device = model_device(model)
    maps = []
    for i in range(0, len(x), batch_size):
        with torch.no_grad():
            xb = x[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            h = model.forward_blocks(xb, 0, start)
        tb = None if targets is None else targets[i : i + len(h)].to(device)
        attr = cam.attribute(h, target=tb, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        maps.append(up[:, 0].detach().cpu())
    return normalise_maps(torch.cat(maps)) if maps else np.zeros((0, *x.shape[-2:]), np.float32)


def guided_gradcam(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None,
                   batch_size: int = 32) -> np.ndarray:
    """Guided Grad-CAM maps (N, H, W) in [0, 1]: largest absolute value over the colour channels, display-scaled."""
    _, conv = conv_layer(model, layer)
    ggc = GuidedGradCam(model, conv)
    device = model_device(model)
    targets = target_tensor(target, len(x))
    maps = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device).detach().requires_grad_()
        attr = ggc.attribute(xb, target=batch_targets(model, xb, targets, i), interpolate_mode="bilinear")
        maps.append(attr.detach().abs().amax(dim=1).cpu())
    if not maps:
        return np.zeros((0, *x.shape[-2:]), np.float32)
    return normalise_maps(torch.cat(maps), percentile=GUIDED_DISPLAY_PERCENTILE)
