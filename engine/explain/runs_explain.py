"""Explanations of a trained run and its masks, computed once per split or image and cached in the run."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.imageio import read_mask
from ..data.transforms import preprocess_mask
from ..errors import ConfigError
from ..store import cached_arrays, stable_hash
from .methods import check_method, explain_one, get_method, heatmaps
from ..progress import CancelCheck, Progress, check_cancel, report

if TYPE_CHECKING:
    from ..runs import Run

#: How a run's explanations pick the class to explain: the model's prediction, the true class, or a class index.
RunTarget = str | int
#: Images per chunk of a split's maps, by the method's cost: progress is reported and a cancel heard between chunks.
CHUNK = {"fast": 16, "medium": 4, "slow": 1}


def split_rows(run: Run, split: str) -> pd.DataFrame:
    """The rows of ``run.predictions`` for one split, in ``run.images(split)`` order, renumbered from 0."""
    return run.predictions[run.predictions["split"] == split].reset_index(drop=True)


def _targets(rows: pd.DataFrame, target: RunTarget) -> np.ndarray | int:
    """Class indices to explain for ``rows``: column ``pred`` or ``y``, or one class index for all."""
    if target in ("pred", "true"):
        return rows["pred" if target == "pred" else "y"].to_numpy()
    return int(target)


def _key(method: str, split: str, target: RunTarget, params: dict[str, Any]) -> str:
    """Artifact name part identifying one explanation setting (and checking the method and target)."""
    check_method(method)
    if isinstance(target, str) and target not in ("pred", "true"):
        raise ConfigError(f"Unknown target {target!r}: use 'pred', 'true' or a class index.")
    target_name = target if isinstance(target, str) else f"class{int(target)}"
    return f"{method}-{split}-{target_name}-{stable_hash(params, 10)}"


def run_heatmaps(run: Run, method: str = "gradcam", split: str = "test", target: RunTarget = "pred",
                 layer: str | None = None, *, progress: Progress | None = None, cancel: CancelCheck | None = None,
                 **params: Any) -> np.ndarray:
    """(N, S, S) maps in [0, 1] of every image of ``split`` (``split_rows`` order), computed in chunks and cached.

    ``progress`` hears after every chunk and ``cancel`` is checked before each (a cancel raises Cancelled and caches
    nothing). LIME costs ``n_samples`` model evaluations per image; for single images use ``run_image_explanation``.
    """
    if layer is not None:
        params["layer"] = layer

    def compute() -> dict[str, np.ndarray]:
        m = get_method(method)
        rows = split_rows(run, split)
        images, targets, model = run.images(split), _targets(rows, target), run.load_model()
        chunk, parts = CHUNK[m.cost], []
        for i in range(0, len(images), chunk):
            check_cancel(cancel)
            report(progress, i / len(images), f"{m.label}: {i} of {len(images)} images")
            t = targets if isinstance(targets, int) else targets[i : i + chunk]
            parts.append(heatmaps(model, images[i : i + chunk], method, t, **params))
        maps = np.concatenate(parts) if parts else heatmaps(model, images, method, targets, **params)
        report(progress, 1.0, f"{m.label}: {len(images)} images")
        return {"heatmaps": maps.astype(np.float32)}

    return cached_arrays(run.artifact(f"explain/heatmaps-{_key(method, split, target, params)}.npz"), compute)["heatmaps"]


def run_image_explanation(run: Run, row: int, split: str = "test", method: str = "lime", target: RunTarget = "pred",
                          *, progress: Progress | None = None, cancel: CancelCheck | None = None,
                          **params: Any) -> dict[str, np.ndarray]:
    """One image's explanation (``row`` of ``split_rows``), cached.

    Returns ``heatmap`` (S, S) in [0, 1] and the method's details where it has them (LIME: ``map``, ``segments``,
    ``weights``). Methods that can (LIME) report ``progress`` and stop on ``cancel`` (raising Cancelled).
    """

    def compute() -> dict[str, np.ndarray]:
        check_cancel(cancel)
        rows = split_rows(run, split)
        t = _targets(rows.iloc[[row]], target)
        image = run.images(split)[row]
        out = explain_one(run.load_model(), image, method, int(np.ravel(t)[0]), progress=progress, cancel=cancel,
                          **params)
        check_cancel(cancel)
        return out

    key = _key(method, split, target, params)
    return cached_arrays(run.artifact(f"explain/image-{row}-{key}.npz"), compute)


def _read_mask(path: str, size: int) -> np.ndarray:
    """A mask file as bool, resized by nearest neighbour to the run's image size."""
    return preprocess_mask(read_mask(path), size)


def run_masks(run: Run, split: str = "test") -> dict[str, np.ndarray]:
    """Lesion and lung masks of ``split`` at the run's image size, cached.

    Returns ``lesion``, ``lung`` (N, S, S) bool and ``has_lesion``, ``has_lung`` (N,) bool; an image without a mask
    file gets an all-False mask. ``has_lesion`` is False for an empty lesion mask too (a normal image has no lesion
    that a heatmap could cover).
    """

    def compute() -> dict[str, np.ndarray]:
        rows = split_rows(run, split)
        size = run.config.image_size
        out: dict[str, np.ndarray] = {}
        for name, column in (("lesion", "mask"), ("lung", "lung_mask")):
            paths = rows[column].fillna("").astype(str).to_numpy()
            has = paths != ""
            masks = np.zeros((len(rows), size, size), dtype=bool)
            for i in np.flatnonzero(has):
                masks[i] = _read_mask(paths[i], size)
            if name == "lesion":
                has &= masks.any(axis=(1, 2))
            out[name], out[f"has_{name}"] = masks, has
        return out

    return cached_arrays(run.artifact(f"explain/masks-{split}-{run.config.image_size}px.npz"), compute)
