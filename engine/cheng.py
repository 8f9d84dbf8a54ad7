"""Cheng et al.'s Table 1: every chosen backbone trained with and without augmentation on the same data and split;
test accuracy and per-class precision / recall / F1 with 95% bootstrap intervals, the change augmentation makes
(with - without, a paired interval), training wall time and model size.

Every run of a comparison shares the base config's data, seed and split fractions, so all score the same test images;
the bootstrap draws the same resamples of them for every run (``evaluation.bootstrap_ci``'s draw), which makes the
interval of a change paired.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .config import RunConfig
from .data.dataset import Dataset
from .errors import ConfigError
from .evaluation import per_class_report, resampled_metrics, split_predictions
from .models.names import BACKBONES, MLP_HEAD_BACKBONES
from .progress import CancelCheck, Progress, step
from .runs import Run, dataset_for, get_run
from .sweep import sweep_configs

#: The scores of Cheng's Table 1 (and their Tables 2-3), as this module's tables name them.
FIGURES = ("accuracy", "precision", "recall", "F1")
#: ``class`` of the accuracy rows: it is of every class together.
ALL_CLASSES = ""
#: The two sides of the comparison: without, then with augmentation.
AUGMENT = (False, True)
#: Which of ``resampled_metrics``' scores is each per-class figure (the class taken one-vs-rest).
_RESAMPLED = {"precision": "PPV", "recall": "sensitivity", "F1": "F1"}
#: Batch-norm statistics are stored with the weights but are not parameters.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
RUN_COLUMNS = ["backbone", "depth", "fold", "augment", "run", "n_test", "epochs", "seconds", "parameters"]
TABLE_COLUMNS = [*RUN_COLUMNS, "figure", "class", "value", "low", "high"]
EFFECT_COLUMNS = ["backbone", "depth", "fold", "figure", "class", "without", "with", "change", "low", "high"]


def check_backbones(names: Iterable[str]) -> list[str]:
    """The names, each once in the order given; ConfigError naming the unknown ones and every valid backbone."""
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise ConfigError(f"Unknown backbone(s) {', '.join(map(repr, unknown))}: choose from {', '.join(BACKBONES)}.")
    if not names:
        raise ConfigError(f"No backbone given: choose from {', '.join(BACKBONES)}.")
    return names


def backbone_configs(base: RunConfig, backbones: Iterable[str], depths: Iterable[int],
                     augment: Sequence[bool] = AUGMENT, all_folds: bool = True) -> list[RunConfig]:
    """One config per backbone x augmentation x depth (x fold when ``all_folds``, else ``base``'s fold), in that
    order; everything else, data, seed and split included, is ``base``'s (its head width only for AlexNet/VGG)."""
    depths = list(depths)
    out = []
    for backbone in check_backbones(backbones):
        head = base.head_width if backbone in MLP_HEAD_BACKBONES else None
        for on in augment:
            cfg = base.replace(backbone=backbone, augment=on, head_width=head)
            out += sweep_configs(cfg, depths) if all_folds else [cfg.replace(depth=d) for d in depths]
    return out


def backbone_runs(configs: Sequence[RunConfig], ds: Dataset | None = None) -> list[Run]:
    """The trained runs of ``configs``, in their order (untrained ones left out: ``untrained_configs``)."""
    ds = ds or (dataset_for(configs[0]) if configs else None)
    return [r for r in (get_run(c, ds) for c in configs) if r is not None]


def untrained_configs(configs: Sequence[RunConfig], ds: Dataset | None = None) -> list[RunConfig]:
    """The configs not trained yet (train them with ``run_sweep`` or ``train_missing``)."""
    ds = ds or (dataset_for(configs[0]) if configs else None)
    return [c for c in configs if get_run(c, ds) is None]


def parameter_count(run: Run) -> int:
    """Parameters of the run's model, read from its weights file's header (batch-norm statistics left out)."""
    from safetensors import safe_open

    with safe_open(str(run.check().dir / "model.safetensors"), framework="numpy") as f:
        names = [k for k in f.keys() if not k.endswith(_BUFFERS)]  # noqa: SIM118 (a file, not a dict)
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in names)


def class_order(run: Run) -> list[str]:
    """The run's classes, the positive one (Cheng's covid) first, then the others in the run's order."""
    positive = run.classes[run.positive]
    return [positive, *(c for c in run.classes if c != positive)]


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Indices (n_boot, n) of the bootstrap's resamples of n test images: the draw of ``evaluation.bootstrap_ci``."""
    if n_boot < 1:
        raise ConfigError(f"Bootstrap needs n_boot >= 1, got {n_boot}.")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _scores(run: Run, n_boot: int, seed: int) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], np.ndarray]]:
    """Each (figure, class)'s value on the test split (scikit-learn) and its value on every bootstrap resample."""
    y, pred, proba = split_predictions(run)
    indices = _resamples(len(y), n_boot, seed)
    report = per_class_report(y, pred, run.classes).set_index("class")
    values = {("accuracy", ALL_CLASSES): float(np.mean(y == pred))}
    draws: dict[tuple[str, str], np.ndarray] = {}
    for name in class_order(run):
        c = run.classes.index(name)
        dist = resampled_metrics(y, pred, proba[:, c], c, indices)
        draws.setdefault(("accuracy", ALL_CLASSES), dist["ACC"])
        for figure, key in _RESAMPLED.items():
            values[(figure, name)] = float(report.loc[name, figure])
            draws[(figure, name)] = dist[key]
    return values, draws


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    """The percentile interval of the resampled values; resamples where the figure is undefined are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every resample undefined: a NaN interval, not a warning
        low, high = np.nanpercentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _run_row(run: Run) -> dict:
    """What a table says of a run besides its scores: identity, test size, epochs, wall time, parameters."""
    cfg = run.config
    return {"backbone": cfg.backbone, "depth": cfg.depth, "fold": cfg.fold, "augment": cfg.augment, "run": run.id,
            "n_test": int(run.meta["n_test"]), "epochs": int(run.result["epochs_run"]),
            "seconds": float(run.result["seconds"]), "parameters": parameter_count(run)}


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ConfigError(f"The interval needs 0 < alpha < 1, got alpha={alpha}.")


def augmentation_table(runs: Sequence[Run], *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                       progress: Progress | None = None, cancel: CancelCheck | None = None) -> pd.DataFrame:
    """One row per run and (figure, class): the test value with its percentile-bootstrap ``1 - alpha`` interval
    (columns ``TABLE_COLUMNS``; accuracy's class is ``ALL_CLASSES``, the positive class comes first)."""
    _check_alpha(alpha)
    rows = []
    for i, run in enumerate(runs):
        step(progress, cancel, i / max(len(runs), 1), f"bootstrapping {run.config.backbone} depth {run.config.depth}")
        values, draws = _scores(run, n_boot, seed)
        head = _run_row(run)
        for (figure, name), value in values.items():
            low, high = _interval(draws[(figure, name)], alpha)
            rows.append({**head, "figure": figure, "class": name, "value": value, "low": low, "high": high})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _pairs(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """(without, with augmentation) runs of the same backbone, depth and fold, in the order of their first run."""
    sides: dict[tuple, dict[bool, Run]] = {}
    for run in runs:
        cfg = run.config
        sides.setdefault((cfg.backbone, cfg.depth, cfg.fold), {}).setdefault(cfg.augment, run)
    return [(s[False], s[True]) for s in sides.values() if len(s) == 2]


def _same_test_images(a: Run, b: Run) -> bool:
    """Whether two runs scored the same test images in the same order (so their resamples pair up)."""
    files = [r.predictions.loc[r.predictions["split"] == "test", "file"].tolist() for r in (a, b)]
    return a.meta["data_fingerprint"] == b.meta["data_fingerprint"] and files[0] == files[1]


def augmentation_effect(runs: Sequence[Run], *, n_boot: int = 1000, alpha: float = 0.05,
                        seed: int = 0) -> pd.DataFrame:
    """Per backbone, depth and fold with both runs: each figure without and with augmentation, the change (with -
    without) and its paired bootstrap interval (NaN when the two runs did not score the same test images)."""
    _check_alpha(alpha)
    rows = []
    for off, on in _pairs(runs):
        (v_off, d_off), (v_on, d_on) = _scores(off, n_boot, seed), _scores(on, n_boot, seed)
        paired = _same_test_images(off, on)
        cfg = off.config
        for key, without in v_off.items():
            low, high = _interval(d_on[key] - d_off[key], alpha) if paired and key in d_on else (np.nan, np.nan)
            with_ = v_on.get(key, np.nan)
            rows.append({"backbone": cfg.backbone, "depth": cfg.depth, "fold": cfg.fold, "figure": key[0],
                         "class": key[1], "without": without, "with": with_, "change": with_ - without,
                         "low": low, "high": high})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def format_ci(value: float, low: float, high: float, signed: bool = False, digits: int = 3) -> str:
    """``0.812 [0.750, 0.862]`` (``+0.031 [...]`` when ``signed``); ``n/a`` when undefined, the value alone when its
    interval is."""
    if not np.isfinite(value):
        return "n/a"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return text
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def table1_view(table: pd.DataFrame, effect: pd.DataFrame, class_: str | None = None) -> pd.DataFrame:
    """Cheng's Table 1 as text: per backbone (depth, fold) a row without, with augmentation and the change; columns
    accuracy and ``class_``'s precision / recall / F1 (default: the first class, the positive) with their
    intervals, then training wall seconds (the change: with - without) and parameters."""
    if table.empty:
        return pd.DataFrame(columns=["backbone", "depth", "fold", "augmentation", *FIGURES, "seconds", "parameters"])
    class_ = class_ or table.loc[table["class"] != ALL_CLASSES, "class"].iloc[0]
    wanted = (table["class"] == class_) | (table["figure"] == "accuracy")
    rows = []
    for (backbone, depth, fold), group in table[wanted].groupby(["backbone", "depth", "fold"], sort=False):
        seconds = {}
        for on, side in group.groupby("augment", sort=True):
            cells = {r.figure: format_ci(r.value, r.low, r.high) for r in side.itertuples()}
            first = side.iloc[0]
            seconds[on] = float(first["seconds"])
            rows.append({"backbone": backbone, "depth": depth, "fold": fold,
                         "augmentation": "with" if on else "without", **cells, "seconds": round(seconds[on], 1),
                         "parameters": int(first["parameters"])})
        change = effect[(effect["backbone"] == backbone) & (effect["depth"] == depth) & (effect["fold"] == fold)
                        & ((effect["class"] == class_) | (effect["figure"] == "accuracy"))]
        if len(change):
            rows.append({"backbone": backbone, "depth": depth, "fold": fold, "augmentation": "change",
                         **{r.figure: format_ci(r.change, r.low, r.high, signed=True) for r in change.itertuples()},
                         "seconds": round(seconds[True] - seconds[False], 1), "parameters": None})
    out = pd.DataFrame(rows).astype({"parameters": "Int64"})
    return out[["backbone", "depth", "fold", "augmentation", *FIGURES, "seconds", "parameters"]]


def improved(effect: pd.DataFrame) -> tuple[int, int, float]:
    """Of the pairs in ``effect``: how many gained accuracy with augmentation, how many pairs, the mean change."""
    acc = effect[effect["figure"] == "accuracy"]["change"]
    return int((acc > 0).sum()), len(acc), float(acc.mean()) if len(acc) else float("nan")
