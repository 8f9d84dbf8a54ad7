"""Scaling explanation maps to [0, 1] for display and for the support threshold."""
from __future__ import annotations

import numpy as np
import torch


def normalise_maps(maps: np.ndarray | torch.Tensor, percentile: float = 100.0) -> np.ndarray:
    """Divide each non-negative (H, W) map of an (N, H, W) stack by a percentile of its positive values, clip to [0, 1].

    ``percentile=100`` divides by the maximum (Grad-CAM, occlusion, LIME). Lower values clip the few strongest
    pixels of spiky maps such as Guided Grad-CAM, as Captum's visualisation does with ``outlier_perc``; they are
    taken over the positive pixels so that a mostly-zero map is not divided by zero. An all-zero map stays zero.
    """
    a = torch.as_tensor(maps).detach().to(torch.float32).cpu().numpy()
    if percentile >= 100:
        scale = a.reshape(len(a), -1).max(axis=1, initial=0.0)
    else:
        scale = np.array([np.percentile(m[m > 0], percentile) if (m > 0).any() else 0.0 for m in a], np.float32)
    s = scale[:, None, None]
    return np.clip(np.divide(a, s, out=np.zeros_like(a), where=s > 0), 0.0, 1.0)
