"""One entry point for every explanation method, by name, on uint8 images."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..data.transforms import to_model_input
from ..errors import ConfigError
from ..models.backbones import StagedNet
from .gradcam import gradcam, guided_gradcam
from .inference import Target, target_tensor
from .lime_maps import lime_map
from .occlusion import occlusion_map

#: Method names, as the CLI and the pages spell them.
METHODS: tuple[str, ...] = ("gradcam", "guided-gradcam", "occlusion", "lime")

_TENSOR_METHODS = {"gradcam": gradcam, "guided-gradcam": guided_gradcam, "occlusion": occlusion_map}


def check_method(method: str) -> None:
    """Raise ConfigError unless ``method`` is a known explanation method."""
    if method not in METHODS:
        raise ConfigError(f"Unknown explanation method {method!r}: choose one of {', '.join(METHODS)}.")


def heatmaps(model: StagedNet, images_uint8: np.ndarray, method: str = "gradcam", target: Target = None,
             **params: Any) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of (N, H, W) uint8 images; ``params`` go to the method's function.

    For LIME the map is the positive part of its signed superpixel weights.
    """
    check_method(method)
    if len(images_uint8) == 0:
        return np.zeros((0, *np.shape(images_uint8)[1:]), np.float32)
    if method == "lime":
        targets = target_tensor(target, len(images_uint8))
        return np.stack([lime_map(model, img, None if targets is None else int(targets[i]), **params)["heatmap"]
                         for i, img in enumerate(images_uint8)])
    return _TENSOR_METHODS[method](model, to_model_input(images_uint8), target, **params)
