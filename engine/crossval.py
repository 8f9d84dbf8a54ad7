"""k-fold cross-validation across runs: per-fold ROC curves on the shared test split, mean ± sd AUC, per-fold
histories and the metric-vs-depth curve as the fold mean with its spread.

With ``folds > 1`` every fold's run is trained on the other folds, early-stopped on its own fold and scored on the
same test split (engine.data.splits), so its test predictions can be set side by side. Lee et al. and Wan et al. use
five folds; Ouyang et al. (fig. 4, Table II) report per-fold ROC curves and mean ± std over the fold models. The spread
is the sample standard deviation over folds (``ddof = 1``, ``SD_DDOF``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .config import RunConfig
from .errors import ConfigError, DataError, LungLensError
from .evaluation import METRICS, depth_curve, metric_table, roc_curves, split_predictions

if TYPE_CHECKING:
    from .data.dataset import Dataset
    from .runs import Run

#: Delta degrees of freedom of the standard deviation over folds: 1, the sample standard deviation.
SD_DDOF = 1
#: The statistics ``fold_spread`` gives, in display order.
SPREAD = ("mean", "sd", "min", "max", "n")


class MissingFoldsError(LungLensError):
    """Some folds of a cross-validated experiment are not trained, so no statistic over folds can be given."""


def fold_configs(cfg: RunConfig) -> list[RunConfig]:
    """The config of every fold of ``cfg``'s experiment, fold 0 first (one config when ``cfg`` is hold-out)."""
    return [cfg.replace(fold=f) for f in range(cfg.folds)]


def fold_runs(experiment: RunConfig | Run, ds: Dataset | None = None) -> list[Run | None]:
    """Every fold's run of the experiment of a config or run, in fold order; None where a fold is not trained."""
    from .runs import get_run  # runs imports torch: keep this module importable without it

    cfg = experiment if isinstance(experiment, RunConfig) else experiment.config
    return [get_run(c, ds) for c in fold_configs(cfg)]


def _describe(cfg: RunConfig) -> str:
    return f"{cfg.backbone} at depth {cfg.depth} ({cfg.folds} folds)"


def require_folds(runs: Sequence[Run | None]) -> list[Run]:
    """``runs`` when they are all folds of one experiment in fold order; MissingFoldsError or ConfigError if not."""
    runs = list(runs)
    if not runs:
        raise ConfigError("No runs given: pass the runs of every fold of one experiment, fold 0 first.")
    present = [r for r in runs if r is not None]
    if not present:
        raise MissingFoldsError(f"None of the {len(runs)} folds is trained yet: train them on Home (Train) or with "
                                f"`python -m engine sweep --folds {max(len(runs), 2)} ...`.")
    cfg = present[0].config
    if len(runs) != cfg.folds:
        raise ConfigError(f"{len(runs)} run(s) given for {_describe(cfg)}: pass one per fold, fold 0 first.")
    missing = [f for f, r in enumerate(runs) if r is None]
    if missing:
        what = (f"fold {missing[0]} (numbered from 0) is not trained yet: train it" if len(missing) == 1 else
                f"folds {', '.join(map(str, missing))} (numbered from 0) are not trained yet: train them")
        raise MissingFoldsError(
            f"Cross-validation of {_describe(cfg)} needs every fold, and {what} on Home (Train), or with "
            f"`python -m engine sweep --folds {cfg.folds} --depths {cfg.depth}` and the same settings.")
    same, data = cfg.key_dict() | {"fold": 0}, present[0].meta["data_fingerprint"]
    for f, run in enumerate(runs):
        other = run.config
        if other.fold != f:
            raise ConfigError(f"Run {run.id} is fold {other.fold}, given as fold {f}: pass the folds in fold order.")
        if other.key_dict() | {"fold": 0} != same or run.meta["data_fingerprint"] != data:
            raise ConfigError(f"Run {run.id} is not a fold of the same experiment as {present[0].id} (its settings "
                              "or data differ): pass the folds of one experiment.")
    return runs


def fold_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample sd (``SD_DDOF``), min and max of the defined (finite) values, and ``n``, how many are defined.

    All NaN when none is defined; sd NaN with a single defined value.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": np.nan, "sd": np.nan, "min": np.nan, "max": np.nan, "n": 0}
    sd = float(np.std(x, ddof=SD_DDOF)) if len(x) > SD_DDOF else np.nan
    return {"mean": float(np.mean(x)), "sd": sd, "min": float(np.min(x)), "max": float(np.max(x)), "n": int(len(x))}


def _shared_test(runs: Sequence[Run]) -> None:
    """Raise DataError unless every fold's test split holds the same images in the same order."""
    def files(run: Run) -> np.ndarray:
        rows = run.predictions[run.predictions["split"] == "test"]
        return rows["file"].astype(str).to_numpy()

    first = files(runs[0])
    for run in runs[1:]:
        if not np.array_equal(files(run), first):
            raise DataError(f"Folds 0 and {run.config.fold} of {_describe(run.config)} were tested on different "
                            "images, so their test scores cannot be set side by side: train the folds again from "
                            "the same data.")


def fold_roc(runs: Sequence[Run | None]) -> dict[str, Any]:
    """Per-fold ROC curve of the positive class on the shared test split and mean ± sd of the fold AUCs (JSON-able).

    Keys: positive, n_folds, n_test, ddof, folds (a dict per fold: fold, run, fpr, tpr, auc), auc (``fold_spread``
    of the fold AUCs).
    """
    runs = require_folds(runs)
    _shared_test(runs)
    positive = runs[0].classes[runs[0].positive]
    folds = []
    for run in runs:
        y, _, proba = split_predictions(run, "test")
        curves = roc_curves(y, proba, run.classes)
        if positive not in curves:
            raise DataError(f"The test split of {_describe(run.config)} has no image of {positive!r}, or only such "
                            "images: its ROC curve is undefined. Add images of every class to the data.")
        fpr, tpr, auc_value = curves[positive]
        folds.append({"fold": run.config.fold, "run": run.id, "fpr": fpr.tolist(), "tpr": tpr.tolist(),
                      "auc": auc_value})
    return {"positive": positive, "n_folds": len(runs), "n_test": int(len(y)), "ddof": SD_DDOF, "folds": folds,
            "auc": fold_spread([f["auc"] for f in folds])}


def fold_metrics(runs: Sequence[Run | None]) -> pd.DataFrame:
    """One row per fold: fold, AUC and the other ``METRICS`` on the shared test split, best_epoch, n_test, run."""
    runs = require_folds(runs)
    _shared_test(runs)
    rows = []
    for run in runs:
        y, pred, proba = split_predictions(run, "test")
        values = metric_table(y, pred, proba, run.classes, run.positive)
        rows.append({"fold": run.config.fold, "AUC": values["AUC"], **{m: values[m] for m in METRICS if m != "AUC"},
                     "best_epoch": int(run.result["best_epoch"]), "n_test": int(len(y)), "run": run.id})
    return pd.DataFrame(rows)


def fold_metric_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``fold_spread`` of every metric column of ``fold_metrics``' table: rows mean, sd, min, max, n."""
    columns = [m for m in ("AUC", *(m for m in METRICS if m != "AUC")) if m in table.columns]
    return pd.DataFrame({m: fold_spread(table[m].to_numpy(dtype=float)) for m in columns}, index=list(SPREAD))


def fold_histories(runs: Sequence[Run | None]) -> dict[int, pd.DataFrame]:
    """Each fold's training history (one row per epoch), by fold."""
    return {run.config.fold: run.history for run in require_folds(runs)}


def fold_epoch_curve(runs: Sequence[Run | None], column: str) -> pd.DataFrame:
    """``column`` of the histories per epoch: columns epoch, fold_0 … fold_k-1, then mean, sd, n over the folds.

    A fold that stopped early has no value after its last epoch; mean, sd and n are over the folds with a value at
    that epoch (sd with ``SD_DDOF``; NaN with fewer than two).
    """
    histories = fold_histories(runs)
    known = sorted(set.intersection(*(set(h.columns) for h in histories.values())) - {"epoch"})
    if column not in known:
        raise ConfigError(f"No history column {column!r} in every fold; choose one of {', '.join(known)}.")
    wide = pd.concat({f"fold_{f}": h.set_index("epoch")[column].astype(float) for f, h in histories.items()}, axis=1)
    wide = wide.sort_index()
    stats = [fold_spread(row) for row in wide.to_numpy()]
    out = wide.reset_index().rename(columns={"index": "epoch"})
    for key in ("mean", "sd", "n"):
        out[key] = [s[key] for s in stats]
    return out


def fold_depth_curve(groups: Sequence[Sequence[Run | None]], metric: str) -> pd.DataFrame:
    """Test ``metric`` per (backbone, depth) as the mean over its folds with the spread (Lee fig. 5, k-fold).

    ``groups`` holds each (backbone, depth)'s runs, one per fold. Columns: backbone, depth, folds, n (folds where the
    metric is defined), value (mean), sd, min, max, low / high (mean ∓ sd, the error bars), values (per fold), runs,
    best (the highest mean, the first on ties). Per-run values are ``evaluation.depth_curve``'s.
    """
    groups = [require_folds(g) for g in groups]
    columns = ["backbone", "depth", "folds", "n", "value", "sd", "min", "max", "low", "high", "values", "runs", "best"]
    per_run = depth_curve([r for g in groups for r in g], metric)  # also rejects an unknown metric
    value = dict(zip(per_run["run"], per_run["value"]))
    rows = []
    for runs in groups:
        values = [float(value[r.id]) for r in runs]
        s = fold_spread(values)
        rows.append({"backbone": runs[0].config.backbone, "depth": runs[0].config.depth, "folds": len(runs),
                     "n": s["n"], "value": s["mean"], "sd": s["sd"], "min": s["min"], "max": s["max"],
                     "low": s["mean"] - s["sd"], "high": s["mean"] + s["sd"], "values": values,
                     "runs": [r.id for r in runs], "best": False})
    df = pd.DataFrame(rows, columns=columns)
    df = df.sort_values(["backbone", "depth"], kind="stable").reset_index(drop=True)
    if df["value"].notna().any():
        df.loc[df["value"].astype(float).idxmax(), "best"] = True
    return df
