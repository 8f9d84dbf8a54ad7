"""Wan et al.'s classical baselines (Table 1): SVMs on LBP histograms and on the CNN's deep features."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .data.transforms import to_model_input
from .device import pick_device
from .errors import DataError
from .evaluation import METRICS, bootstrap_ci, split_predictions
from .lbp import check_lbp, lbp_histograms, lbp_refusal
from .models.backbones import StagedNet
from .progress import CancelCheck, Progress, step
from .store import cached_arrays, cached_json

if TYPE_CHECKING:
    from collections.abc import Callable

    from .runs import Run

#: SVM regularisation strengths tried by the grid search.
C_GRID = np.logspace(-2, 3, 6)
#: Model-selection score: balanced accuracy, so that a majority-class SVM does not win on imbalanced data.
CV_SCORING = "balanced_accuracy"
METHODS = ("LBP + SVM", "Deep features + SVM", "Fine-tuned CNN")
#: Voxels of one deep-feature batch: what 64 images of 224 x 224 hold, so that a batch of volumes needs about the
#: memory of a batch of 2-D images (a 32 x 64 x 64 volume: 24 a batch).
BATCH_VOXELS = 64 * 224 * 224


def _n_folds(train_y: np.ndarray, cv: int) -> tuple[int, str]:
    """Folds for stratified CV: ``cv``, or fewer (with the reason) when a class has fewer training images."""
    labels, counts = np.unique(train_y, return_counts=True)
    if len(labels) < 2:
        raise DataError(
            f"The SVM needs training images of at least two classes; the training split has only {labels.tolist()}."
        )
    smallest, rarest = int(counts.min()), int(labels[counts.argmin()])
    if smallest < 2:
        raise DataError(
            f"Class {rarest} has a single training image; stratified cross-validation needs at "
            "least 2 per class. Add images or use a larger training split."
        )
    if smallest < cv:
        return smallest, f"{smallest}-fold instead of {cv}-fold: class {rarest} has only {smallest} training images"
    return cv, ""


def svm_baseline(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    seed: int = 0,
    cv: int = 5,
    n_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """RBF SVM on standardised features, C chosen by stratified CV on the training rows only, Platt-calibrated.

    Returns test predictions, test probabilities with ``n_classes`` columns (default: largest label + 1; classes
    absent from training get 0) and ``info`` (best C, its mean CV score, the score of every C in ``C_GRID``,
    folds, why folds were lowered).
    """
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y = np.asarray(train_y, dtype=int)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1] or len(train_x) != len(train_y):
        raise DataError(
            f"SVM inputs do not line up: train {train_x.shape}, {len(train_y)} labels, test {test_x.shape}; "
            "features must be (n, d) with the same d."
        )
    n_folds, note = _n_folds(train_y, cv)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    # Equivalent to Pipeline(StandardScaler, SVC(gamma="scale")) but with the RBF kernel computed once by BLAS and
    # shared by every C and fold: libsvm's own kernel loop takes 5-7 s per fit on 800 x 9216 deep features (36
    # fits here, 3-4 min), the precomputed one ~1.5 s for the whole search. The scaler sees all training rows, not
    # one fold's: only the mean and spread of unlabelled training features (and so gamma) cross folds; no test row
    # is ever used.
    scaler = StandardScaler().fit(train_x)
    train_s, test_s = scaler.transform(train_x), scaler.transform(test_x)
    spread = train_s.var()
    gamma = 1.0 / (train_s.shape[1] * spread) if spread > 0 else 1.0  # SVC's gamma="scale"
    k_train = rbf_kernel(train_s, gamma=gamma)
    k_test = rbf_kernel(test_s, train_s, gamma=gamma)
    search = GridSearchCV(SVC(kernel="precomputed"), {"C": C_GRID}, cv=folds, scoring=CV_SCORING, refit=False)
    search.fit(k_train, train_y)
    best_c = float(search.best_params_["C"])
    # SVC(probability=True) is deprecated since scikit-learn 1.9 in favour of this (same Platt scaling, by CV).
    model = CalibratedClassifierCV(SVC(kernel="precomputed", C=best_c), ensemble=False, cv=folds)
    model.fit(k_train, train_y)
    n_classes = int(train_y.max()) + 1 if n_classes is None else n_classes
    proba_trained = model.predict_proba(k_test)
    proba = np.zeros((len(test_x), n_classes))
    proba[:, model.classes_] = proba_trained
    info = {"C": best_c, "gamma": float(gamma), "cv_score": float(search.best_score_),
            "cv_scores": search.cv_results_["mean_test_score"].tolist(), "cv_scoring": CV_SCORING,
            "cv_folds": n_folds, "cv_note": note, "n_train": len(train_x)}
    return model.classes_[proba_trained.argmax(1)], proba, info


def deep_features(model: StagedNet, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W) uint8 images or (N, D, H, W) volumes -> (N, F) float32 ``model.features`` (9216-d AlexNet, 512-d
    ResNet-18 and 3-D ResNet-18), batched on the model's device (at most ``BATCH_VOXELS`` voxels a batch)."""
    if len(images_uint8) == 0:
        raise DataError("No images to extract deep features from: the split is empty.")
    batch_size = max(1, min(batch_size, BATCH_VOXELS // int(np.prod(images_uint8.shape[1:]))))
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images_uint8), batch_size):
            x = to_model_input(np.ascontiguousarray(images_uint8[start : start + batch_size])).to(device)
            out.append(model.features(x).float().cpu().numpy())
    return np.concatenate(out)


def _split_features(run: Run, name: str, features: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """``features`` of the run's train and test images, cached as ``name``; ``index``: their rows in run.predictions."""

    def compute() -> dict[str, np.ndarray]:
        split = run.predictions["split"].to_numpy()
        return {
            "train": features(run.images("train")),
            "test": features(run.images("test")),
            "index": np.concatenate([np.flatnonzero(split == "train"), np.flatnonzero(split == "test")]),
        }

    return cached_arrays(run.artifact(name), compute)


def run_deep_features(run: Run) -> dict[str, np.ndarray]:
    """Deep features of the run's fine-tuned CNN (Wan sec. 3.2-3.3): ``train`` and ``test`` (N, D) and ``index``
    (run.predictions row positions, train rows then test rows, for ``.iloc``)."""
    model = functools.cache(lambda: run.load_model().to(pick_device()))  # loaded only when the cache misses
    return _split_features(run, "deep-features.npz", lambda images: deep_features(model(), images))


def lbp_features(run: Run) -> dict[str, np.ndarray]:
    """59-bin LBP histograms of the run's images, laid out like ``run_deep_features``; ConfigError for a 3-D run
    (``engine.lbp.LBP_VOLUME_REASON``)."""
    check_lbp(run)
    return _split_features(run, "lbp-features.npz", lbp_histograms)


def _row(method: str, y_test: np.ndarray, pred: np.ndarray, proba: np.ndarray, run: Run, info: dict[str, Any],
         n_boot: int, alpha: float, seed: int) -> dict[str, Any]:
    ci = bootstrap_ci(y_test, pred, proba, run.classes, run.positive, n_boot=n_boot, alpha=alpha, seed=seed)
    row: dict[str, Any] = {"method": method}
    for r in ci.itertuples():
        row.update({r.metric: r.value, f"{r.metric}_low": r.low, f"{r.metric}_high": r.high})
    row.update({"C": info.get("C"), "cv_score": info.get("cv_score"), "cv_note": info.get("cv_note", "")})
    # JSON has no NaN: undefined values are stored as null and read back as NaN.
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()}


def compare_methods(run: Run, *, seed: int = 0, cv: int = 5, n_boot: int = 1000, alpha: float = 0.05,
                    progress: Progress | None = None, cancel: CancelCheck | None = None) -> pd.DataFrame:
    """Wan et al.'s Table 1 for a run: LBP + SVM, deep features + SVM and the fine-tuned CNN on the same test split.

    A 3-D run has no LBP row: ``df.attrs["note"]`` says why in one line (it is "" when every method applies).
    Columns: method, each metric with ``_low``/``_high`` bootstrap bounds (same resamples for every method), and
    the SVMs' chosen C, CV score and fold note. Cached in the run's folder (the features too, each as soon as it is
    extracted). ``progress(fraction, text)`` hears of each feature kind and fit; ``cancel()`` returning True stops
    between them (LungLensError).
    """

    note = lbp_refusal(run) or ""

    def compute() -> list[dict[str, Any]]:
        # The SVMs fit on the train split, the images the CNN's weights were fitted on. The val split (the CNN's
        # model selection) is not added: GridSearchCV selects the SVM's C by cross-validation inside train.
        train_y = split_predictions(run, "train")[0]
        y_test, cnn_pred, cnn_proba = split_predictions(run, "test")
        rows = []
        kinds = (("LBP + SVM", "LBP features", lbp_features), ("Deep features + SVM", "deep features",
                                                                 run_deep_features))
        if note:
            kinds = kinds[1:]
        for i, (method, what, extract) in enumerate(kinds):
            step(progress, cancel, 0.45 * i, f"extracting {what}")
            feats = extract(run)
            step(progress, cancel, 0.45 * i + 0.2, f"fitting the SVM on {what}")
            pred, proba, info = svm_baseline(
                feats["train"], train_y, feats["test"], seed=seed, cv=cv, n_classes=len(run.classes)
            )
            rows.append(_row(method, y_test, pred, proba, run, info, n_boot, alpha, seed))
        step(progress, cancel, 0.9, "bootstrapping the fine-tuned CNN's intervals")
        rows.append(_row("Fine-tuned CNN", y_test, cnn_pred, cnn_proba, run, {}, n_boot, alpha, seed))
        return rows

    rows = cached_json(run.artifact(f"compare-methods-seed{seed}-cv{cv}-boot{n_boot}-alpha{alpha:g}.json"), compute)
    df = pd.DataFrame(rows)
    numeric = [c for c in df.columns if c not in ("method", "cv_note")]
    df[numeric] = df[numeric].astype(float)
    df = df[["method", *[f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")], "C", "cv_score", "cv_note"]]
    df.attrs["note"] = note
    return df
