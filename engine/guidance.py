"""What mask-guided training reads from a dataset: lesion masks at the input size and infection / lung ratios."""
from __future__ import annotations

import numpy as np

from .config import RunConfig
from .data.arrays import mask_arrays
from .data.dataset import Dataset
from .sampling import infection_ratio
from .training import Guidance


def infection_ratios(ds: Dataset, size: int) -> np.ndarray:
    """Infection / lung volume (or area) per image at the model's input size; NaN where a mask is missing."""
    lesion, lung, has_lesion, has_lung = mask_arrays(ds, size)
    return np.array([infection_ratio(lesion[i], lung[i]) if has_lesion[i] and has_lung[i] else np.nan
                     for i in range(len(lesion))], dtype=np.float64)


def guidance_for(cfg: RunConfig, ds: Dataset) -> Guidance | None:
    """The masks and ratios that ``cfg``'s attention loss or size-balanced sampling needs (None when it needs none)."""
    if not (cfg.attention or cfg.sampling == "size-balanced") or not ds.has_masks:
        return None
    lesion, _, has_lesion, _ = mask_arrays(ds, cfg.image_size)
    return Guidance(lesion=lesion, has_lesion=has_lesion, ratios=infection_ratios(ds, cfg.image_size))
