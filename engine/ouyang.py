"""Ouyang et al.'s results: the four training variants side by side (their Table II), per-fold ROC curves (fig. 4)
and scores by infection size (their Table III), for any experiment whose data have lesion and lung masks."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import RunConfig
from .crossval import fold_metric_summary, fold_metrics, fold_roc, fold_runs, fold_spread, require_folds
from .data.dataset import Dataset
from .errors import LungLensError
from .evaluation import metric_table, split_predictions
from .explain.consistency import SUPPORT_THRESHOLD
from .progress import CancelCheck, Progress

#: Infection / lung volume groups of their Table III.
SIZE_GROUPS: tuple[tuple[str, float, float], ...] = (("< 0.005", 0.0, 0.005), ("0.005-0.030", 0.005, 0.030),
                                                     ("> 0.030", 0.030, np.inf))
#: Criteria of their Table II, as ``engine.evaluation.METRICS`` names them.
TABLE_METRICS = ("AUC", "ACC", "sensitivity", "specificity", "F1")


@dataclass(frozen=True)
class Variant:
    """One row of their Table II: a name and how it changes the experiment's config."""

    name: str
    attention: bool
    sampling: str


VARIANTS: tuple[Variant, ...] = (
    Variant("RN + US", False, "uniform"),
    Variant("Attention RN + US", True, "uniform"),
    Variant("Attention RN + SS", True, "size-balanced"),
    Variant("Attention RN + DS", True, "dual"),
)


def variant_configs(base: RunConfig) -> dict[str, RunConfig]:
    """The experiment of each variant: ``base`` with its attention and sampling."""
    return {v.name: base.replace(attention=v.attention, sampling=v.sampling) for v in VARIANTS}


def variant_runs(base: RunConfig, ds: Dataset | None = None) -> dict[str, list]:
    """Each variant's runs, one per fold (None where a fold is not trained)."""
    return {name: fold_runs(cfg, ds) for name, cfg in variant_configs(base).items()}


def trained_variants(base: RunConfig, ds: Dataset | None = None) -> dict[str, list]:
    """The variants whose every fold is trained, with their runs (the tables show these; ``missing_configs`` the
    rest)."""
    return {name: runs for name, runs in variant_runs(base, ds).items() if all(r is not None for r in runs)}


def missing_configs(base: RunConfig, ds: Dataset | None = None) -> list[RunConfig]:
    """The configs of every fold of every variant that is not trained yet (train them with ``run_sweep``)."""
    from .crossval import fold_configs

    configs = variant_configs(base)
    return [c for name, runs in variant_runs(base, ds).items() for c, r in zip(fold_configs(configs[name]), runs)
            if r is None]


def variant_table(base: RunConfig, ds: Dataset | None = None) -> pd.DataFrame:
    """Their Table II: one row per trained variant, each criterion's mean and sd over the folds (sd NaN for
    hold-out)."""
    rows = []
    for name, runs in trained_variants(base, ds).items():
        summary = fold_metric_summary(fold_metrics(runs))
        row: dict = {"variant": name, "folds": int(summary.loc["n", "AUC"])}
        for m in TABLE_METRICS:
            row[m] = float(summary.loc["mean", m])
            row[f"{m} sd"] = float(summary.loc["sd", m])
        rows.append(row)
    return pd.DataFrame(rows)


def variant_rocs(base: RunConfig, ds: Dataset | None = None) -> dict[str, dict]:
    """Per-fold ROC curves of each trained variant (``crossval.fold_roc``), as their fig. 4."""
    return {name: fold_roc(runs) for name, runs in trained_variants(base, ds).items()}


def size_group(ratios: np.ndarray) -> np.ndarray:
    """The Table III group name of each infection ratio ("" where the ratio is unknown)."""
    out = np.full(len(ratios), "", dtype=object)
    for name, lo, hi in SIZE_GROUPS:
        out[(ratios >= lo) & (ratios < hi)] = name
    return out


def _group_scores(run, ratios: np.ndarray) -> list[dict]:
    """Criteria of one run's test split within each infection-size group."""
    test = (run.predictions["split"] == "test").to_numpy()
    y, pred, proba = split_predictions(run, "test")
    groups = size_group(ratios[test])
    rows = []
    for name, _, _ in SIZE_GROUPS:
        inside = groups == name
        if not inside.any():
            continue
        values = metric_table(y[inside], pred[inside], proba[inside], run.classes, run.positive)
        n_pos = int((y[inside] == run.positive).sum())
        rows.append({"group": name, "n": int(inside.sum()), "n_positive": n_pos, "n_negative": int(inside.sum()) - n_pos,
                     **{m: values[m] for m in ("AUC", "ACC", "sensitivity", "specificity")}})
    return rows


def size_table(base: RunConfig, ratios: np.ndarray, ds: Dataset | None = None) -> pd.DataFrame:
    """Their Table III: per trained variant and infection-size group, each criterion's mean and sd over the folds.

    ``ratios`` are the infection / lung ratios of the dataset's items in ``Dataset.items`` order
    (``engine.guidance.infection_ratios``). AUC is NaN in a group holding one class only.
    """
    rows = []
    for name, runs in trained_variants(base, ds).items():
        per_fold = [_group_scores(run, ratios) for run in require_folds(runs)]
        for group, _, _ in SIZE_GROUPS:
            found = [r for fold in per_fold for r in fold if r["group"] == group]
            if not found:
                continue
            row: dict = {"variant": name, "group": group, "n": found[0]["n"], "n_positive": found[0]["n_positive"],
                         "n_negative": found[0]["n_negative"]}
            for m in ("AUC", "ACC", "sensitivity", "specificity"):
                spread = fold_spread([r[m] for r in found])
                row[m], row[f"{m} sd"] = spread["mean"], spread["sd"]
            rows.append(row)
    return pd.DataFrame(rows)


def format_mean_sd(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The table with each criterion as "0.912 ± 0.015" (the sd left out where it is undefined), as the paper prints."""
    out = table.drop(columns=[f"{m} sd" for m in metrics]).copy()
    for m in metrics:
        out[m] = [("–" if not np.isfinite(v) else f"{v:.3f}" + (f" ± {s:.3f}" if np.isfinite(s) else ""))
                  for v, s in zip(table[m], table[f"{m} sd"])]
    return out


def attention_effect(base: RunConfig, method: str = "gradcam", threshold: float = SUPPORT_THRESHOLD, *,
                     ds: Dataset | None = None, progress: Progress | None = None,
                     cancel: CancelCheck | None = None) -> pd.DataFrame:
    """What the attention loss does to the support regions: the plain and the attention run (uniform sampling, fold
    0) side by side, as ``shortcut.support_comparison`` (consistency with the lesion; share on a shortcut marker)."""
    from .runs import get_run
    from .shortcut import support_comparison

    configs = {"plain": base.replace(attention=False, sampling="uniform", fold=0),
               "attention": base.replace(attention=True, sampling="uniform", fold=0)}
    runs = {name: get_run(cfg, ds) for name, cfg in configs.items()}
    missing = [name for name, run in runs.items() if run is None]
    if missing:
        raise LungLensError(f"The {' and '.join(missing)} run of {base.backbone} at depth {base.depth} is not trained: "
                            "train the variants first (Performance › Ouyang, or `python -m engine ouyang ...`).")
    return support_comparison(runs, method, threshold, progress=progress, cancel=cancel)
