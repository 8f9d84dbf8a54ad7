"""Maps of 3-D CT volumes: Grad-CAM in 3-D (Captum's LayerGradCam) and Ouyang et al.'s online attention maps.

Grad-CAM takes model inputs ``x`` (N, 1, D, H, W) and returns float32 (N, D, H, W) maps in [0, 1]; the attention
maps take images (N, 3, H, W) as well as volumes, since the attention loss trains 2-D runs too. Grad-CAM weights each
channel of a rectified feature map by its gradient averaged over depth, height and width (Selvaraju et al.'s eq. 1 with a third spatial axis; Captum averages over every spatial
axis), sums, rectifies and upsamples trilinearly. pytorch-grad-cam 1.5.7 handles 5-D activations too (it upsamples
with a cubic spline instead); tests/test_explain_volume.py checks that the two agree.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from ..attention import ALPHA, BETA, attention_map, trimmed
from ..models.backbones import StagedNet, block_of
from .gradcam import gradcam
from .inference import Target, model_device, target_tensor
from .layers import cam_layer

#: Upsampling of a map by the number of its spatial axes.
_MODES = {2: "bilinear", 3: "trilinear"}


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map of an (N, ...) stack shifted to 0 and divided by its range (+1e-7, as pytorch-grad-cam)."""
    flat = maps.reshape(len(maps), -1)
    shape = (len(maps),) + (1,) * (maps.ndim - 1)
    lo, hi = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
    return (maps - lo) / (1e-7 + (hi - lo))


def upsampled(cams: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(N, *s) non-negative maps -> (N, *size): min-max scaled, bi/trilinear to ``size``, min-max scaled again.

    In 2-D the same as ``gradcam.scale_cams``; an all-zero or constant map becomes all zero.
    """
    up = F.interpolate(min_max(cams.float())[:, None], size=tuple(size), mode=_MODES[len(size)],
                       align_corners=False)[:, 0]
    return min_max(up)


def scale_volumes(cams: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """(N, d, h, w) non-negative CAMs -> (N, D, H, W) float32 in [0, 1] (``upsampled``, as numpy)."""
    return upsampled(cams, size).detach().cpu().numpy().astype(np.float32)


def _batches(model: StagedNet, x: torch.Tensor, target: Target, start: int, batch_size: int):
    """(output of the blocks before ``start`` without autograd, target classes) for each batch of ``x``."""
    targets = target_tensor(target, len(x))
    device = model_device(model)
    for i in range(0, len(x), batch_size):
        with torch.no_grad():
            h = model.forward_blocks(x[i : i + batch_size].to(device), 0, start)
            t = model.forward_from(h, start).argmax(dim=1) if targets is None else targets[i : i + len(h)].to(device)
        yield h.requires_grad_(), t


def gradcam_volume(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None,
                   batch_size: int = 4) -> np.ndarray:
    """3-D Grad-CAM maps (N, D, H, W) in [0, 1] of volumes ``x`` (N, 1, D, H, W) for ``target`` (None: predicted).

    ``layer``: a CAM layer of the model (default: the last residual unit of block 5, as in 2-D). The blocks before
    the layer run once without autograd; Captum's LayerGradCam differentiates the rest.
    """
    name, _, module = cam_layer(model, layer)
    start = block_of(name)
    cam = LayerGradCam(partial(model.forward_from, start=start), module)
    maps = []
    for h, t in _batches(model, x, target, start, batch_size):
        with torch.enable_grad():
            cams = cam.attribute(h, target=t, relu_attributions=True)[:, 0]
        maps.append(scale_volumes(cams.detach(), tuple(x.shape[-3:])))
    model.zero_grad(set_to_none=True)
    return np.concatenate(maps) if maps else np.zeros((0, *x.shape[-3:]), np.float32)


def attention_maps(model: StagedNet, x: torch.Tensor, target: Target = None, alpha: float = ALPHA,
                   beta: float = BETA, raw: bool = False, batch_size: int = 8) -> np.ndarray:
    """Ouyang et al.'s online attention T(A) (eqs. 1-2) of inputs ``x`` (images or volumes), (N, *S) in [0, 1].

    A = ReLU(sum_k w_k f_k) with w the classifier's row of the target class (None: the predicted class); ``raw``
    returns A itself, upsampled and min-max normalised (before the sigmoid), else T(A) = sigmoid(alpha (A - beta)),
    computed by ``engine.attention`` as in training. A head of several layers (AlexNet, VGG) has no such row: there
    w is the gradient of the class score with respect to the pooled features (the head linearised), which makes A
    the last block's Grad-CAM map; for a linear head on average pooling the two coincide (Grad-CAM's weights are
    w / the number of positions).
    """
    size = tuple(x.shape[2:])
    if not isinstance(model.classifier, torch.nn.Linear):
        norm = torch.from_numpy(gradcam(model, x, target))
        return (norm if raw else torch.sigmoid(alpha * (norm - beta))).numpy().astype(np.float32)
    maps = []
    for h, t in _batches(model, x, target, len(model.blocks), batch_size):
        with torch.no_grad():
            amap = attention_map(h, model.classifier.weight, t)
            maps.append((upsampled(amap, size) if raw else trimmed(amap, size, alpha, beta)).float().cpu().numpy())
    return np.concatenate(maps) if maps else np.zeros((0, *size), np.float32)
