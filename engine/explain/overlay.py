"""Heatmap overlays on the image: a jet colour map (Wan fig. 11) or LIME's red/blue superpixels (Cheng fig. 7)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from ..errors import ConfigError
from ..models.backbones import StagedNet
from ..store import atomic_write_bytes
from .diagnose import explain_image


def heatmap_overlay(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3): the gray image blended with the [0, 1] heatmap in OpenCV's JET colours."""
    colour = cv2.applyColorMap(np.round(np.clip(heatmap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    gray = cv2.cvtColor(np.asarray(image_uint8, np.uint8), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(cv2.addWeighted(gray, 1.0 - alpha, colour, alpha, 0.0), cv2.COLOR_BGR2RGB)


#: The ends of the diverging colour map of LIME's weights (ColorBrewer RdBu): for and against the explained class.
LIME_FOR, LIME_AGAINST = np.float32([0.70, 0.09, 0.17]), np.float32([0.13, 0.40, 0.67])
#: How much the superpixel borders lighten the image: thin and faint, so they do not hide it.
BORDER_SHARE = 0.3


def lime_overlay(image_uint8: np.ndarray, lime: dict[str, Any], alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3): each superpixel tinted by its weight on a diverging red (for) / blue (against) scale,
    stronger with the weight's size, and faint one-pixel borders between superpixels."""
    rgb = cv2.cvtColor(np.asarray(image_uint8, np.uint8), cv2.COLOR_GRAY2RGB).astype(np.float32) / 255.0
    signed = lime["map"]
    peak = float(np.abs(signed).max())
    strength = (alpha * np.abs(signed) / peak if peak > 0 else np.zeros_like(signed))[..., None]
    tint = np.where((signed > 0)[..., None], LIME_FOR, LIME_AGAINST)
    blended = (1.0 - strength) * rgb + strength * tint
    border = find_boundaries(lime["segments"], mode="inner")[..., None]
    blended = np.where(border, (1.0 - BORDER_SHARE) * blended + BORDER_SHARE, blended)
    return np.round(np.clip(blended, 0, 1) * 255).astype(np.uint8)


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
