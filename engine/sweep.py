"""Sweeps: the same experiment at several fine-tuning depths (and folds), trained where not cached."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import RunConfig
from .data.dataset import Dataset
from .runs import Run, dataset_for, get_run, train_run
from .training import ProgressFn


@dataclass(frozen=True)
class SweepRow:
    """One run of a sweep and whether it came from the cache."""

    run: Run
    cached: bool
    wall_seconds: float

    def as_dict(self) -> dict:
        """The row the CLI prints: identity, best epoch, test criteria, wall time, cached."""
        return {**self.run.summary(), "wall_seconds": round(self.wall_seconds, 2), "cached": self.cached}


def sweep_configs(base: RunConfig, depths: Iterable[int], folds: int | None = None) -> list[RunConfig]:
    """One config per depth (and per fold when ``folds`` > 1)."""
    folds = folds or base.folds
    return [base.replace(depth=d, folds=folds, fold=f) for d in depths for f in range(folds)]


def run_sweep(configs: list[RunConfig], progress: Callable[[int, RunConfig], ProgressFn | None] | None = None,
              status: Callable[[str], None] | None = None) -> list[SweepRow]:
    """Get or train every config in order; ``progress(i, cfg)`` gives a per-run progress callback."""
    rows: list[SweepRow] = []
    datasets: dict[tuple, Dataset] = {}
    for i, cfg in enumerate(configs):
        t0 = time.perf_counter()
        data_key = (cfg.data, cfg.builtin_per_class, cfg.confounder_class, cfg.confounder_prob, cfg.skip_bad)
        if data_key not in datasets:
            datasets[data_key] = dataset_for(cfg)
        ds = datasets[data_key]
        cached = get_run(cfg, ds)
        run = cached or train_run(cfg, progress(i, cfg) if progress else None, ds=ds, status=status)
        rows.append(SweepRow(run, cached is not None, time.perf_counter() - t0))
    return rows
