"""Grad-CAM (Wan et al. eqs. 7-9) on any rectified feature map of a StagedNet, started from the frozen prefix.

The result equals pytorch-grad-cam's ``GradCAM`` on the same layer (tests/test_explain_registry.py checks it): the
map is ReLU(sum_k alpha_k A^k) at the layer's resolution, min-max scaled per image, then resized bilinearly to
the input. It is faster because the blocks before the layer run once, without autograd, for a whole batch.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ..models.backbones import StagedNet, block_of
from .inference import Target, model_device, target_tensor
from .layers import cam_layer


def scale_cams(cams: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) non-negative CAMs -> (N, H, W) float32: min-max scaled, bilinear to ``size``, min-max scaled again.

    The same as pytorch-grad-cam's output (``scale_cam_image`` per layer, then once more over the upsampled map, whose
    peak falls between pixel centres); an all-zero or constant map becomes all zero.
    """
    up = F.interpolate(_min_max(cams.float())[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _min_max(up).detach().cpu().numpy().astype(np.float32)


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each (h, w) map of an (N, h, w) stack shifted to 0 and divided by its range (+1e-7, as pytorch-grad-cam)."""
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return (maps - lo) / (1e-7 + (hi - lo))


def gradcam(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None,
            batch_size: int = 64) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of model inputs ``x`` (N, 3, H, W) for ``target`` (None: predicted class)."""
    name, _, module = cam_layer(model, layer)
    start = block_of(name)
    suffix = partial(model.forward_from, start=start)
    targets = target_tensor(target, len(x))
    device = model_device(model)
    saved: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda _m, _i, out: saved.__setitem__("A", out))
    maps = []
    try:
        for i in range(0, len(x), batch_size):
            with torch.no_grad():
                xb = x[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
                h = model.forward_blocks(xb, 0, start)
            with torch.enable_grad():
                logits = suffix(h.requires_grad_())
                t = logits.argmax(dim=1) if targets is None else targets[i : i + len(h)].to(device)
                activations = saved["A"]
                (grads,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), activations)
            alpha = grads.mean(dim=(2, 3), keepdim=True)  # eq. 7
            cams = torch.relu((alpha * activations.detach()).sum(dim=1))  # eqs. 8-9
            maps.append(scale_cams(cams, tuple(x.shape[-2:])))
    finally:
        hook.remove()
    return np.concatenate(maps) if maps else np.zeros((0, *x.shape[-2:]), np.float32)
