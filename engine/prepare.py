"""Prepare a live demo: compute and cache every view the pages show of every depth of an experiment.

One registry, ``STEPS``: each step computes one family of views by calling the same cached engine functions the
pages call, with the pages' default choices, so that afterwards a page reads its first views (and the choices its
pickers offer without typing) from the run's disk cache. Everything is cached by those functions: a second prepare
reads everything and computes nothing.

3-D CT runs: each step says what it does for volumes (``Step.volumes``): the same views, the 3-D views of the slice
viewer (maps and localisation of the volumetric methods), or a skip with its reason, noted in the step's notes.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from .baselines import compare_methods
from .calibration import run_calibration, run_temperature_fit
from .config import RunConfig
from .errors import Cancelled, ConfigError, DamagedRunError, LungLensError, StoreError
from .evaluation import METRICS, depth_curve, evaluate_run
from .explain.consistency import SUPPORT_THRESHOLD
from .explain.methods import METHODS, volume_methods
from .explain.report import ReportSettings, method_report, run_localisation
from .explain.runs_explain import run_heatmaps, run_image_explanation, run_masks, split_rows
from .explain.volume import is_volume_run, split_maps, volume_localisation_view, volume_masks
from .external import internal_scores
from .layers import (
    FILTER_VIEWS,
    layer_choices,
    run_activation_maps,
    run_filter_grid,
    run_guided_backprop,
    run_guided_backprop_across_layers,
    sample_rows,
)
from .lbp import lbp_refusal
from .ood import ood_reference
from .projections import METHODS as PROJECTIONS
from .projections import run_feature_sets, run_features, run_projection
from .runs import Run, dataset_for, get_run
from .surrogate import default_depth, image_choices, input_choices, surrogate_fidelity, surrogate_path, surrogate_tree
from .sweep import run_sweep, sweep_configs
from .topology import TOPOLOGY_VIEWS, run_block_change, run_topology
from .training import Progress

#: ``progress(fraction in [0, 1], what is being done)``, as engine.jobs passes it.
PrepareProgress = Callable[[float, str], None]
#: The split-level explanation methods the Support Regions page offers where it waits for a whole test split.
FAST_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.cost == "fast")
#: Explanation targets of the split views: the predicted class (Consistency, gallery) and the true class (the
#: default of "Same image across depths").
TARGETS: tuple[str, ...] = ("pred", "true")
#: Layers page: neurons per layer (fig. 9) and images of fig. 10.
N_NEURONS, N_IMAGES = 8, 8
#: Estimated seconds to train one run of the demo preset (2 CPU cores); only shapes the progress bar.
TRAIN_WEIGHT = 100.0
#: Trained models a prepare keeps loaded at once (the runs are visited in an order that reuses the last one).
MODELS_KEPT = 2


@dataclass(frozen=True)
class PrepareSettings:
    """What the steps compute beyond each page's first view; the defaults are every choice the pages offer."""

    #: (projection method, dims) pairs of the Features page (both feature sets each).
    projections: tuple[tuple[str, int], ...] = tuple((m, d) for m in PROJECTIONS for d in (2, 3))
    #: Methods whose maps of the whole test split are cached (Consistency, gallery, same image across depths).
    split_methods: tuple[str, ...] = FAST_METHODS
    #: Methods explained on the default image of "Explain an image" (predicted class, default parameters).
    image_methods: tuple[str, ...] = tuple(METHODS)
    #: Rows of the explanation report, with the report's default settings (the page's defaults).
    report_methods: tuple[str, ...] = tuple(METHODS)
    report: ReportSettings = field(default_factory=ReportSettings)
    #: How the Layers page picks its neurons: the most activated ones (its default) and a seeded random draw (seed 0).
    neuron_picks: tuple[str, ...] = ("top", "random")
    #: The support threshold of the localisation scores (the page's default).
    threshold: float = SUPPORT_THRESHOLD


DEFAULT_SETTINGS = PrepareSettings()


@dataclass(frozen=True)
class StepContext:
    """What a step gets besides its run(s): the settings, a cancel check and progress inside the step."""

    settings: PrepareSettings
    cancelled: Callable[[], bool]
    tick: PrepareProgress
    #: Views of this run the step skipped, each with its reason (``note``); prepare adds them to the step's notes.
    noted: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise Cancelled when a cancel was requested (called between chunks of a step)."""
        if self.cancelled():
            raise Cancelled("Prepare stopped on request; the views finished before the cancel stay cached.")

    def note(self, text: str) -> None:
        """Record a view the step skipped (and why) while it computes the others."""
        self.noted.append(text)


StepFn = Callable[[Any, StepContext], None]


@dataclass(frozen=True)
class Step:
    """One family of views: its name (CLI), label (progress), cost weight and ``fn(run or runs, context)``."""

    name: str
    label: str
    #: Estimated seconds per run of the demo preset (128 px, 900 images) on 2 CPU cores, with the default settings;
    #: only shapes the progress bar and time left (measured at 96 px with bench/bench_interactions.py, scaled).
    weight: float
    fn: StepFn = field(repr=False)
    #: "run": ``fn`` is called once per run; "experiment": once with every run (views across depths).
    scope: Literal["run", "experiment"] = "run"
    #: What the step does for a 3-D CT run: None: ``fn`` as for 2-D; a function: called instead of ``fn``; a string:
    #: the reason the step does not apply to volumes (the run is skipped and the reason noted).
    volumes: StepFn | str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StepResult:
    """How long one step took over the runs, and the views that do not apply (e.g. no validation split)."""

    name: str
    label: str
    seconds: float
    runs: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrepareResult:
    """What a prepare did: the runs, each step's seconds and notes, and the runs trained first."""

    runs: tuple[str, ...]
    steps: tuple[StepResult, ...]
    seconds: float
    trained: int = 0
    train_seconds: float = 0.0

    def table(self) -> pd.DataFrame:
        """One row per step: step, label, runs, seconds, notes."""
        return pd.DataFrame([{"step": s.name, "label": s.label, "runs": s.runs, "seconds": s.seconds,
                              "notes": "; ".join(s.notes)} for s in self.steps],
                            columns=["step", "label", "runs", "seconds", "notes"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: runs, trained, train_seconds, seconds and the steps."""
        return {"runs": list(self.runs), "trained": self.trained, "train_seconds": round(self.train_seconds, 3),
                "seconds": round(self.seconds, 3),
                "steps": [{"step": s.name, "label": s.label, "runs": s.runs, "seconds": round(s.seconds, 3),
                           "notes": list(s.notes)} for s in self.steps]}


# --- the pages' default choices -----------------------------------------------------------------------------------

def default_test_row(run: Run) -> int:
    """The Layers page's first image: the first test row of ``run.predictions`` (any row when there is no test)."""
    rows = np.flatnonzero((run.predictions["split"] == "test").to_numpy())
    return int(rows[0]) if len(rows) else 0


def default_layer(run: Run) -> str:
    """The conv layer the Layers page shows first: the middle one of ``layer_choices``."""
    names = [name for name, _ in layer_choices(run.load_model())]
    if not names:
        raise ConfigError(f"{run.config.backbone} has no convolutional layer to visualise.")
    return names[len(names) // 2]


def fig10_rows(run: Run, n: int = N_IMAGES, draw: int = 0) -> list[int]:
    """The Layers page's fig. 10 images: ``n`` seeded random test rows (train without a test split) of the positive
    class, in row order (``engine.layers.sample_rows``)."""
    preds = run.predictions
    return sample_rows(preds, "test" if (preds["split"] == "test").any() else "train", run.positive, n, draw)


def method_defaults(method: str) -> dict[str, Any]:
    """The parameters the Support Regions page passes for ``method`` by default: its knobs' default values."""
    return {knob: default for knob, (_label, _choices, default) in METHODS[method].knobs.items()}


# --- the steps ------------------------------------------------------------------------------------------------------

def _evaluation(run: Run, ctx: StepContext) -> None:
    evaluate_run(run)
    internal_scores(run)


def _depth_curves(runs: Sequence[Run], ctx: StepContext) -> None:
    for metric in METRICS:
        depth_curve(runs, metric)


def _calibration(run: Run, ctx: StepContext) -> None:
    run_calibration(run, temperature=False)
    run_temperature_fit(run)
    run_calibration(run, temperature=True)


def _baselines(run: Run, ctx: StepContext) -> None:
    note = compare_methods(run).attrs.get("note")
    if note:
        ctx.note(note)


def _projections(run: Run, ctx: StepContext) -> None:
    run_features(run, "deep")
    pairs = ctx.settings.projections
    for i, (method, dims) in enumerate(pairs):
        ctx.check()
        ctx.tick(i / len(pairs), f"{method} {dims}-D")
        for feature_set in run_feature_sets(run):
            run_projection(run, feature_set, method, dims)
    if lbp_refusal(run):
        ctx.note(lbp_refusal(run))


def _filters(run: Run, ctx: StepContext) -> None:
    for view in FILTER_VIEWS:
        run_filter_grid(run, view)


def _neurons(run: Run, ctx: StepContext) -> None:
    row, layer, rows = default_test_row(run), default_layer(run), fig10_rows(run)
    run_activation_maps(run, row, layer)
    for mode in ctx.settings.neuron_picks:
        ctx.check()
        run_guided_backprop(run, row, layer, N_NEURONS, mode, 0)
        if rows:
            run_guided_backprop_across_layers(run, rows, mode, 0)


def _surrogate(run: Run, ctx: StepContext) -> None:
    for inputs in input_choices(run):
        ctx.check()
        table = surrogate_fidelity(run, inputs)
        depth = default_depth(table)
        surrogate_tree(run, depth, inputs)
        surrogate_path(run, depth, inputs, next(iter(image_choices(run))))


def _topology(run: Run, ctx: StepContext) -> None:
    for view in TOPOLOGY_VIEWS:
        ctx.check()
        run_topology(run, view)
    run_block_change(run)


def _split_maps(targets: tuple[str, ...]) -> StepFn:
    def compute(run: Run, ctx: StepContext) -> None:
        run_masks(run, "test")
        work = [(m, t) for m in ctx.settings.split_methods for t in targets]
        for i, (method, target) in enumerate(work):
            ctx.check()
            ctx.tick(i / len(work), f"{METHODS[method].label} ({target})")
            run_heatmaps(run, method, "test", target)
    return compute


def _localisation(run: Run, ctx: StepContext) -> None:
    for method in ctx.settings.split_methods:
        ctx.check()
        for target in TARGETS:
            run_localisation(run, ctx.settings.threshold, method, target)


def _image(run: Run, ctx: StepContext) -> None:
    if split_rows(run, "test").empty:
        raise LungLensError(f"Run {run.id} has no test images to explain.")
    methods = ctx.settings.image_methods
    for i, method in enumerate(methods):
        ctx.check()
        ctx.tick(i / len(methods), METHODS[method].label)
        run_image_explanation(run, 0, "test", method, "pred", **method_defaults(method))


def _report(run: Run, ctx: StepContext) -> None:
    methods = ctx.settings.report_methods
    for i, method in enumerate(methods):
        def step(fraction: float, text: str, i: int = i) -> None:
            ctx.tick((i + fraction) / len(methods), text)

        ctx.check()
        method_report(run, method, ctx.settings.report, progress=step, cancel=ctx.cancelled)


def _ood(run: Run, ctx: StepContext) -> None:
    ood_reference(run)


def _volume_methods(ctx: StepContext, compute: Callable[[str], Any]) -> None:
    """``compute(method)`` for every volumetric method; one that does not apply to the run is noted, not fatal."""
    methods = volume_methods()
    for i, method in enumerate(methods):
        ctx.check()
        ctx.tick(i / len(methods), METHODS[method].label)
        try:
            compute(method)
        except _FATAL:
            raise
        except LungLensError as exc:
            ctx.note(f"{METHODS[method].label}: {exc}")


def _volume_maps(run: Run, ctx: StepContext) -> None:
    """The slice viewer's maps: the test volumes' masks and maps by every volumetric method (predicted class)."""
    volume_masks(run, "test")
    _volume_methods(ctx, lambda method: split_maps(run, method, "test", "pred"))


def _volume_localisation(run: Run, ctx: StepContext) -> None:
    """The slice viewer's localisation in 3-D by every volumetric method (the page's default threshold)."""
    _volume_methods(ctx, lambda method: volume_localisation_view(run, method, "test",
                                                                 threshold=ctx.settings.threshold))


#: Why a 2-D-only view is skipped for a 3-D CT run.
NOT_FOR_VOLUMES = "{what} takes 2-D images and does not apply to 3-D CT volumes"


#: Every step, in the order prepare runs them: cheap, often-seen views first, so a cancelled prepare leaves those.
STEPS: tuple[Step, ...] = (
    Step("evaluation", "Test-split evaluation (Performance)", 0.2, _evaluation),
    Step("depth-curves", "Metric vs depth (Performance)", 0.05, _depth_curves, "experiment"),
    Step("calibration", "Calibration and temperature (Performance)", 0.1, _calibration),
    Step("baselines", "LBP and deep-feature SVM baselines (Performance)", 15.0, _baselines),
    Step("projections", "Feature projections (Features)", 30.0, _projections),
    Step("filters", "First-layer filters (Layers)", 1.0, _filters),
    Step("neurons", "Guided backpropagation and activations (Layers)", 8.0, _neurons),
    Step("surrogate", "Decision-tree surrogate (Layers)", 4.0, _surrogate),
    Step("topology", "Network topology (Layers)", 4.0, _topology),
    Step("heatmaps", "Explanation maps of the test split (Support Regions)", 40.0, _split_maps(("pred",)),
         volumes=_volume_maps),
    Step("across-depths", "Same image across depths (Support Regions)", 40.0, _split_maps(("true",)),
         volumes=NOT_FOR_VOLUMES.format(what="The same image across depths")),
    Step("localisation", "Consistency degree (Support Regions)", 6.0, _localisation, volumes=_volume_localisation),
    Step("image", "Explain an image: the default image (Support Regions)", 30.0, _image,
         volumes=NOT_FOR_VOLUMES.format(what="Explain an image (every method)")),
    Step("ood", "Reference for 'unlike the training data' (Diagnose)", 8.0, _ood,
         volumes=NOT_FOR_VOLUMES.format(what="Diagnose a new image")),
    Step("report", "Explanation report (Support Regions)", 2400.0, _report,
         volumes=NOT_FOR_VOLUMES.format(what="The explanation report (faithfulness and sanity checks)")),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def select_steps(names: Sequence[str] | None = None) -> tuple[Step, ...]:
    """The steps named (in registry order), or all; ConfigError naming the valid ones for an unknown name."""
    if names is None:
        return STEPS
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown:
        raise ConfigError(f"Unknown prepare step(s) {', '.join(map(repr, unknown))}: choose from "
                          f"{', '.join(STEP_NAMES)}.")
    if not names:
        raise ConfigError(f"No prepare step chosen: name at least one of {', '.join(STEP_NAMES)}.")
    return tuple(s for s in STEPS if s.name in names)


def plan_weight(steps: Sequence[Step], n_runs: int) -> float:
    """The summed cost weight of running ``steps`` on ``n_runs`` runs (estimated demo seconds)."""
    return sum(s.weight for s in steps) * n_runs


class _LoadedRun(Run):
    """A run whose model and images are loaded once for a whole prepare (the engine functions it is passed to
    load them on every call): each caller gets its own copy of the model, as from ``Run.load_model``."""

    _models: OrderedDict[str, Any]
    _arrays: dict[tuple, np.ndarray]

    def _model(self, which: str, load: Callable[[], Any]) -> Any:
        key = f"{self.id}:{which}"
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = load()
            while len(self._models) > 2 * MODELS_KEPT:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return copy.deepcopy(model)

    def load_model(self) -> Any:
        """A fresh copy of the run's trained model (eval mode, CPU)."""
        return self._model("trained", lambda: Run.load_model(self))

    def initial_model(self) -> Any:
        """A fresh copy of the run's model before fine-tuning."""
        return self._model("initial", lambda: Run.initial_model(self))

    def images(self, split: str | None = None) -> np.ndarray:
        """As ``Run.images``, read once per data and preprocessing (every depth of an experiment shares them)."""
        key = (self.meta["data_fingerprint"], self.config.image_size, self.config.clahe)
        if key not in self._arrays:
            self._arrays[key] = Run.images(self)
        arr = self._arrays[key]
        return arr.copy() if split is None else arr[(self.predictions["split"] == split).to_numpy()]


def _loaded(runs: Sequence[Run]) -> list[Run]:
    """The runs with their models and images shared for one prepare (external views and the like are kept as is)."""
    models: OrderedDict[str, Any] = OrderedDict()
    arrays: dict[tuple, np.ndarray] = {}
    out: list[Run] = []
    for run in runs:
        if type(run) is Run:
            run = _LoadedRun(run.dir)
            run._models, run._arrays = models, arrays
        out.append(run)
    return out


#: Errors that stop a prepare; any other LungLensError means a view does not apply to a run (no validation split, a
#: backbone without filters): it is noted and skipped.
_FATAL = (Cancelled, DamagedRunError, StoreError)


def _step_fn(step: Step, target: Run | Sequence[Run]) -> StepFn | str:
    """What ``step`` runs on ``target`` (a run, or every run of an experiment step): its 3-D variant or skip reason
    (``Step.volumes``) for a 3-D CT run, else ``step.fn``."""
    first = target[0] if isinstance(target, Sequence) else target
    return step.volumes if step.volumes is not None and is_volume_run(first) else step.fn


def _depth_name(run: Run) -> str:
    cfg = run.config
    return f"depth {cfg.depth}" + (f" fold {cfg.fold}" if cfg.folds > 1 else "")


def prepare_runs(runs: Sequence[Run], steps: Sequence[str] | None = None, progress: PrepareProgress | None = None,
                 cancel: Callable[[], bool] | None = None, settings: PrepareSettings | None = None) -> PrepareResult:
    """Compute and cache every view of ``runs`` (one experiment's depths), step by step; see ``STEPS``.

    ``progress(fraction, text)`` follows the steps' cost weights; ``cancel()`` returning True raises Cancelled
    before the next step (and inside long steps between chunks): what finished stays cached. A view that does not
    apply to a run (e.g. calibration without a validation split) is skipped and named in its step's notes.
    """
    chosen = select_steps(steps)
    settings = settings or DEFAULT_SETTINGS
    runs = list(runs)
    if not runs:
        raise ConfigError("No trained run to prepare: train the experiment first (python -m engine sweep, or Train "
                          "on Home).")
    ids = tuple(r.id for r in runs)
    runs = _loaded(runs)
    report = progress or (lambda _f, _t: None)
    cancelled = cancel or (lambda: False)
    total = plan_weight(chosen, len(runs)) or 1.0
    done, results, t_all = 0.0, [], time.perf_counter()
    for i, step in enumerate(chosen):
        # every other step visits the runs backwards, so that a step starts with the run the last one ended with
        units = [runs] if step.scope == "experiment" else runs[::-1] if i % 2 else runs
        unit_weight = step.weight * len(runs) / len(units)
        notes, t_step = [], time.perf_counter()
        for k, target in enumerate(units):
            where = "every depth" if step.scope == "experiment" else f"{_depth_name(target)} ({k + 1}/{len(units)})"

            def tick(fraction: float, text: str, base: float = done, weight: float = unit_weight,
                     where: str = where, label: str = step.label) -> None:
                report(min((base + min(max(fraction, 0.0), 1.0) * weight) / total, 1.0),
                       f"{label} · {where} · {text}")

            ctx = StepContext(settings, cancelled, tick)
            ctx.check()
            tick(0.0, "…")
            fn = _step_fn(step, target)
            try:
                if isinstance(fn, str):
                    ctx.note(fn)
                else:
                    fn(target, ctx)
            except _FATAL:
                raise
            except LungLensError as exc:
                ctx.note(str(exc))
            notes.extend(f"{where.split(' (')[0]}: {text}" for text in ctx.noted)
            done += unit_weight
        results.append(StepResult(step.name, step.label, time.perf_counter() - t_step, len(runs), tuple(notes)))
    report(1.0, "Every view is ready")
    return PrepareResult(ids, tuple(results), time.perf_counter() - t_all)


def experiment_runs(config: RunConfig, depths: Sequence[int]) -> list[Run | None]:
    """The experiment's run per depth (fold 0: the one the pages show), None where it is not trained."""
    ds = dataset_for(config)
    return [get_run(cfg, ds) for cfg in sweep_configs(config, depths) if cfg.fold == 0]


def prepare_experiment(config: RunConfig, depths: Sequence[int], steps: Sequence[str] | None = None,
                       progress: PrepareProgress | None = None, cancel: Callable[[], bool] | None = None,
                       settings: PrepareSettings | None = None,
                       status: Callable[[str], None] | None = None) -> PrepareResult:
    """Train the experiment's missing runs (every depth and fold), then ``prepare_runs`` on each depth's run.

    The pages show fold 0 of a cross-validated depth, so that is the run prepared. Cancelling during training stops
    at the next batch; the interrupted run resumes from its checkpoint next time.
    """
    chosen = select_steps(steps)
    report = progress or (lambda _f, _t: None)
    cancelled = cancel or (lambda: False)
    configs = sweep_configs(config, depths)
    ds = dataset_for(config)
    missing = [cfg for cfg in configs if get_run(cfg, ds) is None]
    n_runs = sum(cfg.fold == 0 for cfg in configs)
    train_weight = TRAIN_WEIGHT * len(missing)
    total = train_weight + plan_weight(chosen, n_runs) or 1.0
    t0 = time.perf_counter()
    if missing:
        shares = [0.0] * len(missing)

        def progress_for(i: int, cfg: RunConfig):
            def on_batch(p: Progress) -> None:
                if cancelled():
                    raise Cancelled("Prepare stopped on request while training; the run resumes from its "
                                    "checkpoint next time.")
                if not p.phase.startswith("pretrain"):
                    shares[i] = p.fraction
                if p.phase.startswith("pretrain"):  # once per backbone and size, shared by every run
                    where = f"pretraining the built-in backbone (epoch {p.epoch} of {p.epochs})"
                else:
                    where = f"depth {cfg.depth}" + (f" fold {cfg.fold}" if cfg.folds > 1 else "")
                report(train_weight * sum(shares) / len(missing) / total,
                       f"Training run {i + 1} of {len(missing)} · {where}")
            return on_batch

        run_sweep(missing, progress_for, status=status)
    train_seconds = time.perf_counter() - t0
    runs = [r for r in experiment_runs(config, depths) if r is not None]
    base = train_weight / total

    def scaled(fraction: float, text: str) -> None:
        report(base + (1 - base) * fraction, text)

    result = prepare_runs(runs, [s.name for s in chosen], scaled, cancel, settings)
    return replace(result, trained=len(missing), train_seconds=train_seconds)
