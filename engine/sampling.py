"""Ouyang et al.'s size-balanced sampling (2020, §III-C): oversample small-infection positives, large-infection others.

Cases are split into groups by the infection ratio (lesion volume inside the lung / lung volume). Two classes give
their four groups: 0 small-infection positive (ratio < 0.030), 1 large-infection positive, 2 small-infection other
(ratio <= 0.001), 3 large-infection other (ratio > 0.001). A batch element picks a group with probability
W_g / sum W, W = [N_1 / N_0, 1, 1, N_2 / N_3], then a case of that group uniformly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it draws, so the constants and groups load without it
    import torch

#: A positive (COVID-19) case is "small-infection" below this ratio (§III-C: "< 0.030").
SMALL_COVID_BELOW = 0.030
#: A case of another class (CAP) is "large-infection" above this ratio (§III-C: "> 0.001").
LARGE_CAP_ABOVE = 0.001


def infection_ratio(lesion: np.ndarray, lung: np.ndarray) -> float:
    """Lesion voxels inside the lung / lung voxels (bool arrays of one image or volume); NaN without lung voxels."""
    lung = np.asarray(lung, dtype=bool)
    n_lung = int(lung.sum())
    if n_lung == 0:
        return float("nan")
    return float((np.asarray(lesion, dtype=bool) & lung).sum() / n_lung)


def size_groups(y: np.ndarray, ratios: np.ndarray, positive: int) -> np.ndarray:
    """The size group of each case (int array), from its class index ``y`` and its infection ratio.

    Positive class: 0 small (< SMALL_COVID_BELOW), 1 large. Every other class c, numbered k = 0, 1, ... in class order
    without the positive class: 2 + 2k small (<= LARGE_CAP_ABOVE), 3 + 2k large (> LARGE_CAP_ABOVE); with two classes
    these are the paper's four groups. A NaN ratio (no masks) puts a case in its class's weight-1 group (large
    positive, small other), so it is drawn but never oversampled.
    """
    y = np.asarray(y)
    ratios = np.asarray(ratios, dtype=np.float64)
    known = ~np.isnan(ratios)
    groups = np.where(known & (ratios < SMALL_COVID_BELOW), 0, 1)
    other = y != positive
    k = np.where(y > positive, y - 1, y)
    large_other = known & (ratios > LARGE_CAP_ABOVE)
    groups[other] = (2 + 2 * k + large_other)[other]
    return groups.astype(np.int64)


def _pair_ratio(num: int, den: int) -> float:
    """N_num / N_den, or 1 when either group is empty (the ratio then says nothing about over-sampling)."""
    return num / den if num and den else 1.0


def size_balanced_probabilities(groups: np.ndarray) -> np.ndarray:
    """Probability of drawing each group (index = group id): weights W_g normalised to sum 1, 0 for an empty group.

    Positive pair (0, 1): W = [N_1 / N_0, 1]; each other pair (2 + 2k, 3 + 2k): W = [1, N_small / N_large]
    (§III-C's [N_large^covid / N_small^covid, 1, 1, N_small^cap / N_large^cap]).
    """
    groups = np.asarray(groups)
    n_groups = max(4, int(groups.max()) + 1 if groups.size else 0)
    n_groups += n_groups % 2
    counts = np.bincount(groups, minlength=n_groups)
    weights = np.ones(n_groups)
    weights[0] = _pair_ratio(counts[1], counts[0])
    for small in range(2, n_groups, 2):
        weights[small + 1] = _pair_ratio(counts[small], counts[small + 1])
    weights[counts == 0] = 0.0
    return weights / weights.sum()


def size_balanced_indices(groups: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """``n`` positions into ``groups`` (one epoch): a group by size_balanced_probabilities, then a member uniformly."""
    groups = np.asarray(groups)
    import torch

    if n == 0:
        return np.empty(0, dtype=np.int64)
    probs = torch.from_numpy(size_balanced_probabilities(groups))
    drawn = torch.multinomial(probs, n, replacement=True, generator=generator).numpy()
    u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    order = np.argsort(groups, kind="stable")  # members of each group, contiguous and in index order
    counts = np.bincount(groups, minlength=len(probs))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = starts[drawn] + np.minimum((u * counts[drawn]).astype(np.int64), counts[drawn] - 1)
    return order[pick]
