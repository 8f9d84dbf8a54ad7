"""Wan et al. sec. 3.3: deep and LBP features of every image projected to 2-D or 3-D, and how separable classes are."""
from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA, KernelPCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .errors import ConfigError, DataError
from .lbp import check_lbp, lbp_refusal
from .progress import CancelCheck, Progress, step
from .store import cached_arrays

if TYPE_CHECKING:
    from .runs import Run

Method = Literal["pca", "kpca-linear", "kpca-rbf", "tsne"]
FeatureSet = Literal["deep", "lbp"]

METHODS: tuple[str, ...] = ("pca", "kpca-linear", "kpca-rbf", "tsne")
FEATURE_SETS: tuple[str, ...] = ("deep", "lbp")

#: t-SNE runs on this many principal components (the usual recipe: drops noise dimensions, cheap neighbour search).
TSNE_PCA_DIMS = 50
#: t-SNE speed settings (scikit-learn's defaults: 1000 iterations, Barnes-Hut angle 0.5), chosen with
#: ``bench/bench_tsne.py --check-quality`` on 2,000 x 9216 features: 500 iterations and angle 0.7 take 30-60% of the
#: default's time in 2-D and 3-D, with the same trustworthiness (10 neighbours) to within 0.005.
TSNE_MAX_ITER = 500
TSNE_ANGLE = 0.7
#: Kernel PCA eigen-decomposes an N x N kernel (O(N^2) memory, O(N^3) time). Above this many images it is fitted on a
#: seeded random subset of this size and every image is then projected with ``transform``.
KPCA_MAX_FIT = 3000
#: k of the k-NN separability score, and its number of stratified folds.
KNN_K = 5
KNN_FOLDS = 5


def _check(method: str, dims: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"Unknown projection {method!r}: choose one of {', '.join(METHODS)}.")
    if dims not in (2, 3):
        raise ConfigError(f"Projections are 2-D or 3-D, got dims={dims}.")


def project(features: np.ndarray, method: Method, dims: Literal[2, 3], seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, dims) float32 points by PCA, kernel PCA (linear or RBF) or t-SNE; seeded."""
    _check(method, dims)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) <= dims:
        raise DataError(f"Need an (N, D) feature matrix with more than {dims} rows to project, got shape {x.shape}.")
    # Standardised first: a 9216-d ReLU feature and a 59-bin LBP histogram both have dimensions whose spreads differ
    # by orders of magnitude, and all four methods are driven by variances or Euclidean distances, so the few
    # largest-spread dimensions would decide the picture. Unit variance gives every dimension the same say (constant
    # dimensions, e.g. dead ReLU units, are left at zero by the scaler) and makes RBF's default gamma meaningful.
    x = StandardScaler().fit_transform(x)
    if method == "pca":
        points = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit_transform(x)
    elif method in ("kpca-linear", "kpca-rbf"):
        kpca = KernelPCA(n_components=dims, kernel=method.removeprefix("kpca-"), random_state=seed)
        if len(x) > KPCA_MAX_FIT:
            fit_rows = np.random.default_rng(seed).choice(len(x), KPCA_MAX_FIT, replace=False)
            points = kpca.fit(x[fit_rows]).transform(x)
        else:
            points = kpca.fit_transform(x)
    else:
        if x.shape[1] > TSNE_PCA_DIMS:
            pca = PCA(n_components=min(TSNE_PCA_DIMS, len(x)), svd_solver="randomized", random_state=seed)
            x = pca.fit_transform(x)
        # Perplexity must stay below N; (N - 1) / 3 keeps tiny sets valid and is 30 (the default) from N = 91 on.
        tsne = TSNE(n_components=dims, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", learning_rate="auto",
                    max_iter=TSNE_MAX_ITER, angle=TSNE_ANGLE, random_state=seed, n_jobs=-1)
        # One OpenMP thread for the Barnes-Hut gradient: the dashboard shares two cores with training runs, and
        # threads that wait for a descheduled peer made 2-D t-SNE of 2,000 points 3-4x slower on a busy machine
        # (60 s with two threads vs 16 s with one at load 6-8; ``bench/bench_tsne.py --check-quality`` times both);
        # idle, the second thread could save at most half of a few seconds.
        with threadpool_limits(limits=1, user_api="openmp"):
            points = tsne.fit_transform(x)
    return points.astype(np.float32)


def separability(points: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How well the classes separate in ``points``: silhouette, 5-fold k-NN (k=5) accuracy, and majority-class chance.

    Undefined scores (a single class; a class with one image) are NaN.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    result = {"silhouette": float("nan"), "knn_accuracy": float("nan"), "knn_folds": 0,
              "chance": float(counts.max() / counts.sum()) if len(counts) else float("nan")}
    if len(classes) < 2 or len(classes) >= len(labels):
        return result
    result["silhouette"] = float(silhouette_score(points, labels))
    folds = min(KNN_FOLDS, int(counts.min()))  # stratified CV needs every class in every fold
    if folds >= 2:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        # k can be at most the size of the smallest training part.
        k = min(KNN_K, len(labels) - int(np.ceil(len(labels) / folds)))
        scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), points, labels, cv=cv, scoring="accuracy")
        result.update(knn_accuracy=float(scores.mean()), knn_folds=folds)
    return result


def thumbnail_uri(image_uint8: np.ndarray, size: int = 64) -> str:
    """A ``data:image/png;base64,...`` URI of a ``size`` x ``size`` copy of a gray uint8 image (for hover labels)."""
    small = cv2.resize(np.ascontiguousarray(image_uint8), (size, size), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", small)
    if not ok:
        raise DataError(f"Could not encode a thumbnail of an image of shape {image_uint8.shape} as PNG.")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def run_feature_sets(run: Run) -> tuple[str, ...]:
    """The feature sets that apply to the run, in ``FEATURE_SETS`` order: both for 2-D runs, deep only for 3-D runs
    (``engine.lbp.lbp_refusal`` says why)."""
    return tuple(fs for fs in FEATURE_SETS if fs != "lbp" or lbp_refusal(run) is None)


def _check_feature_set(run: Run, feature_set: str) -> None:
    """ConfigError for an unknown feature set, or LBP on a 3-D run."""
    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"Unknown feature set {feature_set!r}: choose one of {', '.join(FEATURE_SETS)}.")
    if feature_set == "lbp":
        check_lbp(run)


def run_features(run: Run, feature_set: FeatureSet) -> np.ndarray:
    """Deep or LBP features of every image of the run (train, val and test), in ``run.predictions`` row order.

    Train and test rows come from the caches the Table 1 baselines fill (``engine.baselines``); the val rows, which
    the baselines do not use, are computed here and cached beside them. LBP of a 3-D run: ConfigError (see
    ``run_feature_sets``).
    """
    # Imported here: engine.baselines loads the whole SVM / evaluation stack, which a projection of cached
    # features does not need.
    from . import baselines
    from .device import pick_device
    from .lbp import lbp_histograms

    _check_feature_set(run, feature_set)

    def extract_val() -> dict[str, np.ndarray]:
        images = run.images("val")
        if feature_set == "deep":
            return {"val": baselines.deep_features(run.load_model().to(pick_device()), images)}
        return {"val": lbp_histograms(images)}

    train_test = baselines.run_deep_features(run) if feature_set == "deep" else baselines.lbp_features(run)
    split = run.predictions["split"].to_numpy()
    val_rows = np.flatnonzero(split == "val")
    parts = [train_test["train"], train_test["test"]]
    index = [train_test["index"]]
    if len(val_rows):
        val = cached_arrays(run.artifact(f"{feature_set}-features-val.npz"), extract_val)
        parts.append(val["val"])
        index.append(val_rows)
    order = np.concatenate(index)
    if not np.array_equal(np.sort(order), np.arange(len(split))):
        raise DataError(f"The cached {feature_set} features of run {run.id} do not cover its images one to one; "
                        "delete the run's artifacts folder to recompute them.")
    features = np.empty((len(split), parts[0].shape[1]), dtype=np.float32)
    features[order] = np.concatenate(parts)
    return features


def feature_dims(run: Run, feature_set: FeatureSet) -> int:
    """The length of one image's ``feature_set`` features in the run (e.g. 9216 for AlexNet's deep features)."""
    return int(run_features(run, feature_set).shape[1])


def run_projection(run: Run, feature_set: FeatureSet, method: Method, dims: Literal[2, 3], seed: int = 0, *,
                   progress: Progress | None = None, cancel: CancelCheck | None = None) -> pd.DataFrame:
    """Every image of the run as a projected point, with its file, split, true and predicted class.

    Columns: x, y (, z), file, path, split, label, pred, correct; one row per ``run.predictions`` row, same order.
    ``df.attrs["separability"]`` holds ``separability()`` of the points against the true classes. Cached per run,
    feature set, method, dims and seed (the features too, once extracted). ``progress(fraction, text)`` hears of
    each step (features, projection, scores); ``cancel()`` returning True stops between them (LungLensError).
    """
    _check(method, dims)
    _check_feature_set(run, feature_set)
    preds = run.predictions
    y = preds["y"].to_numpy()

    def compute() -> dict[str, np.ndarray]:
        step(progress, cancel, 0.0, f"{feature_set} features of {len(y)} images")
        features = run_features(run, feature_set)
        step(progress, cancel, 0.3, f"{method} to {dims}-D")
        points = project(features, method, dims, seed)
        step(progress, cancel, 0.9, "silhouette and k-NN scores")
        scores = separability(points, y, seed)
        return {"points": points, **{k: np.asarray(v) for k, v in scores.items()}}

    cached = cached_arrays(run.artifact(f"projection-{feature_set}-{method}-{dims}d-seed{seed}.npz"), compute)
    classes = np.asarray(run.classes)
    df = pd.DataFrame(cached["points"], columns=["x", "y", "z"][:dims])
    df["file"] = preds["file"].to_numpy()
    df["path"] = preds["path"].to_numpy()
    df["split"] = preds["split"].to_numpy()
    df["label"] = classes[y]
    df["pred"] = classes[preds["pred"].to_numpy()]
    df["correct"] = df["label"] == df["pred"]
    df.attrs["separability"] = {k: cached[k].item() for k in ("silhouette", "knn_accuracy", "knn_folds", "chance")}
    return df
