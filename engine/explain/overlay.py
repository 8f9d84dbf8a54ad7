"""Heatmap overlays on the image: a jet colour map (Wan fig. 11) or LIME's red/blue superpixels (Cheng fig. 7)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.segmentation import mark_boundaries

from ..errors import ConfigError
from ..models.backbones import StagedNet
from ..store import atomic_write_bytes
from .diagnose import explain_image


def heatmap_overlay(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3): the gray image blended with the [0, 1] heatmap in OpenCV's JET colours."""
    colour = cv2.applyColorMap(np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    gray = cv2.cvtColor(np.asarray(image_uint8, np.uint8), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(cv2.addWeighted(gray, 1.0 - alpha, colour, alpha, 0.0), cv2.COLOR_BGR2RGB)


def lime_overlay(image_uint8: np.ndarray, lime: dict[str, Any], alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3): superpixels tinted red (support) or blue (against) by weight, with their outlines."""
    rgb = cv2.cvtColor(np.asarray(image_uint8, np.uint8), cv2.COLOR_GRAY2RGB).astype(np.float32) / 255.0
    signed = lime["map"]
    peak = float(np.abs(signed).max())
    strength = (alpha * np.abs(signed) / peak if peak > 0 else np.zeros_like(signed))[..., None]
    tint = np.where((signed > 0)[..., None], np.float32([1, 0, 0]), np.float32([0, 0, 1]))
    blended = (1.0 - strength) * rgb + strength * tint
    outlined = mark_boundaries(blended, lime["segments"], color=(1, 1, 0))
    return np.round(np.clip(outlined, 0, 1) * 255).astype(np.uint8)


def write_overlay(model: StagedNet, image_uint8: np.ndarray, method: str, out_path: str | Path, *,
                  classes: tuple[str, ...] | list[str], target: int | str | None = None, alpha: float = 0.5,
                  **params: Any) -> dict[str, Any]:
    """Explain one preprocessed uint8 image and write its overlay as an image file; returns ``explain_image``'s dict."""
    result = explain_image(model, image_uint8, classes, method, target, **params)
    details = result["details"]
    rgb = (lime_overlay(image_uint8, details, alpha) if "segments" in details
           else heatmap_overlay(image_uint8, result["heatmap"], alpha))
    out_path = Path(out_path)
    if not cv2.haveImageWriter(str(out_path)):
        raise ConfigError(f"OpenCV cannot write an image called {out_path.name}; give the output a .png suffix.")
    _, encoded = cv2.imencode(out_path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    atomic_write_bytes(out_path, encoded.tobytes())
    return result
