"""Ouyang et al.'s dual sampling: the eq. 5 ensemble of a uniform and a size-balanced member's predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .ensemble import DUAL_W_EXTREME, DUAL_W_MIDDLE, combine, dual_weight, fit_dual_weights
from .errors import LungLensError


def _probabilities(preds: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    return preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)


def dual_predictions(us: pd.DataFrame, ss: pd.DataFrame, classes: tuple[str, ...],
                     ratios: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
    """The ensemble's predictions (the members' rows, probabilities combined by eq. 5) and the weights used.

    The paper's weights (0.35 where the infection ratio is < 0.001 or > 0.030, else 0.96) make the ensemble; the
    weights fitted on the validation split are recorded beside them (``fitted_extreme``, ``fitted_middle``).
    """
    if len(us) != len(ss) or not (us["file"].to_numpy() == ss["file"].to_numpy()).all() \
            or not (us["split"].to_numpy() == ss["split"].to_numpy()).all():
        raise LungLensError("The two dual-sampling members were not trained on the same images and splits; train "
                            "them again from the same config (only the sampling differs).")
    p_us, p_ss = _probabilities(us, classes), _probabilities(ss, classes)
    proba = combine(p_us, p_ss, ratios, DUAL_W_EXTREME, DUAL_W_MIDDLE)
    val = (us["split"] == "val").to_numpy()
    weights = {"extreme": DUAL_W_EXTREME, "middle": DUAL_W_MIDDLE}
    if val.any():
        fitted = fit_dual_weights(p_us[val], p_ss[val], ratios[val], us["y"].to_numpy()[val])
        weights.update(fitted_extreme=float(fitted[0]), fitted_middle=float(fitted[1]))
    out = us.drop(columns=[f"prob_{c}" for c in classes]).copy()
    out["pred"] = proba.argmax(1)
    for i, c in enumerate(classes):
        out[f"prob_{c}"] = proba[:, i]
    out["infection_ratio"] = ratios
    out["dual_w"] = [dual_weight(r) for r in ratios]
    return out, weights
