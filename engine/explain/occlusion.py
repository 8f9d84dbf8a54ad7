"""Occlusion maps (Zeiler & Fergus 2014): how much the target class probability drops when a window is hidden.

All occluded copies of several images go through the model in large batches without autograd; the result equals
Captum's ``Occlusion`` with the same window, stride and baseline (tests/test_explain_registry.py checks it).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.backbones import StagedNet
from .inference import Target, model_device, resolve_targets
from .scaling import normalise_maps

#: The occluding patch: mid gray (intensity 0.5), so a window neither darkens nor brightens the lungs on average.
OCCLUSION_GRAY = 0.5


def default_window(size: int) -> tuple[int, int]:
    """Window and stride for ``size`` px images: an eighth of the side, half-overlapping (about 15 x 15 positions)."""
    window = max(size // 8, 1)
    return window, max(window // 2, 1)


def occlusion_baseline(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The gray patch in model-input space, (1, 3, 1, 1)."""
    mean, std = torch.tensor(IMAGENET_MEAN, dtype=dtype), torch.tensor(IMAGENET_STD, dtype=dtype)
    return ((OCCLUSION_GRAY - mean) / std).view(1, 3, 1, 1)


def window_masks(height: int, width: int, window: int, stride: int) -> torch.Tensor:
    """(K, H, W) bool: one mask per window position, as Captum slides it (top-left first, whole windows only)."""
    rows = range(0, height - window + 1, stride)
    cols = range(0, width - window + 1, stride)
    masks = torch.zeros(len(rows) * len(cols), height, width, dtype=torch.bool)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        masks[k, r : r + window, c : c + window] = True
    return masks


def occlusion_attributions(model: StagedNet, x: torch.Tensor, target: Target = None, *, window: int | None = None,
                           stride: int | None = None, batch_size: int = 256) -> torch.Tensor:
    """Raw occlusion attributions (N, H, W): per pixel, the mean probability drop over the windows that cover it."""
    auto_window, auto_stride = default_window(x.shape[-1])
    window, stride = window or auto_window, stride or auto_stride
    masks = window_masks(x.shape[-2], x.shape[-1], window, stride)
    cover = masks.sum(0).clamp_min(1).float()
    device = model_device(model)
    targets = resolve_targets(model, x, target)
    baseline = occlusion_baseline(x.dtype).to(device)
    k = len(masks)
    masks_dev = masks.to(device)[:, None]
    per_batch = max(batch_size // k, 1)  # whole images per forward pass
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), per_batch):
            xb = x[i : i + per_batch].to(device)
            t = targets[i : i + len(xb)].to(device)
            p0 = torch.softmax(model(xb.contiguous(memory_format=torch.channels_last)), 1).gather(1, t[:, None])
            copies = torch.where(masks_dev[None], baseline[None], xb[:, None])  # (n, K, 3, H, W)
            flat = copies.reshape(-1, *xb.shape[1:]).contiguous(memory_format=torch.channels_last)
            probs = torch.cat([torch.softmax(model(flat[j : j + batch_size]), 1) for j in range(0, len(flat), batch_size)])
            p = probs.reshape(len(xb), k, -1).gather(2, t[:, None, None].expand(-1, k, 1))[..., 0]
            drops = p0 - p  # (n, K)
            out.append(torch.einsum("nk,khw->nhw", drops.float().cpu(), masks.float()) / cover)
    return torch.cat(out) if out else torch.zeros((0, *x.shape[-2:]))


def occlusion_map(model: StagedNet, x: torch.Tensor, target: Target = None, *, window: int | None = None,
                  stride: int | None = None, batch_size: int = 256) -> np.ndarray:
    """Occlusion maps (N, H, W) in [0, 1] of model inputs ``x``; only drops count (a rise is clipped to 0)."""
    attr = occlusion_attributions(model, x, target, window=window, stride=stride, batch_size=batch_size)
    return normalise_maps(attr.clamp_min(0))
