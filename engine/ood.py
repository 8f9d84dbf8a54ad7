"""'This image is unlike the training data': a distance of an image's deep features to the run's
training features, compared with the 99th percentile of the same distance over the validation split.

Features: the global average of each channel of the last convolutional stage (``model.forward_blocks``), one value
per channel (256-d AlexNet, 512-d ResNet-18 / VGG, 1024-d DenseNet-121, 2048-d ResNet-50), in float64.

Distance: Mahalanobis distance to the training features, with the covariance shrunk by Ledoit-Wolf
(``sklearn.covariance.LedoitWolf``): features have hundreds of dimensions and training splits can hold fewer images
than that, where the sample covariance is singular; the shrunk one is well conditioned for any split size.

Why Mahalanobis and not the k-nearest-neighbour distance: measured on 300 real chest X-rays of
``covidqu_cxr_infection`` (a seeded sample) against each run's own test split of built-in phantoms, both distances
on these features, threshold at the 99th percentile of the validation split's distances (script:
``bench/bench_ood.py``). AUROC: real X-rays against the run's test phantoms, by distance; then the share of each
flagged.

=======================================  ==========================  ==========================  ===================
run (train / val / test images)          Mahalanobis, Ledoit-Wolf    kNN k=5, L2-normalised      best kNN variant
=======================================  ==========================  ==========================  ===================
demo ResNet-18 128 px d5 (576/144/180)   0.999 · 99.0% · 1.7%        0.795 · 3.3% · 0.0%         0.981 · 65% · 0.6%
demo ResNet-18 d2                        0.996 · 94.3% · 3.3%        0.651 · 6.7% · 1.7%         0.942 · 56% · 2.2%
demo ResNet-18 d0                        0.997 · 96.7% · 3.3%        0.951 · 57.7% · 1.7%        0.961 · 77% · 3.3%
tiny AlexNet 64 px d5 (38/10/12)         1.000 · 100% · 0%           0.989 · 99.0% · 25%         0.997 · 99% · 17%
tiny AlexNet 64 px d0                    0.998 · 96.3% · 0%          0.954 · 10.3% · 0%          0.996 · 88% · 0%
=======================================  ==========================  ==========================  ===================

(Each cell: AUROC · real X-rays flagged · own test phantoms flagged. "Best kNN": the highest AUROC of k = 1, 5, 10,
50 on L2-normalised or raw features.) The real X-rays' features point in directions the phantoms' also take, with
other magnitudes and correlations: normalising throws the magnitude away, and a single neighbour distance ignores
the correlations, so kNN flags at most 77% of the real X-rays on the demo runs. The Mahalanobis distance uses both,
and flags 94-100% of them on every run tried while keeping the run's own test images at 0-3.3% (the expected 1%,
with the noise of a percentile estimated from 10-144 validation images). Not a guarantee for other data.

The reference (mean, shrunk precision matrix, validation distances) is fitted once per run and cached as a run
artifact through ``engine.store.cached_arrays``, with a SHA-256 digest of its arrays checked on every read.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from .data.transforms import to_model_input
from .errors import DataError
from .explain.inference import model_device, model_lock
from .models.backbones import StagedNet
from .store import cached_arrays

if TYPE_CHECKING:
    from .runs import Run

log = logging.getLogger(__name__)

#: The threshold is this percentile of the validation split's distances.
OOD_PERCENTILE = 99.0
#: The distance used (see the module docstring for why).
OOD_METHOD = "mahalanobis-ledoitwolf"
#: How each method is named on the pages.
METHOD_LABELS = {OOD_METHOD: "Mahalanobis distance, Ledoit-Wolf covariance"}
#: The cached reference's file name in the run's artifacts; the version changes whenever features or fit change.
ARTIFACT = "ood-reference-v1.npz"
_FIELDS = ("mean", "precision", "shrinkage", "val_distances", "n_train")


@dataclass(frozen=True)
class OodReference:
    """The run's training features summarised for the distance, and the threshold from its validation split."""

    method: str
    percentile: float
    threshold: float
    n_train: int
    n_val: int
    mean: np.ndarray  # (D,) mean training feature
    precision: np.ndarray  # (D, D) inverse of the Ledoit-Wolf covariance of the training features
    shrinkage: float  # Ledoit-Wolf's shrinkage coefficient in [0, 1]
    val_distances: np.ndarray  # (n_val,) distances of the validation images, whose percentile is the threshold

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distances of (N, D) features to the training features."""
        return mahalanobis_distances(features, self.mean, self.precision)


def feature_vectors(model: StagedNet, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W) uint8 images -> (N, C) float64: each channel of the last conv stage averaged over the image."""
    images = np.asarray(images_uint8)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"Expected (N, H, W) uint8 images preprocessed for the model, got {images.shape} "
                        f"{images.dtype}.")
    if len(images) == 0:
        raise DataError("No images to compute deep features of: the set is empty.")
    device = model_device(model)
    out = []
    # The lock: explanation methods attach hooks to this model, and a forward pass here would trigger them.
    with model_lock(model), torch.inference_mode():
        model.eval()
        for start in range(0, len(images), batch_size):
            x = to_model_input(np.ascontiguousarray(images[start : start + batch_size])).to(device)
            out.append(model.forward_blocks(x).float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def mahalanobis_distances(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N,) sqrt((x - mean)^T precision (x - mean)) for each row x of (N, D) ``features``."""
    diff = np.asarray(features, dtype=np.float64) - mean
    squared = np.einsum("nd,de,ne->n", diff, precision, diff)
    return np.sqrt(np.maximum(squared, 0.0))  # rounding can leave -1e-12 for a point at the mean


def fit_reference(train_features: np.ndarray, val_features: np.ndarray,
                  percentile: float = OOD_PERCENTILE) -> OodReference:
    """Fit the distance on (N, D) training features; threshold = ``percentile`` of the validation distances."""
    train = np.asarray(train_features, dtype=np.float64)
    val = np.asarray(val_features, dtype=np.float64)
    if train.ndim != 2 or len(train) < 2:
        raise DataError(f"Need the features of at least 2 training images to fit the distance, got shape "
                        f"{train.shape}.")
    if val.ndim != 2 or len(val) < 1 or val.shape[1] != train.shape[1]:
        raise DataError(f"Need the features of at least 1 validation image with {train.shape[1]} dimensions, got "
                        f"shape {val.shape}.")
    lw = LedoitWolf().fit(train)
    return _reference({"mean": lw.location_, "precision": lw.precision_, "shrinkage": np.float64(lw.shrinkage_),
                       "val_distances": mahalanobis_distances(val, lw.location_, lw.precision_),
                       "n_train": np.int64(len(train))}, percentile)


def _reference(arrays: dict[str, np.ndarray], percentile: float) -> OodReference:
    val = np.asarray(arrays["val_distances"], dtype=np.float64)
    return OodReference(method=OOD_METHOD, percentile=float(percentile),
                        threshold=float(np.percentile(val, percentile)), n_train=int(arrays["n_train"]),
                        n_val=len(val), mean=np.asarray(arrays["mean"]), precision=np.asarray(arrays["precision"]),
                        shrinkage=float(arrays["shrinkage"]), val_distances=val)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the reference's arrays (dtype, shape and bytes), to verify a cached copy on read."""
    h = hashlib.sha256()
    for name in _FIELDS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _problem(arrays: dict[str, np.ndarray], n_val: int) -> str | None:
    """Why a cached reference cannot be used, or None when it is sound."""
    missing = {*_FIELDS, "digest"} - set(arrays)
    if missing:
        return f"it lacks {', '.join(sorted(missing))}"
    if str(arrays["digest"]) != _digest(arrays):
        return "its content differs from what was written (digest mismatch)"
    d = arrays["mean"].shape
    if len(d) != 1 or arrays["precision"].shape != (d[0], d[0]) or arrays["val_distances"].shape != (n_val,):
        return "its arrays have inconsistent shapes"
    return None


def ood_reference(run: Run, percentile: float = OOD_PERCENTILE) -> OodReference:
    """The run's fitted distance and threshold: fitted on the train split, threshold from the validation split.

    Cached as a run artifact (computed once); a cached file that cannot be read or fails its digest is removed and
    computed again, never served. DataError for a run without validation or with fewer than 2 training images.
    """
    run = run.trained_run
    split = run.predictions["split"].to_numpy()
    n_train, n_val = int((split == "train").sum()), int((split == "val").sum())
    if n_val == 0:
        raise DataError(f"Run {run.id} has no validation images, so 'unlike the training data' has no threshold "
                        f"(the {percentile:g}th percentile of the validation split's distances): train a run with a "
                        "validation split (val_fraction > 0, or rows marked val in the manifest).")
    if n_train < 2:
        raise DataError(f"Run {run.id} has {n_train} training image(s): at least 2 are needed to fit the distance "
                        "to the training data.")

    def compute() -> dict[str, np.ndarray]:
        from .device import pick_device

        model = run.load_model().to(pick_device())
        images = run.images()  # every split at once: the array is read once, not once per split
        ref = fit_reference(feature_vectors(model, images[split == "train"]),
                            feature_vectors(model, images[split == "val"]))
        arrays = {"mean": ref.mean, "precision": ref.precision, "shrinkage": np.float64(ref.shrinkage),
                  "val_distances": ref.val_distances, "n_train": np.int64(ref.n_train)}
        return {**arrays, "digest": np.array(_digest(arrays))}

    path = run.artifact(ARTIFACT)
    arrays = cached_arrays(path, compute)
    problem = _problem(arrays, n_val)
    if problem is not None:
        log.warning("recomputing %s: %s", path, problem)
        path.unlink(missing_ok=True)
        arrays = cached_arrays(path, compute)
        problem = _problem(arrays, n_val)
        if problem is not None:
            raise DataError(f"The cached reference {path} cannot be used ({problem}), even after computing it "
                            "again: delete the run's artifacts folder and retry.")
    return _reference(arrays, percentile)


def check_unlike(run: Run, images_uint8: np.ndarray, *, model: StagedNet | None = None) -> dict[str, Any]:
    """Whether each image is unlike the run's training data: its distance above the validation split's threshold.

    ``images_uint8``: (N, S, S) or one (S, S) image, preprocessed as the run's images (S = its image size).
    ``model``: the run's loaded model, to save loading it again. Returns ``distance`` (N,), ``threshold``,
    ``unlike`` (N,) bool, ``percentile``, ``method``, ``n_val`` and ``val_share_below`` (N,): the share of validation
    images whose distance is smaller.
    """
    images = np.asarray(images_uint8)
    if images.ndim == 2:
        images = images[None]
    size = run.config.image_size
    if images.ndim != 3 or images.shape[1:] != (size, size) or images.dtype != np.uint8:
        raise DataError(f"Expected uint8 images of {size} x {size} px preprocessed as run {run.id}'s images "
                        f"(engine.data.transforms.preprocess), got {images.shape} {images.dtype}.")
    ref = ood_reference(run)
    if model is None:
        from .device import pick_device

        model = run.load_model().to(pick_device())
    distance = ref.distances(feature_vectors(model, images))
    below = (ref.val_distances[None, :] < distance[:, None]).mean(axis=1)
    return {"distance": distance, "threshold": ref.threshold, "unlike": distance > ref.threshold,
            "percentile": ref.percentile, "method": ref.method, "n_val": ref.n_val, "val_share_below": below}
