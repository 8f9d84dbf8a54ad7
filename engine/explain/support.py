"""What the Support Regions page shows, computed here so that the page only draws: the class a target names, one
map's scores against its image's masks, the localisation summary per depth, and one image followed across runs."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .consistency import SUPPORT_THRESHOLD, consistency_degree, outside_share, pointing_game, support_area
from .layers import layer_choices
from .localisation import localisation_scores
from .methods import is_empty
from ..progress import CancelCheck, Progress, check_cancel, report, scaled
from .report import localisation_summary, run_localisation
from .runs_explain import RunTarget, run_heatmaps, run_masks, split_rows

if TYPE_CHECKING:
    from ..runs import Run

NAN = float("nan")
#: Columns of ``localisation_by_depth``: a depth and its ``localisation_summary``.
DEPTH_COLUMNS = ["depth", "n", "n_empty", "consistency", "lung_area_matched_baseline", "random_baseline",
                 "pointing_game", "pointing_chance", "support_area", "beats_chance"]
#: Columns of ``same_image_across_depths``'s table.
ACROSS_COLUMNS = ["depth", "row", "predicted", "probability", "explained", "empty", "consistency"]


def split_images(run: Run, split: str = "test") -> np.ndarray:
    """The run's preprocessed images of ``split`` (``split_rows`` order)."""
    return run.images(split)


def cam_layer_choices(run: Run) -> list[tuple[str, str]]:
    """(module name, label) of every CAM layer of the run's model (an external view: its run's), input to output."""
    return layer_choices(run.trained_run.load_model())


def target_index(row: Mapping[str, Any], target: RunTarget) -> int:
    """The class index a target names for one test row: its prediction ('pred'), its label ('true') or the index."""
    if target == "pred":
        return int(row["pred"])
    if target == "true":
        return int(row["y"])
    return int(target)


def row_masks(masks: Mapping[str, np.ndarray], row: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The lesion and lung masks of one image of ``run_masks``, None where it has none (or an empty lesion mask)."""
    lesion, lung = masks["lesion"][row], masks["lung"][row]
    return (lesion if masks["has_lesion"][row] and lesion.any() else None,
            lung if masks["has_lung"][row] and lung.any() else None)


def image_scores(heatmap: np.ndarray, lesion: np.ndarray | None, lung: np.ndarray | None,
                 threshold: float = SUPPORT_THRESHOLD, seed: int = 0) -> dict[str, float]:
    """One map's scores against its image's masks, with the baselines; NaN where a mask is missing.

    ``pointing game`` is 1.0 for a hit (the map's maximum in the lesion), 0.0 for a miss; the random-map baseline
    is ``random_heatmap(seed)``'s consistency.
    """
    local = localisation_scores(heatmap, lesion, lung, threshold, seed=seed) if lesion is not None else {}
    return {
        "consistency degree": consistency_degree(heatmap, lesion, threshold) if lesion is not None else NAN,
        "baseline: lungs, same area": local.get("lung_area_matched_baseline", NAN),
        "baseline: random map": local.get("random_baseline", NAN),
        "pointing game": float(pointing_game(heatmap, lesion)) if lesion is not None else NAN,
        "relevance mass": local.get("relevance_mass", NAN),
        "support area": support_area(heatmap, threshold),
        "support outside lesion": outside_share(heatmap, lesion, threshold) if lesion is not None else NAN,
        "support outside lungs": outside_share(heatmap, lung, threshold) if lung is not None else NAN,
    }


def localisation_view(run: Run, threshold: float = SUPPORT_THRESHOLD, method: str = "gradcam",
                      target: RunTarget = "pred", *, progress: Progress | None = None,
                      cancel: CancelCheck | None = None, **params: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``run_localisation``'s per-image table and its ``localisation_summary``."""
    table = run_localisation(run, threshold, method, target, progress=progress, cancel=cancel, **params)
    return table, localisation_summary(table)


def localisation_by_depth(runs: Mapping[int, Run], threshold: float = SUPPORT_THRESHOLD, method: str = "gradcam",
                          target: RunTarget = "pred", *, progress: Progress | None = None,
                          cancel: CancelCheck | None = None) -> pd.DataFrame:
    """One row per depth (``DEPTH_COLUMNS``) whose test split has lesion masks: its ``localisation_summary``."""
    rows = []
    depths = sorted(runs)
    for k, depth in enumerate(depths):
        step = scaled(progress, k / len(depths), (k + 1) / len(depths), f"depth {depth} · ")
        summary = localisation_view(runs[depth], threshold, method, target, progress=step, cancel=cancel)[1]
        if summary["n"]:
            rows.append({"depth": depth, **{c: summary[c] for c in DEPTH_COLUMNS[1:]}})
    return pd.DataFrame(rows, columns=DEPTH_COLUMNS)


def same_image_across_depths(runs: Mapping[int, Run], file: str, method: str = "gradcam",
                             target: RunTarget = "true", threshold: float = SUPPORT_THRESHOLD, *,
                             progress: Progress | None = None,
                             cancel: CancelCheck | None = None) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """The test image called ``file`` in each depth's run: a table (``ACROSS_COLUMNS``) of its row there, that
    run's predicted class and probability, the class explained, whether the map is empty and its consistency
    degree (NaN without a lesion mask), and the maps by depth. Depths whose test split lacks the file are left out.
    """
    records, maps = [], {}
    depths = sorted(runs)
    for k, depth in enumerate(depths):
        check_cancel(cancel)
        run = runs[depth]
        rows = split_rows(run, "test")
        match = np.flatnonzero(rows["file"].astype(str).to_numpy() == file)
        if not len(match):
            continue
        i = int(match[0])
        step = scaled(progress, k / len(depths), (k + 1) / len(depths), f"depth {depth} · ")
        heatmap = run_heatmaps(run, method, "test", target, progress=step, cancel=cancel)[i]
        lesion = row_masks(run_masks(run, "test"), i)[0]
        r = rows.iloc[i]
        predicted = run.classes[int(r["pred"])]
        empty = bool(is_empty(heatmap[None])[0])
        maps[depth] = heatmap
        records.append({"depth": depth, "row": i, "predicted": predicted,
                        "probability": float(r[f"prob_{predicted}"]),
                        "explained": run.classes[target_index(r, target)], "empty": empty,
                        "consistency": consistency_degree(heatmap, lesion, threshold)
                        if lesion is not None and not empty else NAN})
    report(progress, 1.0, f"{len(maps)} depths")
    return pd.DataFrame(records, columns=ACROSS_COLUMNS), maps
