"""Ouyang et al.'s dual-sampling ensemble (2020, §III-E, eq. 5): P = w P_US + (1 - w) P_SS, w by infection ratio."""
from __future__ import annotations

import numpy as np

from .sampling import LARGE_CAP_ABOVE, SMALL_COVID_BELOW

#: Weight of the uniform-sampling model where the infection ratio is < 0.001 or > 0.030 (the minority cases the
#: size-balanced model was trained for), and elsewhere: the paper's values from a search on its TV set.
DUAL_W_EXTREME = 0.35
DUAL_W_MIDDLE = 0.96
#: The weights fit_dual_weights tries: 0, 0.05, ..., 1.
DUAL_GRID = np.round(np.arange(21) * 0.05, 2)
#: Floor of a probability inside the log-likelihood, so one confident mistake does not make it -inf.
PROB_FLOOR = 1e-12


def _extreme(ratios: np.ndarray) -> np.ndarray:
    """Whether each ratio is < 0.001 or > 0.030 (a NaN ratio, no masks, counts as a middle case)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (ratios < LARGE_CAP_ABOVE) | (ratios > SMALL_COVID_BELOW)


def dual_weight(ratio: float, w_extreme: float = DUAL_W_EXTREME, w_middle: float = DUAL_W_MIDDLE) -> float:
    """Eq. 5's w for one case: ``w_extreme`` if its ratio is < 0.001 or > 0.030, else (NaN too) ``w_middle``."""
    return float(w_extreme if _extreme(np.float64(ratio)) else w_middle)


def combine(p_us: np.ndarray, p_ss: np.ndarray, ratios: np.ndarray, w_extreme: float = DUAL_W_EXTREME,
            w_middle: float = DUAL_W_MIDDLE) -> np.ndarray:
    """Eq. 5 for (N, K) class probabilities of the uniform (US) and size-balanced (SS) models -> (N, K)."""
    w = np.where(_extreme(ratios), w_extreme, w_middle)[:, None]
    return w * np.asarray(p_us, dtype=np.float64) + (1 - w) * np.asarray(p_ss, dtype=np.float64)


def _best_weight(p_us: np.ndarray, p_ss: np.ndarray, y: np.ndarray, grid: np.ndarray, prior: float) -> float:
    """The grid weight of highest log-likelihood of the true classes; ties go to the one nearest ``prior``."""
    if not len(y):
        return prior
    rows = np.arange(len(y))
    q_us, q_ss = p_us[rows, y], p_ss[rows, y]
    ll = np.array([np.log(np.maximum(w * q_us + (1 - w) * q_ss, PROB_FLOOR)).sum() for w in grid])
    best = np.flatnonzero(np.isclose(ll, ll.max(), rtol=0, atol=1e-9))
    return float(grid[best[np.argmin(np.abs(grid[best] - prior))]])


def fit_dual_weights(p_us: np.ndarray, p_ss: np.ndarray, ratios: np.ndarray, y: np.ndarray,
                     grid: np.ndarray = DUAL_GRID) -> tuple[float, float]:
    """(w_extreme, w_middle) maximising the validation log-likelihood sum log P_final[y] over ``grid``.

    The two weights act on disjoint cases (ratio outside or inside [0.001, 0.030]), so each is fitted on its own
    cases; a set without cases keeps the paper's value. Log-likelihood, not accuracy: it separates weights that
    classify a small validation split alike.
    """
    p_us, p_ss = np.asarray(p_us, dtype=np.float64), np.asarray(p_ss, dtype=np.float64)
    y, grid = np.asarray(y, dtype=np.int64), np.asarray(grid, dtype=np.float64)
    ext = _extreme(ratios)
    return (_best_weight(p_us[ext], p_ss[ext], y[ext], grid, DUAL_W_EXTREME),
            _best_weight(p_us[~ext], p_ss[~ext], y[~ext], grid, DUAL_W_MIDDLE))
