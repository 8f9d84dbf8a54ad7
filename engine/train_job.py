"""Training a sweep's missing runs as one background job: one progress fraction over every run (and the one-time
pretraining), weighted by each part's estimated time so the time left does not jump, and a cancel that stops at the
next batch.

Cancelling is safe for the run store: a run's files are written atomically and its ``result.json``, which marks it
finished, last; an interrupted run has none, so it is neither listed nor damaged, and it resumes from the checkpoint of
its last finished epoch when trained again.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .config import RunConfig
from .errors import Cancelled
from .estimate import TrainingEstimate
from .sweep import RUN_DONE, SweepRow, executor_from_env, run_sweep
from .training import Progress, ProgressFn

#: How the run store announces pretraining (``runs._train_and_store``), whether or not the backbone is cached.
PRETRAIN_STATUS = "Pretraining the built-in"
#: The two members of a dual-sampling run (``runs._dual_store``), in the order it trains them; their reports' phases
#: are prefixed ``member k/2:``.
DUAL_MEMBERS = ("uniform", "size-balanced")


def member_phase(phase: str) -> tuple[int | None, str]:
    """``("member 2/2:train")`` -> (2, "train"): the dual-sampling member (from 1) a report is of, and its own phase;
    (None, phase) for a report of an ordinary run."""
    head, sep, rest = phase.partition(":")
    if sep and head.startswith("member ") and head.endswith(f"/{len(DUAL_MEMBERS)}"):
        return int(head.removeprefix("member ").split("/")[0]), rest
    return None, phase


def run_name(cfg: RunConfig) -> str:
    """``depth 2``, or ``depth 2, fold 3`` in a cross-validated experiment."""
    return f"depth {cfg.depth}" + (f", fold {cfg.fold}" if cfg.folds > 1 else "")


class SweepProgress:
    """Turns the per-run reports of a sweep into one fraction and one line: runs done, then the current part."""

    def __init__(self, configs: Sequence[RunConfig], run_weights: Sequence[float], pretrain_weight: float,
                 report: Callable[[float, str], None]):
        self.configs, self.report = list(configs), report
        self.weights = [max(float(w), 1e-9) for w in run_weights]
        self.pretrain_weight = max(float(pretrain_weight), 0.0)
        self.shares = [0.0] * len(self.configs)
        self.pretrain_share = 0.0
        self.trained: set[int] = set()
        self._lock = threading.Lock()  # the Ray executor reports from its own thread

    @property
    def fraction(self) -> float:
        """Estimated share of the whole job done: each part's done share weighted by its estimated time."""
        done = self.pretrain_weight * self.pretrain_share + sum(w * s for w, s in zip(self.weights, self.shares))
        return min(1.0, done / (self.pretrain_weight + sum(self.weights)))

    def on(self, i: int, p: Progress) -> None:
        """Take one report of run ``i`` and hand on the job's fraction and line."""
        with self._lock:
            cfg = self.configs[i]
            member, phase = member_phase(p.phase)
            if phase.startswith("pretrain"):  # happens once, before the first run that needs the backbone
                self.pretrain_share = p.fraction
                where = f"pretraining the built-in {cfg.backbone} backbone once: epoch {p.epoch} of {p.epochs}"
            else:
                self.pretrain_share = 1.0  # a run trains only once the backbone is there
                # A dual-sampling run trains its members one after the other: each is half of the run.
                self.shares[i] = p.fraction if member is None else (member - 1 + p.fraction) / len(DUAL_MEMBERS)
                if p.phase == RUN_DONE:
                    self.trained.add(i)
                name = run_name(cfg) if member is None else \
                    f"{run_name(cfg)} ({DUAL_MEMBERS[member - 1]} member of the dual-sampling run)"
                where = (f"{name} trained" if p.phase == RUN_DONE
                         else f"{name}: epoch {p.epoch} of {p.epochs}, batch {p.batch} of {p.batches}")
            self.report(self.fraction, f"{len(self.trained)} of {len(self.configs)} runs trained · {where}")

    def say(self, message: str) -> None:
        """Show a status message of the sweep (loading, preparing images) until the next report."""
        if message.startswith(PRETRAIN_STATUS):  # said before every run, pretraining or not: reports show it once
            return
        with self._lock:
            self.report(self.fraction, f"{len(self.trained)} of {len(self.configs)} runs trained · "
                                       f"{message[:1].lower()}{message[1:]}")


def train_missing(configs: Sequence[RunConfig], *, progress: Callable[[float, str], None] | None = None,
                  cancel: Callable[[], bool] | None = None, estimate: TrainingEstimate | None = None,
                  retrain_damaged: bool = False) -> list[SweepRow]:
    """Train ``configs`` (those cached are taken from the cache) with ``run_sweep`` and ``$LUNGLENS_RAY_ADDRESS``'s
    executor, reporting ``progress(fraction, text)``; ``cancel()`` returning True stops at the next batch by raising
    ``Cancelled``. ``estimate`` (of these configs) weights the runs and the pretraining; without it they weigh alike.
    """
    configs = list(configs)
    weights = estimate.run_seconds if estimate is not None and len(estimate.run_seconds) == len(configs) else None
    tracker = SweepProgress(configs, weights or [1.0] * len(configs),
                            estimate.pretrain_seconds if weights else 0.0, progress or (lambda _f, _t: None))
    stop = cancel or (lambda: False)

    def check() -> None:
        if stop():
            raise Cancelled("Training stopped on request: the runs trained before stay stored; the interrupted "
                            "run resumes from its last finished epoch when trained again.")

    def progress_for(i: int, _cfg: RunConfig) -> ProgressFn:
        def on_report(p: Progress) -> None:
            check()
            tracker.on(i, p)
        return on_report

    def status(message: str) -> None:
        check()
        tracker.say(message)

    tracker.report(0.0, f"0 of {len(configs)} runs trained · loading the data")
    return run_sweep(configs, progress_for, status=status, executor=executor_from_env(),
                     retrain_damaged=retrain_damaged)
