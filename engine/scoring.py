"""Scoring a trained run on another folder of images (an external test set, e.g. one handed over by another site)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data.arrays import image_array
from .data.sources import load_dataset
from .errors import DataError
from .explain.inference import predict_proba
from .metrics import classification_metrics
from .runs import Run


def score_run(run: Run, data: str, *, skip_bad: bool = False) -> tuple[dict[str, float], pd.DataFrame]:
    """The run's criteria on every image of the folder ``data`` (all of it is test data), and one row per image.

    The folder's class names must be classes of the run; images are preprocessed exactly as the run's were.
    """
    ds = load_dataset(data, skip_bad=skip_bad)
    unknown = sorted(set(ds.classes) - set(run.classes))
    if unknown:
        raise DataError(f"{ds.root} has class(es) {', '.join(unknown)} that run {run.id} does not know (its classes: "
                        f"{', '.join(run.classes)}); rename those class folders or 'class' values to match")
    y = ds.items["label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
    images = image_array(ds, run.config.image_size, clahe=run.config.clahe)
    proba = predict_proba(run.load_model(), images)
    pred = proba.argmax(1)
    metrics = classification_metrics(y, pred, len(run.classes), run.positive, proba)
    rows = ds.items[["file", "label"]].assign(y=y, pred=pred, predicted=np.asarray(run.classes)[pred])
    for i, c in enumerate(run.classes):
        rows[f"prob_{c}"] = proba[:, i]
    return {**metrics, "n": int(len(y))}, rows
