"""Scores of a heatmap against annotations: Wan et al.'s consistency degree, its baselines and the pointing game.

Every function takes maps and masks of any dimension, (H, W) images or (D, H, W) volumes: pixels are voxels there."""
from __future__ import annotations

import numpy as np
from skimage.filters import gaussian

#: Wan et al. §3.5: "the pixel with the heatmap value greater than 0.7 was considered as the support pixel";
#: the share of the annotated lesion covered by support pixels is the consistency degree (mean 60.02% on 500 images).
SUPPORT_THRESHOLD = 0.7


def _pair(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The heatmap as float and the mask as bool, checked to have the same shape."""
    h, m = np.asarray(heatmap, dtype=np.float32), np.asarray(mask, dtype=bool)
    if h.shape != m.shape:
        raise ValueError(f"heatmap {h.shape} and mask {m.shape} differ in shape; resize the mask to the heatmap")
    return h, m


def support_region(heatmap: np.ndarray, threshold: float = SUPPORT_THRESHOLD) -> np.ndarray:
    """Wan's support pixels: heatmap > ``threshold``."""
    return np.asarray(heatmap) > threshold


def consistency_degree(heatmap: np.ndarray, lesion_mask: np.ndarray, threshold: float = SUPPORT_THRESHOLD) -> float:
    """|support ∩ lesion| / |lesion| (Wan §3.5); NaN for an empty lesion mask."""
    h, lesion = _pair(heatmap, lesion_mask)
    n = int(lesion.sum())
    return float((support_region(h, threshold) & lesion).sum() / n) if n else float("nan")


def outside_share(heatmap: np.ndarray, region_mask: np.ndarray, threshold: float = SUPPORT_THRESHOLD) -> float:
    """Share of the support pixels that lie outside ``region_mask`` (a lesion or the lungs); NaN without support."""
    h, region = _pair(heatmap, region_mask)
    support = support_region(h, threshold)
    n = int(support.sum())
    return float((support & ~region).sum() / n) if n else float("nan")


def support_area(heatmap: np.ndarray, threshold: float = SUPPORT_THRESHOLD) -> float:
    """Share of the image covered by support pixels (the consistency degree grows with it)."""
    return float(support_region(heatmap, threshold).mean())


def pointing_game(heatmap: np.ndarray, lesion_mask: np.ndarray) -> bool:
    """Whether the heatmap's maximum falls inside the lesion (with ties, any maximal pixel counts).

    An all-zero heatmap points nowhere and an empty lesion cannot be hit: both give False.
    """
    h, lesion = _pair(heatmap, lesion_mask)
    peak = h.max(initial=0.0)
    return bool(peak > 0 and lesion[h == peak].any())


def random_heatmap(shape: tuple[int, ...], seed: int, sigma: float | None = None) -> np.ndarray:
    """Baseline heatmap of any dimension (an image or a volume): seeded uniform noise blurred by an isotropic Gaussian
    (default sigma: 1/16 of the longest side), scaled to [0, 1]."""
    noise = np.random.default_rng(seed).random(shape)
    field = gaussian(noise, sigma=sigma if sigma is not None else max(shape) / 16, mode="reflect")
    lo, hi = field.min(), field.max()
    return ((field - lo) / (hi - lo)).astype(np.float32)
