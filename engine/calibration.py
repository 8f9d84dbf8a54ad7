"""Calibration and operating points of the positive class: reliability, ECE, Brier, temperature scaling, thresholds.

Everything is one-vs-rest on the positive class (``run.positive``). Temperature scaling is Guo et al. 2017 ("On
Calibration of Modern Neural Networks"): one scalar T divides the logits, fitted by minimising the validation NLL.
From stored probabilities it needs no model: log p differs from the logits z by a per-row constant, so
softmax(log p / T) equals softmax(z / T).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import roc_curve

from .errors import ConfigError, DataError
from .evaluation import split_predictions
from .store import cached_json

if TYPE_CHECKING:
    from .runs import Run

#: Bump when a cached calibration or temperature would come out differently.
CACHE_VERSION = 1
SPLITS = ("train", "val", "test")
#: The search interval of the temperature (a fit at a bound is reported as such by ``run_temperature_fit``).
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: A stored probability of 0 is float32 softmax underflow; it is read as the smallest normal float32 to have a log.
_TINY = float(np.finfo(np.float32).tiny)
#: The screening preset's target sensitivity.
SCREENING_SENSITIVITY = 0.95
#: Threshold presets on the positive-class probability: name -> label shown on the pages.
THRESHOLD_PRESETS: dict[str, str] = {"sensitivity95": "Screening: sensitivity 95%", "youden": "Youden"}


def _check_proba(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int and probabilities as a float (N, C) array, or a DataError saying what does not line up."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=float)
    if proba.ndim != 2 or len(y_true) != len(proba):
        raise DataError(f"Probabilities of shape {proba.shape} do not line up with {len(y_true)} labels: expected "
                        f"({len(y_true)}, n_classes).")
    if len(y_true) == 0:
        raise DataError("No predictions to calibrate: the split is empty.")
    if not np.isfinite(proba).all() or proba.min() < 0 or proba.max() > 1:
        raise DataError("Probabilities must be finite and lie in [0, 1]; re-run the prediction step.")
    y_true = y_true.astype(int)
    if y_true.min() < 0 or y_true.max() >= proba.shape[1]:
        raise DataError(f"Labels must be class indices 0..{proba.shape[1] - 1}, got {y_true.min()}..{y_true.max()}.")
    return y_true, proba


def _check_positive(positive: int, n_classes: int) -> None:
    if not 0 <= positive < n_classes:
        raise ConfigError(f"Positive class index {positive} is out of range for {n_classes} classes.")


def reliability_bins(y_bin: np.ndarray, score: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Mean score, share of positives and count in each non-empty uniform bin (bins as sklearn's calibration_curve)."""
    if n_bins < 1:
        raise ConfigError(f"n_bins must be at least 1, got {n_bins}.")
    y_bin, score = np.asarray(y_bin, dtype=float), np.asarray(score, dtype=float)
    # The same edges and side as sklearn.calibration.calibration_curve(strategy="uniform"): bins (lo, hi], first [0, .].
    ids = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], score)
    total = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=score, minlength=n_bins)
    hits = np.bincount(ids, weights=y_bin, minlength=n_bins)
    keep = total > 0
    return {"prob_pred": (sums[keep] / total[keep]).tolist(), "prob_true": (hits[keep] / total[keep]).tolist(),
            "count": total[keep].astype(int).tolist()}


def calibration_summary(y_true: np.ndarray, proba: np.ndarray, positive: int, n_bins: int = 10) -> dict[str, Any]:
    """ECE, Brier score and reliability bins of the positive class's probability (keys ece, brier, reliability, ...)."""
    y_true, proba = _check_proba(y_true, proba)
    _check_positive(positive, proba.shape[1])
    y_bin, score = (y_true == positive).astype(float), proba[:, positive]
    bins = reliability_bins(y_bin, score, n_bins)
    count = np.asarray(bins["count"], dtype=float)
    gap = np.abs(np.asarray(bins["prob_true"]) - np.asarray(bins["prob_pred"]))
    return {"ece": float((count / len(y_bin)) @ gap), "brier": float(np.mean((y_bin - score) ** 2)),
            "reliability": bins, "n_bins": n_bins, "n": len(y_bin), "prevalence": float(y_bin.mean())}


def _log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(proba, _TINY))


def _nll(log_p: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    return float(-log_softmax(log_p / temperature, axis=1)[np.arange(len(y_true)), y_true].mean())


def negative_log_likelihood(y_true: np.ndarray, proba: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(log(proba) / temperature)."""
    y_true, proba = _check_proba(y_true, proba)
    _check_temperature(temperature)
    return _nll(_log_proba(proba), y_true, temperature)


def fit_temperature(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the NLL of softmax(log(proba) / T) (Guo et al. 2017)."""
    y_true, proba = _check_proba(y_true, proba)
    log_p = _log_proba(proba)
    low, high = np.log(TEMPERATURE_BOUNDS)
    # Searched over log T, where the NLL is far better conditioned than over T near the lower bound.
    fit = minimize_scalar(lambda s: _nll(log_p, y_true, math.exp(s)), bounds=(low, high), method="bounded",
                          options={"xatol": 1e-7})
    return float(math.exp(fit.x))


def _check_temperature(temperature: float) -> None:
    if not (np.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"The temperature must be a finite number above 0, got {temperature}.")


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities after temperature scaling: softmax(log(proba) / temperature), row by row."""
    _check_temperature(temperature)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2:
        raise DataError(f"Probabilities must be an (N, n_classes) array, got shape {proba.shape}.")
    return np.exp(log_softmax(_log_proba(proba) / temperature, axis=1))


def _split(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and class probabilities of one split of a run (empty arrays when it has no image there)."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    y, _, proba = split_predictions(run, split)
    return y, proba


def _require_val(run: Run, y: np.ndarray, purpose: str) -> None:
    if len(y) == 0:
        raise DataError(f"Run {run.id} has no images in its validation split, where {purpose} is fitted (never on "
                        "the test split): use a run trained with a validation split.")


def run_temperature_fit(run: Run) -> dict[str, Any]:
    """The run's temperature fitted on its validation split only, with the NLL before and after; cached."""
    def compute() -> dict[str, Any]:
        y, proba = _split(run, "val")
        _require_val(run, y, "temperature scaling")
        t = fit_temperature(y, proba)
        return {"temperature": t, "split": "val", "n": len(y), "bounds": list(TEMPERATURE_BOUNDS),
                "at_bound": bool(np.isclose(t, TEMPERATURE_BOUNDS, rtol=1e-4).any()),
                "nll_before": negative_log_likelihood(y, proba), "nll_after": negative_log_likelihood(y, proba, t)}

    return cached_json(run.artifact(f"temperature-v{CACHE_VERSION}.json"), compute)


def run_temperature(run: Run) -> float:
    """The temperature of Guo et al. 2017 fitted on the run's validation split only (cached with the run)."""
    return float(run_temperature_fit(run)["temperature"])


def run_calibration(run: Run, temperature: bool = False, n_bins: int = 10) -> dict[str, Any]:
    """``calibration_summary`` of every split the run has (keys splits, temperature, positive, class); cached.

    With ``temperature`` the run's validation-fitted temperature is applied to every split first.
    """
    if n_bins < 1:
        raise ConfigError(f"n_bins must be at least 1, got {n_bins}.")

    def compute() -> dict[str, Any]:
        t = run_temperature(run) if temperature else None
        splits = {}
        for split in SPLITS:
            y, proba = _split(run, split)
            if len(y):
                splits[split] = calibration_summary(y, proba if t is None else apply_temperature(proba, t),
                                                    run.positive, n_bins)
        return {"splits": splits, "temperature": t, "positive": run.positive, "class": run.classes[run.positive],
                "n_bins": n_bins}

    name = f"calibration-v{CACHE_VERSION}-bins{n_bins}-{'temperature' if temperature else 'raw'}.json"
    return cached_json(run.artifact(name), compute)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def operating_point(y_true_bin: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV and counts when ``score >= threshold`` is called positive (NaN: undefined)."""
    y, score = np.asarray(y_true_bin, dtype=bool), np.asarray(score, dtype=float)
    if y.shape != score.shape or y.ndim != 1:
        raise DataError(f"Labels of shape {y.shape} and scores of shape {score.shape} do not line up.")
    called = score >= threshold
    tp, fp = int((y & called).sum()), int((~y & called).sum())
    fn, tn = int((y & ~called).sum()), int((~y & ~called).sum())
    return {"threshold": float(threshold), "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "n": len(y), "prevalence": _ratio(tp + fn, len(y))}


def threshold_preset(name: str, y_true_bin: np.ndarray, score: np.ndarray) -> float:
    """The threshold of a preset: "sensitivity95" (highest with sensitivity >= 0.95) or "youden" (max TPR - FPR)."""
    if name not in THRESHOLD_PRESETS:
        raise ConfigError(f"Unknown threshold preset {name!r}; choose one of {', '.join(THRESHOLD_PRESETS)}.")
    y, score = np.asarray(y_true_bin, dtype=bool), np.asarray(score, dtype=float)
    if y.shape != score.shape or y.ndim != 1:
        raise DataError(f"Labels of shape {y.shape} and scores of shape {score.shape} do not line up.")
    n_pos = int(y.sum())
    if name == "sensitivity95":
        if n_pos == 0:
            raise DataError("The screening preset needs at least one positive image to reach a sensitivity.")
        ranked = np.sort(score[y])[::-1]
        # Calling the k highest-scored positives positive gives sensitivity k / n_pos: the fewest that reach the target.
        k = int(np.argmax(np.arange(1, n_pos + 1) / n_pos >= SCREENING_SENSITIVITY))
        return float(ranked[k])
    if n_pos == 0 or n_pos == len(y):
        raise DataError("The Youden preset needs both positive and negative images (it maximises TPR - FPR).")
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    # The first point (threshold +inf, nothing called positive) has J = 0, as the last point does: never needed.
    return float(thresholds[1 + int(np.argmax((tpr - fpr)[1:]))])


def predictive_values(sensitivity: float, specificity: float, prevalence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PPV and NPV at each prevalence by Bayes' rule, for a test of the given sensitivity and specificity."""
    p = np.asarray(prevalence, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ConfigError("Prevalence must lie in [0, 1].")
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 -> NaN marks an undefined value
        true_pos, false_pos = sensitivity * p, (1 - specificity) * (1 - p)
        true_neg, false_neg = specificity * (1 - p), (1 - sensitivity) * p
        ppv = np.where(true_pos + false_pos > 0, true_pos / (true_pos + false_pos), np.nan)
        npv = np.where(true_neg + false_neg > 0, true_neg / (true_neg + false_neg), np.nan)
    return ppv, npv


def _binary(run: Run, split: str, temperature: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class labels and probabilities of a split, temperature-scaled when ``temperature`` is given."""
    y, proba = _split(run, split)
    if temperature is not None and len(y):
        proba = apply_temperature(proba, temperature)
    return y == run.positive, proba[:, run.positive] if len(y) else np.zeros(0)


def run_threshold(run: Run, preset: str, choose_on: str = "val", temperature: bool = False) -> float:
    """A preset's threshold on the positive-class probability, chosen on the ``choose_on`` split of the run."""
    if preset not in THRESHOLD_PRESETS:
        raise ConfigError(f"Unknown threshold preset {preset!r}; choose one of {', '.join(THRESHOLD_PRESETS)}.")
    t = run_temperature(run) if temperature else None
    y, score = _binary(run, choose_on, t)
    if len(y) == 0:
        raise DataError(f"Run {run.id} has no images in its {choose_on} split, where the threshold presets are "
                        "chosen: choose the threshold by hand, or use a run with that split.")
    try:
        return threshold_preset(preset, y, score)
    except DataError as exc:
        raise DataError(f"{exc} Its {choose_on} split has {int(y.sum())} {run.classes[run.positive]} image(s) of "
                        f"{len(y)}: choose the threshold by hand.") from None


def run_operating_point(run: Run, threshold: float | str, split: str = "test", choose_on: str = "val",
                        temperature: bool = False) -> dict[str, Any]:
    """``operating_point`` of ``split`` at a threshold or preset (presets chosen on ``choose_on``, then applied).

    Keys: operating_point's (of ``split``), plus split, preset, label, chosen_on, temperature, positive, class,
    chosen_on_metrics (the same figures on the ``choose_on`` split, None when it is empty) and note.
    """
    t = run_temperature(run) if temperature else None
    if isinstance(threshold, str):
        preset, value = threshold, run_threshold(run, threshold, choose_on, temperature)
        note = (f"Threshold chosen on the {choose_on} split ({THRESHOLD_PRESETS[preset]}) and applied to the "
                f"{split} split.")
    else:
        if not np.isfinite(threshold):
            raise ConfigError(f"The threshold must be a finite number, got {threshold}.")
        preset, value = None, float(threshold)
        note = f"Threshold {threshold:g} set by hand, applied to the {split} split."
    y, score = _binary(run, split, t)
    if len(y) == 0:
        raise DataError(f"Run {run.id} has no images in its {split} split.")
    ref_y, ref_score = _binary(run, choose_on, t)
    return {**operating_point(y, score, value), "split": split, "preset": preset,
            "label": THRESHOLD_PRESETS[preset] if preset else "Custom", "chosen_on": choose_on if preset else None,
            "temperature": t, "positive": run.positive, "class": run.classes[run.positive],
            "chosen_on_metrics": operating_point(ref_y, ref_score, value) if len(ref_y) else None, "note": note}
