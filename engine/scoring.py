"""Scoring a trained run on another folder of images: the criteria only (``evaluate`` gives the full read-out)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError
from .external import external_view
from .metrics import classification_metrics
from .runs import Run


def score_run(run: Run, data: str, *, skip_bad: bool = False) -> tuple[dict[str, float], pd.DataFrame]:
    """The run's criteria on every image of the folder ``data`` (all of it is test data), and one row per image.

    The folder's class names must be classes of the run; images are preprocessed exactly as the run's were.
    """
    view = external_view(run, data, skip_bad=skip_bad)
    if view.left_out:
        raise DataError(f"{view.source.root} has class(es) {', '.join(view.left_out)} that run {run.id} does not know "
                        f"(its classes: {', '.join(run.classes)}); rename those class folders or 'class' values to "
                        "match, or use `python -m engine evaluate ... --map SRC=DST`")
    p = view.predictions
    metrics = classification_metrics(p["y"].to_numpy(), p["pred"].to_numpy(), len(run.classes), run.positive, view.proba)
    rows = p[["file", "label", "y", "pred"]].assign(predicted=np.asarray(run.classes)[p["pred"].to_numpy()])
    for i, c in enumerate(run.classes):
        rows[f"prob_{c}"] = view.proba[:, i]
    return {**metrics, "n": len(rows)}, rows
