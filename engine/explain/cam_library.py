"""Class activation maps from pytorch-grad-cam (HiResCAM, Grad-CAM++, XGradCAM, LayerCAM, ScoreCAM, EigenCAM,
AblationCAM) on a StagedNet's rectified feature maps, batched, with the library's own scaling."""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..models.backbones import StagedNet
from .inference import Target, model_device, target_tensor
from .layers import cam_layer

CamAttribute = Callable[..., np.ndarray]


def library_cam(cam_class: type, channel_batch: int | None = None) -> CamAttribute:
    """An ``attribute(model, x, target, layer, batch_size)`` function running pytorch-grad-cam's ``cam_class``."""

    def attribute(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None, *,
                  batch_size: int = 32) -> np.ndarray:
        _, _, module = cam_layer(model, layer)
        targets = target_tensor(target, len(x))
        device = model_device(model)
        maps = []
        kwargs: dict[str, Any] = {"model": model, "target_layers": [module]}
        # ScoreCAM and AblationCAM print a tqdm bar per image; the caller shows its own progress.
        with cam_class(**kwargs) as cam, contextlib.redirect_stderr(io.StringIO()):
            if channel_batch is not None:
                cam.batch_size = channel_batch
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(device)
                tb = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets[i : i + len(xb)]]
                maps.append(np.asarray(cam(input_tensor=xb, targets=tb), dtype=np.float32))
        model.zero_grad(set_to_none=True)  # the library leaves parameter gradients behind
        return np.concatenate(maps) if maps else np.zeros((0, *x.shape[-2:]), np.float32)

    return attribute
