"""Diagnostic criteria of Wan et al. (eq. 1-5) and AUC, computed through scikit-learn."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, multilabel_confusion_matrix, roc_auc_score

#: The five criteria of Wan et al. 2021, eq. (1)-(5), in the paper's order.
CRITERIA = ("acc", "sensitivity", "specificity", "ppv", "npv")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # Undefined ratios (no positives, no predicted positives) are NaN, not 0: a page must not show a fake score.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def per_class_criteria(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV of every class taken one-vs-rest."""
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    tn, fp, fn, tp = (mcm[:, i, j].astype(float) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def auc_score(y_true: np.ndarray, proba: np.ndarray, positive: int) -> tuple[float, float]:
    """ROC AUC of the positive class (one-vs-rest) and the macro one-vs-rest AUC; NaN when a class is absent."""
    y_true = np.asarray(y_true)
    n_classes = proba.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pos = y_true == positive
        auc_pos = float(roc_auc_score(pos, proba[:, positive])) if 0 < pos.sum() < len(pos) else float("nan")
        if n_classes == 2:
            return auc_pos, auc_pos
        present = np.unique(y_true)
        if len(present) < n_classes:
            return auc_pos, float("nan")
        auc_macro = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    return auc_pos, auc_macro


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    n_classes: int,
    positive: int,
    proba: np.ndarray | None = None,
) -> dict[str, float]:
    """ACC plus sensitivity/specificity/PPV/NPV of the positive class, their macro averages, and AUC when ``proba`` is given."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    out: dict[str, float] = {"acc": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan")}
    per_class = per_class_criteria(y_true, y_pred, n_classes)
    for name, values in per_class.items():
        out[name] = float(values[positive])
        if n_classes > 2:
            out[f"macro_{name}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    if proba is not None:
        out["auc"], auc_macro = auc_score(y_true, proba, positive)
        if n_classes > 2:
            out["macro_auc"] = auc_macro
    return out
