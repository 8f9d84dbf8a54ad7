"""Interpretable inputs of Wan et al.'s decision-tree surrogate (sec. 4): per-image features a reader can name.

Three groups, each feature with a human name (``"right lower zone: mean intensity"``):

- Wan's handcrafted texture feature, the 59-bin uniform LBP histogram of the whole image (``engine.lbp``), each bin
  named by its pattern;
- intensity and texture statistics per lung zone: each lung split into upper, middle and lower thirds of its height
  (six zones), from the image's lung mask; an image without a usable lung mask gets fixed zones (the image's halves
  and thirds);
- lesion-like bright areas: pixels brighter than the lungs' median by ``BRIGHT_DELTA`` gray levels, as a share of each
  zone and of the lungs, and their connected blobs (count, largest).

Optionally the first principal components of the CNN's deep features (PCA fitted on the train split). 2-D runs only
for the handcrafted groups: they describe 2-D images.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops
from sklearn.decomposition import PCA

from .data.arrays import mask_arrays
from .errors import ConfigError, DataError
from .lbp import LBP_BINS, LBP_P
from .progress import CancelCheck, Progress, scaled, step
from .store import cached_arrays

if TYPE_CHECKING:
    from .runs import Run

#: Bump when a feature's definition changes, so that cached feature matrices are recomputed.
FEATURES_VERSION = 1
#: The patient's right lung is on the image's left (radiological convention: the film is viewed facing the patient).
SIDES = ("right", "left")
LEVELS = ("upper", "middle", "lower")
ZONES: tuple[str, ...] = tuple(f"{side} {level}" for side in SIDES for level in LEVELS)
#: Per-zone statistics: key -> what the feature name says.
ZONE_STATS: dict[str, str] = {
    "mean": "mean intensity", "std": "intensity std", "p10": "10th percentile intensity",
    "p50": "median intensity", "p90": "90th percentile intensity", "local_std": "local std (5×5 window)",
    "glcm_contrast": "GLCM contrast", "glcm_homogeneity": "GLCM homogeneity", "bright": "bright area share",
}
#: Whole-lung lesion-like measures: key -> feature name.
LUNG_STATS: dict[str, str] = {
    "bright": "lungs: bright area share", "blobs": "lungs: bright blobs (count)",
    "largest_blob": "lungs: largest bright blob (share of lungs)",
}
#: A pixel is "bright" (lesion-like: an opacity replaces the dark air of the lung) when it exceeds the median of the
#: image's lungs by this many gray levels (of 255).
BRIGHT_DELTA = 40
#: Bright blobs (4-connected) smaller than this share of the lung area are specks and not counted.
MIN_BLOB_SHARE = 0.002
#: Side of the window of the local standard deviation.
LOCAL_WINDOW = 5
#: Gray levels of the co-occurrence matrix (pixel pairs at distance 1, horizontal and vertical, averaged).
GLCM_LEVELS = 16
#: A lung mask is used when each of its six zones has at least this many pixels; else the image gets fixed zones.
MIN_ZONE_PIXELS = 16
#: Images per chunk of the zone features (progress is reported, and a cancel honoured, between chunks).
CHUNK = 64
#: Principal components of the deep features offered to the surrogate.
DEEP_PCS = 10
#: Why a 3-D run has no handcrafted surrogate inputs.
VOLUME_REASON = ("The surrogate's interpretable inputs (LBP bins, lung-zone statistics, bright areas) describe 2-D "
                 "images; a 3-D CT run's surrogate uses the principal components of its deep features only.")
#: Compass names of the 8 LBP neighbour positions, in skimage's order (index 0: right, then clockwise on screen).
_DIRECTIONS = ("right", "lower right", "below", "lower left", "left", "upper left", "above", "upper right")


# ---- names --------------------------------------------------------------------------------------------------------

def lbp_bin_name(code: int) -> str:
    """Human name of nri-uniform LBP code ``code`` (skimage's numbering: 0 no neighbour >= centre, 1 + (k - 1) * 8 +
    r for an arc of k neighbours at rotation r, 57 all, 58 non-uniform)."""
    if code == 0:
        return "LBP bin 0: bright spot (no neighbour ≥ centre)"
    if code == LBP_P * (LBP_P - 1) + 1:
        return f"LBP bin {code}: flat or dark spot (all {LBP_P} neighbours ≥ centre)"
    if code == LBP_BINS - 1:
        return f"LBP bin {code}: non-uniform patterns"
    k, r = divmod(code - 1, LBP_P)
    k += 1
    centre = (r - (k - 1) / 2) % LBP_P  # the arc of k neighbours >= centre ends at position r
    where = (_DIRECTIONS[int(centre)] if centre == int(centre)
             else f"{_DIRECTIONS[int(centre)]} / {_DIRECTIONS[(int(centre) + 1) % LBP_P]}")
    return f"LBP bin {code}: {k} of {LBP_P} neighbours ≥ centre, towards {where}"


def zone_feature_names() -> list[str]:
    """Names of ``zone_features``' columns: each zone's statistics, then the whole-lung measures."""
    return [f"{zone} zone: {what}" for zone in ZONES for what in ZONE_STATS.values()] + list(LUNG_STATS.values())


def handcrafted_names() -> list[str]:
    """Names of the handcrafted inputs: the 59 LBP bins, then ``zone_feature_names``."""
    return [lbp_bin_name(c) for c in range(LBP_BINS)] + zone_feature_names()


# ---- zones --------------------------------------------------------------------------------------------------------

def _bands(part: np.ndarray) -> np.ndarray:
    """(H,) band 0 / 1 / 2 of each row: the upper, middle and lower third of ``part``'s rows (its vertical extent)."""
    rows = np.flatnonzero(part.any(axis=1))
    top, height = rows[0], rows[-1] - rows[0] + 1
    return np.clip((np.arange(part.shape[0]) - top) * 3 // height, 0, 2)


def _zones_of(region: np.ndarray) -> np.ndarray:
    """(H, W) zone numbers 1-6 (``ZONES`` order, 0 outside): ``region`` split at the middle of its columns into the
    patient's right (image left) and left, each side into thirds of its own height."""
    cols = np.flatnonzero(region.any(axis=0))
    middle = (cols[0] + cols[-1] + 1) / 2
    image_left = np.arange(region.shape[1])[None, :] < middle
    zones = np.zeros(region.shape, np.int32)
    for s, side in enumerate((image_left, ~image_left)):
        part = region & side
        if part.any():
            band = np.broadcast_to(_bands(part)[:, None], region.shape)
            zones[part] = 1 + 3 * s + band[part]
    return zones


def lung_zones(lung: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """The six zones of an image (``_zones_of`` its lung mask) and True; fixed zones of the whole image and False when
    there is no lung mask or one of its zones has fewer than ``MIN_ZONE_PIXELS`` pixels."""
    if lung is not None and lung.any():
        zones = _zones_of(np.asarray(lung, bool))
        if np.bincount(zones.ravel(), minlength=len(ZONES) + 1)[1:].min() >= MIN_ZONE_PIXELS:
            return zones, True
    return _zones_of(np.ones(shape, bool)), False


# ---- statistics ---------------------------------------------------------------------------------------------------

def _glcm(image: np.ndarray, zone: np.ndarray) -> tuple[float, float]:
    """GLCM contrast and homogeneity of the pixels of one zone (pairs with a pixel outside it are left out)."""
    rows, cols = np.flatnonzero(zone.any(axis=1)), np.flatnonzero(zone.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    # Levels 1..GLCM_LEVELS inside the zone, 0 outside; dropping level 0's row and column drops the outside pairs.
    levels = (1 + image[box].astype(np.int32) * GLCM_LEVELS // 256) * zone[box]
    counts = graycomatrix(levels.astype(np.uint8), [1], [0, np.pi / 2], levels=GLCM_LEVELS + 1, symmetric=True)
    counts = counts[1:, 1:].astype(np.float64)
    if counts.sum() == 0:  # no two neighbouring pixels in the zone
        return 0.0, 1.0
    return float(graycoprops(counts, "contrast").mean()), float(graycoprops(counts, "homogeneity").mean())


def _local_std(image: np.ndarray) -> np.ndarray:
    """Standard deviation of the gray levels in the ``LOCAL_WINDOW`` square around each pixel."""
    x = image.astype(np.float64)
    mean = ndimage.uniform_filter(x, LOCAL_WINDOW)
    return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, LOCAL_WINDOW) - mean * mean, 0.0))


def _zone_std(x: np.ndarray, zones: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Standard deviation of ``x`` in each zone of ``index``."""
    # scipy also centres label 0 (outside every zone), which fixed zones leave empty: a 0 / 0 it warns about.
    with np.errstate(invalid="ignore"):
        return ndimage.standard_deviation(x, zones, index)


def bright_blobs(bright: np.ndarray, lung_area: int) -> np.ndarray:
    """Areas (pixels) of the 4-connected blobs of ``bright`` of at least ``MIN_BLOB_SHARE`` of ``lung_area``."""
    labels, n = ndimage.label(bright)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return areas[areas >= max(1.0, MIN_BLOB_SHARE * lung_area)]


def zone_features(image: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """One (H, W) uint8 image's ``zone_feature_names`` values, given its ``lung_zones``."""
    x = image.astype(np.float64)
    index = np.arange(1, len(ZONES) + 1)
    lungs = zones > 0
    bright = lungs & (x > np.median(x[lungs]) + BRIGHT_DELTA)
    per_zone = {
        "mean": ndimage.mean(x, zones, index), "std": _zone_std(x, zones, index),
        **{f"p{q}": np.array([np.percentile(x[zones == z], q) for z in index]) for q in (10, 50, 90)},
        "local_std": ndimage.mean(_local_std(image), zones, index),
        **dict(zip(("glcm_contrast", "glcm_homogeneity"), np.array([_glcm(image, zones == z) for z in index]).T,
                   strict=True)),
        "bright": ndimage.mean(bright, zones, index),
    }
    zone_part = np.stack([per_zone[k] for k in ZONE_STATS], axis=1).ravel()  # zone by zone, ZONES order
    area = int(lungs.sum())
    blobs = bright_blobs(bright, area)
    lung_part = [bright.sum() / area, len(blobs), (blobs.max() if len(blobs) else 0) / area]
    return np.concatenate([zone_part, lung_part]).astype(np.float32)


def zone_feature_matrix(images: np.ndarray, lungs: np.ndarray, has_lung: np.ndarray, *,
                        progress: Progress | None = None, cancel: CancelCheck | None = None,
                        ) -> dict[str, np.ndarray]:
    """``zone_features`` of (N, H, W) uint8 images with their lung masks: ``features`` (N, F) float32 and
    ``lung_zones`` (N,) bool (False: the image got fixed zones)."""
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"Zone features need an (N, H, W) uint8 image stack, got {images.shape} {images.dtype}.")
    rows, used = [], []
    for start in range(0, len(images), CHUNK):
        step(progress, cancel, start / max(len(images), 1), f"lung-zone statistics, images {start + 1}-"
                                                            f"{min(start + CHUNK, len(images))} of {len(images)}")
        for i in range(start, min(start + CHUNK, len(images))):
            zones, from_lung = lung_zones(lungs[i] if has_lung[i] else None, images[i].shape)
            rows.append(zone_features(images[i], zones))
            used.append(from_lung)
    n_features = len(zone_feature_names())
    return {"features": np.stack(rows) if rows else np.zeros((0, n_features), np.float32),
            "lung_zones": np.asarray(used, bool)}


# ---- per run ------------------------------------------------------------------------------------------------------

def handcrafted_refusal(run: Run) -> str | None:
    """Why the handcrafted inputs do not apply to ``run`` (``VOLUME_REASON`` for a 3-D run), or None."""
    from .explain.volume import is_volume_run  # imported here: keeps this module's import light

    return VOLUME_REASON if is_volume_run(run) else None


def run_zone_features(run: Run, *, progress: Progress | None = None,
                      cancel: CancelCheck | None = None) -> dict[str, np.ndarray]:
    """``zone_feature_matrix`` of every image of the run (``run.predictions`` order) with its lung mask; cached."""
    reason = handcrafted_refusal(run)
    if reason:
        raise ConfigError(reason)

    def compute() -> dict[str, np.ndarray]:
        step(progress, cancel, 0.0, "reading images and lung masks")
        _, lungs, _, has_lung = mask_arrays(run.dataset(), run.config.image_size)
        return zone_feature_matrix(run.images(), lungs, has_lung, progress=scaled(progress, 0.05, 1.0),
                                   cancel=cancel)

    return cached_arrays(run.artifact(f"surrogate-zones-v{FEATURES_VERSION}.npz"), compute)


def run_handcrafted(run: Run, *, progress: Progress | None = None,
                    cancel: CancelCheck | None = None) -> tuple[np.ndarray, list[str]]:
    """Every image's handcrafted inputs (N, 59 + zone features) float32 in ``run.predictions`` order, and their
    names; the LBP histograms are the ones the Features page and Table 1 share (cached once per run)."""
    from .projections import run_features  # imported here: it loads the SVM and projection stack

    zones = run_zone_features(run, progress=scaled(progress, 0.0, 0.7), cancel=cancel)["features"]
    step(progress, cancel, 0.7, "LBP histograms")
    lbp = run_features(run, "lbp")
    return np.concatenate([lbp, zones], axis=1).astype(np.float32), handcrafted_names()


def deep_pcs(features: np.ndarray, train: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` principal components of ``features`` (PCA fitted on the rows ``train`` only, seeded) for every
    row, float32, and each component's share of the train rows' variance."""
    k = max(1, min(k, int(train.sum()), features.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(features[train])
    return pca.transform(features).astype(np.float32), pca.explained_variance_ratio_


def run_deep_pcs(run: Run, k: int = DEEP_PCS, seed: int = 0, *, progress: Progress | None = None,
                 cancel: CancelCheck | None = None) -> tuple[np.ndarray, list[str]]:
    """The first ``k`` principal components of the run's deep features (fitted on its train split) for every image,
    and their names (``"deep PC 1 (23% of train variance)"``); cached."""
    from .projections import run_features  # imported here: it loads the SVM and projection stack

    def compute() -> dict[str, np.ndarray]:
        step(progress, cancel, 0.0, "deep features of the CNN")
        features = run_features(run, "deep")
        step(progress, cancel, 0.8, "principal components of the deep features")
        train = (run.predictions["split"] == "train").to_numpy()
        pcs, share = deep_pcs(features, train, k, seed)
        return {"pcs": pcs, "share": share}

    cached = cached_arrays(run.artifact(f"surrogate-deep-pcs-k{k}-seed{seed}.npz"), compute)
    names = [f"deep PC {i + 1} ({s:.0%} of train variance)" for i, s in enumerate(cached["share"])]
    return cached["pcs"], names


def stack_inputs(parts: Sequence[tuple[np.ndarray, list[str]]]) -> tuple[np.ndarray, list[str]]:
    """Feature groups side by side, with their names in the same order."""
    return (np.concatenate([x for x, _ in parts], axis=1).astype(np.float32),
            [name for _, names in parts for name in names])
