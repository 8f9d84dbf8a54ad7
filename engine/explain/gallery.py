"""The wrong-reason gallery (Lee et al. figs. 9-10, Ouyang fig. 6): test images that were misclassified, or
classified correctly while the model looked mostly outside the lesion or the lungs, worst first."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .consistency import SUPPORT_THRESHOLD, outside_share
from ..progress import CancelCheck, Progress
from .runs_explain import run_heatmaps, run_masks, split_rows

if TYPE_CHECKING:
    from ..runs import Run

GALLERY_COLUMNS = ["row", "file", "path", "true_class", "pred_class", "p_pred", "correct", "outside_lesion",
                   "outside_lungs", "badness", "reason"]


def wrong_reason_gallery(run: Run, threshold: float = SUPPORT_THRESHOLD, method: str = "gradcam",
                         mostly: float = 0.5, *, progress: Progress | None = None, cancel: CancelCheck | None = None,
                         **params: Any) -> pd.DataFrame:
    """Misclassified test images and right-for-the-wrong-reason ones, ranked by ``badness`` (worst first).

    An image's support (heatmap > ``threshold``, for its predicted class) lies "mostly outside" a region when more
    than ``mostly`` of it is outside the lesion mask or the lung mask (where those masks exist).
    ``badness`` = the probability given to the wrong class (0 when correct) + the larger outside share when it
    exceeds ``mostly`` (else 0); it lies in [0, 2]. ``progress`` / ``cancel``: as ``run_heatmaps``'s.
    """
    rows = split_rows(run, "test")
    maps = run_heatmaps(run, method, "test", "pred", progress=progress, cancel=cancel, **params)
    masks = run_masks(run, "test")
    classes = run.classes
    records = []
    for i, r in rows.iterrows():
        y, pred = int(r["y"]), int(r["pred"])
        p_pred = float(r[f"prob_{classes[pred]}"])
        out_lesion = outside_share(maps[i], masks["lesion"][i], threshold) if masks["has_lesion"][i] else np.nan
        out_lungs = outside_share(maps[i], masks["lung"][i], threshold) if masks["has_lung"][i] else np.nan
        reasons = []
        if y != pred:
            reasons.append(f"misclassified as {classes[pred]} (p = {p_pred:.2f}), truly {classes[y]}")
        outside = 0.0
        for share, region in ((out_lesion, "lesion"), (out_lungs, "lungs")):
            if share > mostly:  # NaN (no mask or no support) compares False
                reasons.append(f"{share:.0%} of the support lies outside the {region}")
                outside = max(outside, share)
        if not reasons:
            continue
        records.append({
            "row": i, "file": r["file"], "path": r["path"], "true_class": classes[y], "pred_class": classes[pred],
            "p_pred": p_pred, "correct": y == pred, "outside_lesion": out_lesion, "outside_lungs": out_lungs,
            "badness": (0.0 if y == pred else p_pred) + outside, "reason": "; ".join(reasons),
        })
    gallery = pd.DataFrame(records, columns=GALLERY_COLUMNS)
    return gallery.sort_values("badness", ascending=False, kind="stable", ignore_index=True)
