"""Sweeps: the same experiment at several fine-tuning depths (and folds), trained where not cached."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .config import RunConfig
from .data.dataset import Dataset
from .errors import ConfigError, DamagedRunError
from .runs import Run, dataset_for, get_run, train_run
from .training import Progress, ProgressFn

#: Phase of the last report a sweep sends for a run once it is trained (its ``fraction`` is 1).
RUN_DONE = "done"
ProgressFactory = Callable[[int, RunConfig], ProgressFn | None]
StatusFn = Callable[[str], None]


@dataclass(frozen=True)
class SweepRow:
    """One run of a sweep and whether it came from the cache."""

    run: Run
    cached: bool
    wall_seconds: float

    def as_dict(self) -> dict:
        """The row the CLI prints: identity, best epoch, test criteria, wall time, cached."""
        return {**self.run.summary(), "wall_seconds": round(self.wall_seconds, 2), "cached": self.cached}


@dataclass(frozen=True)
class Job:
    """A run of a sweep that is not cached: its place in the sweep, its config and the data the driver resolved."""

    index: int
    config: RunConfig
    dataset: Dataset


class Executor(Protocol):
    """Where a sweep's uncached runs train: in this process (InProcessExecutor) or on Ray (engine.ray_executor)."""

    def train(self, jobs: list[Job], progress: ProgressFactory | None, status: StatusFn | None,
              options: Mapping[str, Any]) -> Iterator[tuple[Job, Run, float]]:
        """Train every job (``options``: keywords for ``train_run``); yield job, run and wall seconds as each ends."""
        ...


class InProcessExecutor:
    """Trains the jobs one after the other in this process."""

    def train(self, jobs: list[Job], progress: ProgressFactory | None, status: StatusFn | None,
              options: Mapping[str, Any]) -> Iterator[tuple[Job, Run, float]]:
        """Train every job in order, yielding each as it finishes."""
        for job in jobs:
            t0 = time.perf_counter()
            run = train_run(job.config, progress(job.index, job.config) if progress else None, ds=job.dataset,
                            status=status, **options)
            yield job, run, time.perf_counter() - t0


def executor_from_env() -> Executor | None:
    """A Ray executor for ``$LUNGLENS_RAY_ADDRESS`` (``local``: a local Ray instance), or None when it is unset.

    ``$LUNGLENS_RAY_GPUS_PER_RUN`` and ``$LUNGLENS_RAY_CPUS_PER_RUN`` set the resources of each run.
    """
    address = os.environ.get("LUNGLENS_RAY_ADDRESS", "").strip()
    if not address:
        return None
    from .ray_executor import RayExecutor  # Ray is an optional dependency

    def number(name: str) -> float | None:
        text = os.environ.get(name, "").strip()
        try:
            return float(text) if text else None
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number: give e.g. 1 or 0.5, or unset it.") from None

    return RayExecutor(None if address == "local" else address, gpus_per_run=number("LUNGLENS_RAY_GPUS_PER_RUN"),
                       cpus_per_run=number("LUNGLENS_RAY_CPUS_PER_RUN"))


def sweep_configs(base: RunConfig, depths: Iterable[int], folds: int | None = None) -> list[RunConfig]:
    """One config per depth (and per fold when ``folds`` > 1)."""
    folds = folds or base.folds
    return [base.replace(depth=d, folds=folds, fold=f) for d in depths for f in range(folds)]


def run_sweep(configs: list[RunConfig], progress: ProgressFactory | None = None, status: StatusFn | None = None,
              executor: Executor | None = None, retrain_damaged: bool = False) -> list[SweepRow]:
    """Get every config from the cache or train it with ``executor`` (default: in this process, in order).

    ``progress(i, cfg)`` gives a per-run progress callback; each trained run ends with a report of phase ``RUN_DONE``.
    A cached run with damaged files raises DamagedRunError (naming the file), or is trained again when
    ``retrain_damaged`` is set; a row is ``cached`` unless this sweep trained it (not when another process did).
    """
    rows: dict[int, SweepRow] = {}
    jobs: list[Job] = []
    datasets: dict[tuple, Dataset] = {}
    for i, cfg in enumerate(configs):
        t0 = time.perf_counter()
        data_key = (cfg.data, cfg.builtin_per_class, cfg.confounder_class, cfg.confounder_prob, cfg.skip_bad)
        if data_key not in datasets:
            datasets[data_key] = dataset_for(cfg)
        ds = datasets[data_key]
        try:
            cached = get_run(cfg, ds)
        except DamagedRunError:
            if not retrain_damaged:
                raise
            cached = None
        if cached is not None:
            rows[i] = SweepRow(cached, True, time.perf_counter() - t0)
        else:
            jobs.append(Job(i, cfg, ds))
    options: dict[str, Any] = {"retrain_damaged": True} if retrain_damaged else {}
    for job, run, seconds in (executor or InProcessExecutor()).train(jobs, progress, status, options):
        rows[job.index] = SweepRow(run, not run.trained_now, seconds)
        report = progress(job.index, job.config) if progress else None
        if report is not None:
            report(Progress(1, 1, 1, 1, RUN_DONE))
    return [rows[i] for i in range(len(configs))]
