"""Explanations of a 3-D CT run, for the Support Regions slice viewer: the maps of its test volumes by the registry's
volumetric methods (3-D Grad-CAM, Ouyang et al.'s online attention), their lesion and lung masks, and localisation
in 3-D with the baselines of 2-D (support of the same volume spread uniformly in the lungs, a smooth random map),
per case and as means with 95% bootstrap intervals.

Volumes are uint8 (D, H, W): D axial slices (superior to inferior), H rows (anterior to posterior), W columns.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..attention import ALPHA, BETA
from ..data.arrays import mask_arrays
from ..data.volume import volume_spacing
from ..models.names import VOLUME_BACKBONES
from ..progress import CancelCheck, Progress, check_cancel, report, scaled
from ..sampling import infection_ratio
from ..store import cached_json, stable_hash
from .consistency import SUPPORT_THRESHOLD
from .localisation import beats_chance, localisation_scores, mean_ci
from .methods import get_method, is_empty, volume_method
from .runs_explain import RunTarget, run_heatmaps, split_rows

if TYPE_CHECKING:
    from ..runs import Run

NAN = float("nan")
#: The three view planes through a point of a volume, by the array axis they fix: axial (a slice of D), coronal
#: (a row of H), sagittal (a column of W).
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}
#: Per-case columns of ``volume_localisation``: the case, its infection ratio and every score with its baselines.
CASE_COLUMNS = ["row", "file", "y", "pred", "label", "predicted", "correct", "empty", "infection_ratio",
                "lesion_volume", "support_volume"]
#: Each score and its two baselines (lungs: same support uniform in the lungs; random: a smooth random map).
SCORES = {
    "consistency": ("Consistency degree", "lung_area_matched_baseline", "random_baseline"),
    "pointing_game": ("Pointing game", "lung_pointing_baseline", "random_pointing_game"),
    "relevance_mass": ("Relevance mass", "lung_relevance_mass_baseline", "random_relevance_mass"),
}
SCORE_COLUMNS = [c for score, (_, lung, rand) in SCORES.items() for c in (score, lung, rand)]
LOCALISATION_COLUMNS = CASE_COLUMNS + SCORE_COLUMNS
#: Rows of ``volume_localisation_summary``: who a mean belongs to.
WHO = ("map", "lungs, same size", "smooth random map")


def is_volume_run(run: Run) -> bool:
    """Whether the run's model takes 3-D volumes (its data are CT volumes, its images (N, D, H, W))."""
    return run.config.backbone in VOLUME_BACKBONES


def view_spacing(run: Run) -> tuple[float, float, float]:
    """Millimetres per slice, row and column of the run's volumes (the common spacing every volume is resampled to)."""
    return volume_spacing(run.config.image_size)


def method_params(run: Run, method: str) -> dict[str, Any]:
    """The parameters the run's maps by ``method`` use: the attention map's alpha and beta where the run was trained
    with other values than Ouyang et al.'s (none otherwise, so the cache is shared with the defaults)."""
    if get_method(method).name != "attention":
        return {}
    cfg = run.config
    alpha, beta = getattr(cfg, "attention_alpha", ALPHA), getattr(cfg, "attention_beta", BETA)
    return {} if (alpha, beta) == (ALPHA, BETA) else {"alpha": float(alpha), "beta": float(beta)}


def volume_masks(run: Run, split: str = "test", *, progress: Progress | None = None,
                 cancel: CancelCheck | None = None) -> dict[str, np.ndarray]:
    """Lesion and lung masks (n, D, H, W) bool of the split's volumes (``split_rows`` order), ``has_lesion`` and
    ``has_lung`` (n,) and the infection ratio (n,) (lesion inside the lungs / lung volume; NaN without masks).

    The masks of the whole dataset are read once and cached (``mask_arrays``); ``progress`` hears after each volume
    and ``cancel`` stops the reading between two volumes (nothing partial is cached).
    """
    def step(done: int, total: int) -> None:
        check_cancel(cancel)
        report(progress, done / total, f"masks of volume {done} of {total}")

    lesion, lung, has_lesion, has_lung = mask_arrays(run.dataset(), run.config.image_size, progress=step)
    keep = (run.predictions["split"] == split).to_numpy()
    lesion, lung, has_lesion, has_lung = lesion[keep], lung[keep], has_lesion[keep], has_lung[keep]
    has_lesion = has_lesion & lesion.reshape(len(lesion), -1).any(axis=1)
    ratio = np.array([infection_ratio(lesion[i], lung[i]) if has_lesion[i] and has_lung[i] else NAN
                      for i in range(len(lesion))], dtype=np.float64)
    return {"lesion": lesion, "lung": lung, "has_lesion": has_lesion, "has_lung": has_lung, "infection_ratio": ratio}


def split_maps(run: Run, method: str = "gradcam", split: str = "test", target: RunTarget = "pred", *,
               progress: Progress | None = None, cancel: CancelCheck | None = None) -> np.ndarray:
    """Maps (n, D, H, W) float32 in [0, 1] of every volume of ``split`` by a volumetric method, cached in the run."""
    name = volume_method(method).name
    return run_heatmaps(run, name, split, target, progress=progress, cancel=cancel, **method_params(run, name))


def volume_maps(run: Run, method: str, rows: Sequence[int], split: str = "test", target: RunTarget = "pred", *,
                progress: Progress | None = None, cancel: CancelCheck | None = None) -> np.ndarray:
    """Maps (len(rows), D, H, W) float32 in [0, 1] of the volumes ``rows`` of ``split`` (``split_rows`` order).

    The whole split is explained and cached on first use (the localisation table needs every map anyway).
    """
    maps = split_maps(run, method, split, target, progress=progress, cancel=cancel)
    return maps[np.asarray(rows, dtype=np.int64)]


def _case_scores(heatmap: np.ndarray, lesion: np.ndarray | None, lung: np.ndarray | None, threshold: float,
                 seed: int) -> dict[str, float]:
    """The scores and baselines of ``SCORES`` for one volume (NaN without a lesion mask)."""
    if lesion is None:
        return {c: NAN for c in SCORE_COLUMNS}
    s = localisation_scores(heatmap, lesion, lung, threshold, seed=seed)
    return {c: s[c] for c in SCORE_COLUMNS}


def volume_localisation(run: Run, method: str = "gradcam", split: str = "test", *,
                        threshold: float = SUPPORT_THRESHOLD, target: RunTarget = "pred",
                        progress: Progress | None = None, cancel: CancelCheck | None = None) -> pd.DataFrame:
    """One row per volume of ``split`` (``LOCALISATION_COLUMNS``), cached in the run.

    Scores (NaN for a volume without a lesion mask): Wan's consistency degree (share of the lesion's voxels with
    map > ``threshold``), the pointing game (share of the map's maximal voxels inside the lesion) and relevance mass
    (share of the map's sum inside the lesion), each next to support of the same size placed uniformly in the lungs
    (its expectation; NaN without a lung mask) and a smooth random map scored the same way (seeded by the row).
    """
    name = volume_method(method).name

    def compute() -> list[dict[str, Any]]:
        rows = split_rows(run, split)
        maps = split_maps(run, name, split, target, progress=scaled(progress, 0.0, 0.85), cancel=cancel)
        masks = volume_masks(run, split)
        empty = is_empty(maps)
        records = []
        for i in range(len(rows)):
            check_cancel(cancel)
            report(progress, 0.85 + 0.15 * i / max(len(rows), 1), f"scoring volume {i + 1} of {len(rows)}")
            r, les = rows.iloc[i], masks["lesion"][i]
            lesion = les if masks["has_lesion"][i] else None
            lung = masks["lung"][i] if masks["has_lung"][i] and masks["lung"][i].any() else None
            records.append({
                "row": i, "file": str(r["file"]), "y": int(r["y"]), "pred": int(r["pred"]),
                "label": run.classes[int(r["y"])], "predicted": run.classes[int(r["pred"])],
                "correct": bool(r["y"] == r["pred"]), "empty": bool(empty[i]),
                "infection_ratio": float(masks["infection_ratio"][i]), "lesion_volume": float(les.mean()),
                "support_volume": float((maps[i] > threshold).mean()),
                **_case_scores(maps[i], lesion, lung, threshold, seed=i)})
        report(progress, 1.0, f"{len(rows)} volumes scored")
        return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()} for rec in records]

    key = stable_hash({"method": name, "split": split, "target": str(target), "threshold": float(threshold),
                       "params": method_params(run, name)}, 12)
    table = pd.DataFrame(cached_json(run.artifact(f"explain/volume-localisation-{name}-{key}.json"), compute),
                         columns=LOCALISATION_COLUMNS)
    return table.astype({c: float for c in ["infection_ratio", "lesion_volume", "support_volume", *SCORE_COLUMNS]})


def volume_localisation_summary(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Means with 95% bootstrap intervals of a ``volume_localisation`` table: one row per score and per map or
    baseline (``WHO``) with ``score``, ``label``, ``who``, ``mean``, ``low``, ``high``, ``n`` (volumes scored) and
    ``beats_chance`` (on the map's rows: its mean beats both baselines with non-overlapping paired intervals)."""
    out = []
    for score, (label, lung, rand) in SCORES.items():
        values = [table[c].to_numpy(dtype=float) for c in (score, lung, rand)]
        beats = bool(len(table)) and beats_chance(values[0], values[1:], seed=seed)
        for who, v in zip(WHO, values):
            mean, low, high = mean_ci(v, seed=seed)
            out.append({"score": score, "label": label, "who": who, "mean": mean, "low": low, "high": high,
                        "n": int(np.isfinite(v).sum()), "beats_chance": beats if who == WHO[0] else None})
    return pd.DataFrame(out, columns=["score", "label", "who", "mean", "low", "high", "n", "beats_chance"])


def volume_localisation_view(run: Run, method: str = "gradcam", split: str = "test", *,
                             threshold: float = SUPPORT_THRESHOLD, target: RunTarget = "pred",
                             progress: Progress | None = None,
                             cancel: CancelCheck | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``volume_localisation``'s per-case table and its ``volume_localisation_summary`` (what the page shows)."""
    table = volume_localisation(run, method, split, threshold=threshold, target=target, progress=progress,
                                cancel=cancel)
    return table, volume_localisation_summary(table)


def busiest_slice(mask: np.ndarray, axis: int = 0) -> int:
    """The index along ``axis`` of the slice with the most mask voxels (the first of ties); the middle one for an
    empty mask."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return int(m.shape[axis] // 2)
    return int(np.argmax(m.sum(axis=tuple(a for a in range(m.ndim) if a != axis))))


def default_point(lesion: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Where the slice viewer opens on a (D, H, W) volume: the axial slice with the most lesion, and in it the row and
    the column with the most lesion; the centre of the volume without a lesion."""
    if lesion is None or not np.any(lesion):
        return int(shape[0] // 2), int(shape[1] // 2), int(shape[2] // 2)
    z = busiest_slice(lesion, 0)
    return z, busiest_slice(lesion[z], 0), busiest_slice(lesion[z], 1)

