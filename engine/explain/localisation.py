"""Localisation scores of one heatmap against a lesion mask, each with a baseline scored the same way, and their CIs.

Maps are float (H, W) arrays in [0, 1] (non-negative relevance for the target class); masks are bool (H, W). Every
score works unchanged on (D, H, W) volumes (pixels are then voxels, areas volumes), as Ouyang et al.'s 3-D CT needs.
Every per-image score is NaN where it is undefined (an empty lesion mask, or a missing lung mask for the
lung baselines), so that means over a split skip those images instead of counting them as misses.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.filters import threshold_otsu

from .consistency import SUPPORT_THRESHOLD, _pair, consistency_degree, random_heatmap, support_area

#: Thresholds of the consistency curve (Wan's single threshold is 0.7).
THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.1), 1))

NAN = float("nan")


def consistency_curve(heatmap: np.ndarray, lesion: np.ndarray,
                      thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Wan's consistency degree |(heatmap > t) ∩ lesion| / |lesion| at each threshold t; NaN for an empty lesion."""
    h, m = _pair(heatmap, lesion)
    t = np.asarray(thresholds, dtype=np.float64)
    inside = h[m]
    if inside.size == 0:
        return np.full(t.shape, np.nan)
    return (inside[None, :] > t[:, None]).mean(axis=1)


def otsu_threshold(heatmap: np.ndarray) -> float:
    """Otsu's threshold of the map's values (skimage), as CheXlocalize binarises maps; NaN for a constant map."""
    h = np.asarray(heatmap, dtype=np.float32)
    if h.size == 0 or h.min() == h.max():
        return NAN
    return float(threshold_otsu(h))


def iou_dice(heatmap: np.ndarray, lesion: np.ndarray, threshold: float) -> tuple[float, float]:
    """IoU and Dice of the support region (heatmap > threshold) with the lesion; NaN for an empty lesion.

    A NaN threshold (Otsu's of a constant map) selects no pixel, so such a map scores 0, not NaN.
    """
    h, m = _pair(heatmap, lesion)
    n_lesion = int(m.sum())
    if n_lesion == 0:
        return NAN, NAN
    pred = h > threshold if np.isfinite(threshold) else np.zeros_like(m)
    inter = int((pred & m).sum())
    n_pred = int(pred.sum())
    return inter / (n_pred + n_lesion - inter), 2 * inter / (n_pred + n_lesion)


def relevance_mass(heatmap: np.ndarray, lesion: np.ndarray) -> float:
    """Relevance mass accuracy (Arras et al.): relevance inside the lesion / total; NaN for a zero map or lesion."""
    h, m = _pair(heatmap, lesion)
    total = float(h.sum(dtype=np.float64))
    if total == 0 or not m.any():
        return NAN
    return float(h[m].sum(dtype=np.float64)) / total


def relevance_rank(heatmap: np.ndarray, lesion: np.ndarray) -> float:
    """Relevance rank accuracy (Arras et al.): share of the top-|lesion| pixels that lie in the lesion.

    Pixels tied with the |lesion|-th largest value share the remaining places in proportion (the expected score
    under a random tie order), so the score does not depend on a sort order; without ties it equals Quantus's
    RelevanceRankAccuracy. NaN for an empty lesion or an all-zero map (which ranks nothing).
    """
    h, m = _pair(heatmap, lesion)
    k = int(m.sum())
    if k == 0 or not (h != 0).any():
        return NAN
    flat = h.ravel()
    kth = np.partition(flat, flat.size - k)[flat.size - k]  # the k-th largest value
    above, tied = h > kth, h == kth
    hits = float((above & m).sum())
    places = k - int(above.sum())  # places of the top k left to the tied pixels
    hits += places * float((tied & m).sum()) / float(tied.sum())
    return hits / k


def lung_matched_consistency(n_support: int, lesion: np.ndarray, lung: np.ndarray) -> float:
    """Expected consistency of n_support pixels uniform in the lungs: min(n, |lung|)/|lung| · |L ∩ lung|/|L|."""
    les, lu = np.asarray(lesion, dtype=bool), np.asarray(lung, dtype=bool)
    n_lesion, n_lung = int(les.sum()), int(lu.sum())
    if n_lesion == 0 or n_lung == 0:
        return NAN
    return min(int(n_support), n_lung) / n_lung * int((les & lu).sum()) / n_lesion


def lung_matched_pointing(lesion: np.ndarray, lung: np.ndarray) -> float:
    """Pointing-game hit probability of a peak placed uniformly in the lungs: |lesion ∩ lung| / |lung|."""
    les, lu = np.asarray(lesion, dtype=bool), np.asarray(lung, dtype=bool)
    n_lung = int(lu.sum())
    if n_lung == 0 or not les.any():
        return NAN
    return int((les & lu).sum()) / n_lung


def lung_matched_relevance_mass(lesion: np.ndarray, lung: np.ndarray) -> float:
    """Relevance mass accuracy of a map uniform over the lungs: |lesion ∩ lung| / |lung|."""
    return lung_matched_pointing(lesion, lung)


def smooth_random_map(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth random map in [0, 1] of an image's or a volume's shape: seeded uniform noise blurred by a Gaussian
    (consistency.random_heatmap)."""
    return random_heatmap(tuple(shape), seed)


def pointing_hit_rate(heatmap: np.ndarray, lesion: np.ndarray) -> float:
    """The pointing game with ties broken at random, as an expectation: the share of the map's maximal pixels that
    lie in the lesion (1 or 0 for a unique peak); 0 for an all-zero map, NaN for an empty lesion.

    Counting a hit when *any* tied maximum is in the lesion would reward maps scaled by a percentile (gradient
    methods), whose top 1% of pixels all equal 1: a few hundred tied pixels almost always touch the lesion.
    """
    h, les = _pair(heatmap, lesion)
    if not les.any():
        return NAN
    peak = h.max(initial=0.0)
    if peak <= 0:
        return 0.0
    top = h == peak
    return float((top & les).sum() / top.sum())


def localisation_scores(heatmap: np.ndarray, lesion: np.ndarray, lung: np.ndarray | None,
                        threshold: float = SUPPORT_THRESHOLD, seed: int = 0) -> dict[str, float]:
    """Every localisation score of one map against its lesion (and lung) mask, with baselines scored the same way.

    ``consistency_curve`` is a list over THRESHOLDS; the lung baselines are NaN without a lung mask; the random
    baselines score ``smooth_random_map(shape, seed)``.
    """
    h, les = _pair(heatmap, lesion)
    rand = smooth_random_map(h.shape, seed)
    n_support = int((h > threshold).sum())
    iou, dice = iou_dice(h, les, threshold)
    iou_o, dice_o = iou_dice(h, les, otsu_threshold(h))
    lu = _pair(h, lung)[1] if lung is not None else None
    has_lung = lu is not None and bool(lu.any())
    return {
        "consistency": consistency_degree(h, les, threshold),
        "consistency_curve": [float(v) for v in consistency_curve(h, les)],
        "support_area": support_area(h, threshold),
        "iou": iou,
        "dice": dice,
        "iou_otsu": iou_o,
        "dice_otsu": dice_o,
        "pointing_game": pointing_hit_rate(h, les),
        "relevance_mass": relevance_mass(h, les),
        "relevance_rank": relevance_rank(h, les),
        "lung_area_matched_baseline": lung_matched_consistency(n_support, les, lu) if has_lung else NAN,
        "random_baseline": consistency_degree(rand, les, threshold),
        "random_iou_otsu": iou_dice(rand, les, otsu_threshold(rand))[0],
        "random_pointing_game": pointing_hit_rate(rand, les),
        "random_relevance_mass": relevance_mass(rand, les),
        "random_relevance_rank": relevance_rank(rand, les),
        "lung_pointing_baseline": lung_matched_pointing(les, lu) if has_lung else NAN,
        "lung_relevance_mass_baseline": lung_matched_relevance_mass(les, lu) if has_lung else NAN,
    }


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The finite entries of ``values`` as float64."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _boot_means(v: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the rows of ``v`` (n,) or (n, k)."""
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    return v[idx].mean(axis=1)


def mean_ci(values: Sequence[float] | np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap (1 - alpha) interval of the non-NaN values; all NaN when there are none."""
    v = _finite(values)
    if v.size == 0:
        return NAN, NAN, NAN
    means = _boot_means(v, n_boot, seed)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(v.mean()), float(lo), float(hi)


def beats_chance(method_values: Sequence[float] | np.ndarray,
                 baseline_values_list: Sequence[Sequence[float] | np.ndarray], seed: int = 0) -> bool:
    """Whether the method's mean beats every baseline's, with non-overlapping 95% bootstrap intervals.

    Each baseline is compared on the images where both it and the method are defined, resampling those images
    jointly (paired bootstrap, 1000 resamples). A baseline with no defined value (e.g. the lung baselines of a
    data set without lung masks) cannot be judged and is skipped; with no baseline left the answer is False.
    """
    m = np.asarray(method_values, dtype=np.float64).ravel()
    judged = 0
    for base in baseline_values_list:
        b = np.asarray(base, dtype=np.float64).ravel()
        if b.shape != m.shape:
            raise ValueError(f"baseline has {b.size} values for {m.size} method values; give one per image")
        ok = np.isfinite(m) & np.isfinite(b)
        if not np.isfinite(b).any():
            continue
        if not ok.any():
            return False
        means = _boot_means(np.stack([m[ok], b[ok]], axis=1), 1000, seed)
        lo_m, hi_b = np.percentile(means[:, 0], 2.5), np.percentile(means[:, 1], 97.5)
        if not (m[ok].mean() > b[ok].mean() and lo_m > hi_b):
            return False
        judged += 1
    return judged > 0
