"""Where models put their support: on the lesion, or on the built-in shortcut marker; for 2-D and 3-D runs.

The built-in 2-D phantoms can burn a marker tag into most images of one class (``--confounder``); the phantom
manifest records each tag's box. Comparing a plain run with one trained with Ouyang's attention loss shows what the
mask-guided attention does to the support regions (consistency with the lesion, share of support on the marker).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .data.folder import MANIFEST
from .data.imageio import image_header, read_bytes
from .errors import DataError
from .explain.consistency import SUPPORT_THRESHOLD, outside_share
from .explain.localisation import mean_ci
from .explain.report import run_localisation
from .explain.runs_explain import run_heatmaps, split_rows
from .explain.volume import is_volume_run, volume_localisation
from .progress import CancelCheck, Progress, scaled

if TYPE_CHECKING:
    from .runs import Run


def has_markers(run: Run) -> bool:
    """Whether the run's data record shortcut-marker boxes (the built-in 2-D phantoms made with a confounder)."""
    manifest = run.dataset().root / MANIFEST
    if is_volume_run(run) or not manifest.is_file():
        return False
    boxes = pd.read_csv(manifest, keep_default_na=False)
    return "marker_box" in boxes.columns and bool((boxes["marker_box"].astype(str).str.strip() != "").any())


def marker_masks(run: Run, split: str = "test") -> np.ndarray:
    """Bool (N, S, S) masks of the marker tag of each image of ``split`` at the run's size (all False without one)."""
    manifest = run.dataset().root / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{run.dataset().root} has no {MANIFEST} with marker boxes: the shortcut comparison needs the "
                        "built-in phantoms made with --confounder.")
    boxes = pd.read_csv(manifest, keep_default_na=False)
    if "marker_box" not in boxes.columns:
        raise DataError(f"{manifest} has no marker_box column: make the data with --confounder.")
    box_of = dict(zip(boxes["file"], boxes["marker_box"]))
    rows = split_rows(run, split)
    size = run.config.image_size
    out = np.zeros((len(rows), size, size), dtype=bool)
    for i, (file, path) in enumerate(zip(rows["file"], rows["path"])):
        text = str(box_of.get(file, ""))
        if not text.strip():
            continue
        x0, y0, w, h = (int(v) for v in text.split())
        _, width, height, _ = image_header(read_bytes(path), str(path))
        sx, sy = size / width, size / height
        out[i, int(y0 * sy) : int(np.ceil((y0 + h) * sy)), int(x0 * sx) : int(np.ceil((x0 + w) * sx))] = True
    return out


def support_on_marker(maps: np.ndarray, markers: np.ndarray, threshold: float = SUPPORT_THRESHOLD) -> np.ndarray:
    """Per image with a marker: the share of its support region (map > threshold) on the marker; NaN otherwise."""
    return np.array([1.0 - outside_share(m, box, threshold) if box.any() else np.nan for m, box in zip(maps, markers)])


def _summary(name: str, run: Run, consistency: np.ndarray, on_marker: np.ndarray, marked: np.ndarray) -> dict:
    rows = split_rows(run, "test")
    correct = (rows["y"] == rows["pred"]).to_numpy()
    c_mean, c_lo, c_hi = mean_ci(consistency)
    m_mean, m_lo, m_hi = mean_ci(on_marker)
    return {"model": name, "run": run.id, "test_acc": float(correct.mean()),
            "acc_with_marker": float(correct[marked].mean()) if marked.any() else np.nan,
            "acc_without_marker": float(correct[~marked].mean()) if marked.any() and (~marked).any() else np.nan,
            "consistency": c_mean, "consistency_lo": c_lo, "consistency_hi": c_hi,
            "on_marker": m_mean, "on_marker_lo": m_lo, "on_marker_hi": m_hi,
            "n_lesion": int(np.isfinite(consistency).sum()), "n_marker": int(np.isfinite(on_marker).sum())}


def consistency_per_image(run: Run, method: str = "gradcam", threshold: float = SUPPORT_THRESHOLD, *,
                     progress: Progress | None = None, cancel: CancelCheck | None = None) -> np.ndarray:
    """Wan's consistency degree of each test image or volume (NaN where it has no lesion), from the cached scores."""
    if is_volume_run(run):
        table = volume_localisation(run, method, threshold=threshold, progress=progress, cancel=cancel)
        return table["consistency"].to_numpy(dtype=float)
    local = run_localisation(run, threshold, method, "pred", progress=progress, cancel=cancel)
    out = np.full(len(split_rows(run, "test")), np.nan)
    out[local["row"].to_numpy(dtype=int)] = local["consistency"].to_numpy(dtype=float)
    return out


def support_comparison(runs: dict[str, Run], method: str = "gradcam", threshold: float = SUPPORT_THRESHOLD, *,
                       progress: Progress | None = None, cancel: CancelCheck | None = None) -> pd.DataFrame:
    """One row per named run: test accuracy, the consistency degree with the lesion and, on data with a shortcut
    marker, the share of support on the marker and the accuracy with / without it; means with 95% bootstrap
    intervals over the test images (NaN where a score does not apply)."""
    out = []
    for k, (name, run) in enumerate(runs.items()):
        part = scaled(progress, k / len(runs), (k + 1) / len(runs))
        consistency = consistency_per_image(run, method, threshold, progress=scaled(part, 0.0, 0.5), cancel=cancel)
        if has_markers(run):
            maps = run_heatmaps(run, method, "test", "pred", progress=scaled(part, 0.5, 1.0), cancel=cancel)
            markers = marker_masks(run)
            on_marker, marked = support_on_marker(maps, markers, threshold), markers.any(axis=(1, 2))
        else:
            on_marker, marked = np.full(len(consistency), np.nan), np.zeros(len(consistency), dtype=bool)
        out.append(_summary(name, run, consistency, on_marker, marked))
    return pd.DataFrame(out)
