"""Occlusion maps (Captum ``Occlusion``): how much the target class probability drops when a window is hidden."""
from __future__ import annotations

import numpy as np
import torch
from captum.attr import Occlusion

from ..models.backbones import StagedNet
from .inference import Target, batch_targets, model_device, target_tensor
from .scaling import normalise_maps


def default_window(size: int) -> tuple[int, int]:
    """Window and stride for ``size`` px images: an eighth of the side, half-overlapping (about 15 x 15 positions)."""
    window = max(size // 8, 1)
    return window, max(window // 2, 1)


def occlusion_map(model: StagedNet, x: torch.Tensor, target: Target = None, *, window: int | None = None,
                  stride: int | None = None, batch_size: int = 64) -> np.ndarray:
    """Occlusion maps (N, H, W) in [0, 1] of model inputs ``x``; only drops count (a rise is clipped to 0)."""
    auto_window, auto_stride = default_window(x.shape[-1])
    window = window or auto_window
    stride = stride or auto_stride
    channels = x.shape[1]
    occ = Occlusion(lambda z: torch.softmax(model(z), dim=1))
    device = model_device(model)
    targets = target_tensor(target, len(x))
    maps = []
    for i in range(len(x)):
        xi = x[i : i + 1].to(device)
        # Baseline 0 in normalised space is the ImageNet mean colour, i.e. a mid gray patch.
        attr = occ.attribute(xi, sliding_window_shapes=(channels, window, window), strides=(channels, stride, stride),
                             target=batch_targets(model, xi, targets, i), baselines=0.0,
                             perturbations_per_eval=batch_size)
        maps.append(attr[:, 0].detach().clamp_min(0).cpu())
    return normalise_maps(torch.cat(maps)) if maps else np.zeros((0, *x.shape[-2:]), np.float32)
