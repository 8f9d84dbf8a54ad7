"""Test-set evaluation of a run: Wan et al.'s criteria with bootstrap CIs, confusion matrices, ROC and PR curves."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_curve,
)

from .errors import ConfigError, DataError
from .metrics import classification_metrics
from .progress import CancelCheck, Progress, step
from .store import cached_json

if TYPE_CHECKING:
    from .runs import Run

#: Table 1 of Wan et al. (ACC, sensitivity, specificity, PPV, NPV) plus F1 (Cheng et al.) and AUC (Lee et al.),
#: all of the positive class taken one-vs-rest except ACC.
METRICS = ("ACC", "sensitivity", "specificity", "PPV", "NPV", "F1", "AUC")
_FROM_ENGINE = {
    "ACC": "acc", "sensitivity": "sensitivity", "specificity": "specificity", "PPV": "ppv", "NPV": "npv", "AUC": "auc"
}


def _check(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, n_classes: int, positive: int) -> None:
    if len(y_true) == 0:
        raise DataError("The test split is empty: evaluation needs at least one test image.")
    if len(y_pred) != len(y_true) or proba.shape != (len(y_true), n_classes):
        raise DataError(
            f"Predictions do not line up: {len(y_true)} labels, {len(y_pred)} predictions, probabilities of shape "
            f"{proba.shape} (expected ({len(y_true)}, {n_classes})). Re-run the prediction step."
        )
    if not 0 <= positive < n_classes:
        raise ConfigError(f"Positive class index {positive} is out of range for {n_classes} classes.")


def metric_table(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, classes: Sequence[str], positive: int
) -> dict[str, float]:
    """ACC, then sensitivity, specificity, PPV, NPV, F1 and AUC of the positive class (NaN where undefined)."""
    y_true, y_pred, proba = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), np.asarray(proba, dtype=float)
    _check(y_true, y_pred, proba, len(classes), positive)
    base = classification_metrics(y_true, y_pred, len(classes), positive, proba)
    out = {name: base[key] for name, key in _FROM_ENGINE.items()}
    out["F1"] = float(f1_score(y_true, y_pred, labels=[positive], average="macro", zero_division=np.nan))
    return {name: out[name] for name in METRICS}


def resampled_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray, positive: int, indices: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` on each row of ``indices`` (B, n) at once; NaN where a resample leaves it undefined.

    ``score`` is the probability of the positive class. Computing from counts across all resamples at once takes
    milliseconds where calling scikit-learn once per resample takes seconds; tests check it against ``metric_table``.
    """
    t = (np.asarray(y_true) == positive)[indices]
    p = (np.asarray(y_pred) == positive)[indices]
    n = indices.shape[1]
    tp, fp, fn = (t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)
    tn = n - tp - fp - fn
    n_pos = t.sum(1)
    n_neg = n - n_pos
    # AUC as the Mann-Whitney U statistic (average ranks for ties), which is what roc_auc_score computes.
    ranks = rankdata(np.asarray(score, dtype=float)[indices], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> NaN marks an undefined metric
        return {
            "ACC": (np.asarray(y_true) == np.asarray(y_pred))[indices].mean(1),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "PPV": tp / (tp + fp),
            "NPV": tn / (tn + fn),
            "F1": 2 * tp / (2 * tp + fp + fn),
            "AUC": ((ranks * t).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg),
        }


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    positive: int,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Point value and percentile-bootstrap ``1 - alpha`` interval of every metric (columns metric, value, low, high).

    Test images are resampled with replacement; a resample where a metric is undefined (e.g. no positive drawn)
    is left out of that metric's interval. The same seed draws the same resamples, so methods evaluated on the
    same test split get paired intervals.
    """
    # scipy.stats.bootstrap is not used: its interval goes through stats.quantile without a nan_policy, so one
    # resample with an undefined metric turns the whole interval into NaN, and resamples cannot be skipped.
    if n_boot < 1 or not 0 < alpha < 1:
        raise ConfigError(f"Bootstrap needs n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}.")
    y_true, y_pred, proba = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), np.asarray(proba, dtype=float)
    value = metric_table(y_true, y_pred, proba, classes, positive)
    indices = np.random.default_rng(seed).integers(0, len(y_true), size=(n_boot, len(y_true)))
    dist = resampled_metrics(y_true, y_pred, proba[:, positive], positive, indices)
    rows = []
    for name in METRICS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all resamples undefined -> NaN interval, not a warning
            low, high = np.nanpercentile(dist[name], [100 * alpha / 2, 100 * (1 - alpha / 2)])
        rows.append({"metric": name, "value": value[name], "low": float(low), "high": float(high)})
    return pd.DataFrame(rows, columns=["metric", "value", "low", "high"])


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts (rows: true class) and the same normalised per true class (empty rows stay 0)."""
    labels = list(range(n_classes))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    return counts, confusion_matrix(y_true, y_pred, labels=labels, normalize="true")


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class (Cheng et al.'s per-class tables); NaN where undefined."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(classes))), zero_division=np.nan
    )
    return pd.DataFrame(
        {"class": list(classes), "precision": precision, "recall": recall, "F1": f1, "support": support}
    )


def _one_vs_rest(y_true: np.ndarray, classes: Sequence[str]) -> dict[str, tuple[int, np.ndarray]]:
    y_true = np.asarray(y_true)
    return {name: (c, y_true == c) for c, name in enumerate(classes)}


def roc_curves(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve (fpr, tpr, AUC) of every class that has both positive and negative test images."""
    out = {}
    for name, (c, is_c) in _one_vs_rest(y_true, classes).items():
        if 0 < is_c.sum() < len(is_c):
            fpr, tpr, _ = roc_curve(is_c, proba[:, c])
            out[name] = (fpr, tpr, float(auc(fpr, tpr)))
    return out


def pr_curves(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest precision-recall curve (precision, recall, average precision) of every class with test images."""
    out = {}
    for name, (c, is_c) in _one_vs_rest(y_true, classes).items():
        if is_c.any():
            precision, recall, _ = precision_recall_curve(is_c, proba[:, c])
            out[name] = (precision, recall, float(average_precision_score(is_c, proba[:, c])))
    return out


def split_predictions(run: Run, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predicted classes and class probabilities of one split of a run, in ``run.images(split)`` order."""
    rows = run.predictions[run.predictions["split"] == split]
    proba = rows[[f"prob_{c}" for c in run.classes]].to_numpy(dtype=float)
    return rows["y"].to_numpy(dtype=int), rows["pred"].to_numpy(dtype=int), proba


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    positive: int,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the Performance page shows about one set of predictions, as JSON-able lists (undefined -> None)."""
    ci = bootstrap_ci(y_true, y_pred, proba, classes, positive, n_boot=n_boot, alpha=alpha, seed=seed)
    counts, normalised = confusion(y_true, y_pred, len(classes))
    report = per_class_report(y_true, y_pred, classes)
    roc, pr = roc_curves(y_true, proba, classes), pr_curves(y_true, proba, classes)
    return {
        "classes": list(classes),
        "positive": positive,
        "n_test": len(y_true),
        "metrics": [
            {"metric": r.metric, **{k: _finite_or_none(getattr(r, k)) for k in ("value", "low", "high")}}
            for r in ci.itertuples()
        ],
        "confusion": {"counts": counts.tolist(), "normalised": normalised.tolist()},
        "per_class": [
            {"class": r["class"], "support": int(r["support"]),
             **{k: _finite_or_none(r[k]) for k in ("precision", "recall", "F1")}}
            for r in report.to_dict("records")
        ],
        "roc": {k: {"fpr": f.tolist(), "tpr": t.tolist(), "auc": a} for k, (f, t, a) in roc.items()},
        "pr": {k: {"precision": p.tolist(), "recall": r.tolist(), "ap": a} for k, (p, r, a) in pr.items()},
    }


def evaluate_run(run: Run, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """``evaluate`` on the run's test split, cached in the run's folder."""
    name = f"evaluation-boot{n_boot}-alpha{alpha:g}-seed{seed}.json"
    return cached_json(
        run.artifact(name),
        lambda: evaluate(*split_predictions(run), run.classes, run.positive, n_boot=n_boot, alpha=alpha, seed=seed),
    )


def depth_curve(runs: Sequence[Run], metric: str, *, progress: Progress | None = None,
                cancel: CancelCheck | None = None) -> pd.DataFrame:
    """One row per run (run, backbone, depth, value, low, high, best) for "metric vs fine-tuning depth" (Lee fig. 5).

    ``best`` marks the run with the highest value (the first one on ties). ``progress(fraction, text)`` hears of each
    run evaluated; ``cancel()`` returning True stops between runs (LungLensError; the runs done stay cached).
    """
    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    rows = []
    for i, run in enumerate(runs):
        step(progress, cancel, i / max(len(runs), 1), f"evaluating {run.config.backbone} depth {run.config.depth}")
        row = next(m for m in evaluate_run(run)["metrics"] if m["metric"] == metric)
        rows.append({"run": run.id, "backbone": run.config.backbone, "depth": run.config.depth,
                     **{k: np.nan if row[k] is None else row[k] for k in ("value", "low", "high")}})
    df = pd.DataFrame(rows, columns=["run", "backbone", "depth", "value", "low", "high"])
    df = df.sort_values(["backbone", "depth"], kind="stable").reset_index(drop=True)
    df["best"] = False
    if df["value"].notna().any():
        df.loc[df["value"].idxmax(), "best"] = True
    return df
