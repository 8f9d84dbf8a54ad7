"""Wan et al.'s handcrafted texture feature: the 59-bin histogram of uniform local binary patterns."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from skimage.feature import local_binary_pattern

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .runs import Run

# Wan et al. 2021, sec. 3.2 / 3.3: "handcrafted feature of LBP (59-dimensions)". 59 is the number of
# non-rotation-invariant uniform patterns of 8 neighbours (58 uniform codes + 1 for all others) at radius 1.
LBP_P = 8
LBP_R = 1
LBP_BINS = 59
#: Why a 3-D run has no LBP features (one line, as the pages and ``compare_methods`` say it).
LBP_VOLUME_REASON = ("LBP does not apply to 3-D CT volumes: Wan's 59-bin uniform LBP is a texture histogram of a 2-D "
                     "image (8 neighbours in the image plane), so volume runs show deep features only.")


def lbp_refusal(run: Run) -> str | None:
    """Why LBP features do not apply to ``run`` (``LBP_VOLUME_REASON`` for a 3-D CT run), or None when they do."""
    from .explain.volume import is_volume_run  # imported here: this module stays light for 2-D callers

    return LBP_VOLUME_REASON if is_volume_run(run) else None


def check_lbp(run: Run) -> None:
    """Raise ConfigError with ``lbp_refusal``'s reason when LBP features do not apply to ``run``."""
    reason = lbp_refusal(run)
    if reason:
        raise ConfigError(reason)


def lbp_histogram(image: np.ndarray) -> np.ndarray:
    """Normalised 59-bin uniform-LBP histogram of one (H, W) uint8 image."""
    codes = local_binary_pattern(image, P=LBP_P, R=LBP_R, method="nri_uniform")
    return np.bincount(codes.astype(np.intp).ravel(), minlength=LBP_BINS) / codes.size


def lbp_histograms(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 images -> (N, 59) float histograms, each summing to 1."""
    images = np.asarray(images)
    if images.ndim == 4:
        raise ConfigError(LBP_VOLUME_REASON)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"LBP needs an (N, H, W) uint8 image stack, got shape {images.shape} and dtype {images.dtype}.")
    # A plain loop: 6-13 ms per 224 px image (13-26 s for 2,000, once per run thanks to the cache). skimage holds
    # the GIL, and joblib processes were slower on the shared 2-core machine (bench/bench_baselines.py).
    return np.stack([lbp_histogram(image) for image in images]) if len(images) else np.zeros((0, LBP_BINS))
