"""Diagnosing and explaining one uploaded image in memory (the "Diagnose a new image" panel)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..models.backbones import StagedNet
from .inference import predict_proba
from .methods import check_method, explain_one


def class_index(target: int | str, classes: tuple[str, ...] | list[str]) -> int:
    """Index of a class given by name or index, with a ConfigError naming the classes when it is unknown."""
    if isinstance(target, str):
        if target not in classes:
            raise ConfigError(f"Unknown class {target!r}: this model's classes are {', '.join(classes)}.")
        return list(classes).index(target)
    if not 0 <= int(target) < len(classes):
        raise ConfigError(f"Class index {target} is out of range: this model has {len(classes)} classes.")
    return int(target)


def explain_image(model: StagedNet, image_uint8: np.ndarray, classes: tuple[str, ...] | list[str],
                  method: str = "gradcam", target: int | str | None = None, **params: Any) -> dict[str, Any]:
    """Class probabilities and one method's map for a single (H, W) uint8 image already preprocessed for the model.

    Returns ``probabilities`` (class -> p), ``predicted`` and ``target`` class names, ``method``, ``heatmap`` (H, W)
    in [0, 1] and ``details``: the method's arrays (``explain_one``; LIME's superpixels). Nothing is written to disk.
    """
    check_method(method)
    image = np.asarray(image_uint8)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected one (H, W) uint8 image, got {image.shape} {image.dtype}")
    probs = predict_proba(model, image[None])[0]
    if len(probs) != len(classes):
        raise ConfigError(f"The model has {len(probs)} outputs but {len(classes)} class names were given.")
    predicted = int(probs.argmax())
    t = predicted if target is None else class_index(target, classes)
    result: dict[str, Any] = {"probabilities": {c: float(p) for c, p in zip(classes, probs)},
                              "predicted": classes[predicted], "target": classes[t], "method": method}
    result["details"] = explain_one(model, image, method, t, **params)
    result["heatmap"] = result["details"]["heatmap"]
    return result
