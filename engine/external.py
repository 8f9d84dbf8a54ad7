"""External validation: a trained run scored on another site's folder of images, without training.

The folder goes through the same reader and preprocessing as the run's own data; classes are matched by name (or by
a ``SRC=DST`` mapping) and images of classes the run does not know are counted and left out. ``external_view`` wraps
the run so that the external images are its "test" split: every explanation function that takes a run and a split
(heatmaps, masks, the localisation scores) works on them unchanged, with its results cached beside the run's own.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from .data.arrays import image_array
from .data.dataset import Dataset
from .data.folder import load_folder
from .errors import ConfigError, DataError
from .evaluation import confusion, metric_table, per_class_report, resampled_metrics
from .explain.inference import predict_proba
from .runs import Run
from .store import cached_arrays, cached_json, stable_hash

#: The JSON keys of ``metrics`` and ``ci``, and the name each has in ``engine.evaluation.METRICS``.
METRIC_KEYS = {"acc": "ACC", "balanced_acc": None, "sensitivity": "sensitivity", "specificity": "specificity",
               "ppv": "PPV", "npv": "NPV", "f1": "F1", "auc": "AUC"}
#: The explanation method whose localisation scores ``evaluate_external`` reports where the data has lesion masks.
EXPLAIN_METHOD = "gradcam"
EXTERNAL_SPLIT = "test"


def parse_mapping(items: Sequence[str] | None) -> dict[str, str]:
    """``["non_covid=pneumonia", ...]`` as {source class: run class}; ConfigError for a malformed item."""
    out: dict[str, str] = {}
    for item in items or ():
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ConfigError(f"--map {item!r} is not SRC=DST: give the folder's class name, '=', and the run's class "
                              "name, e.g. --map non_covid=pneumonia")
        if src.strip() in out:
            raise ConfigError(f"--map gives class {src.strip()!r} twice; map each folder class once")
        out[src.strip()] = dst.strip()
    return out


def _check_mapping(run: Run, mapping: Mapping[str, str]) -> None:
    bad = sorted({dst for dst in mapping.values() if dst not in run.classes})
    if bad:
        raise ConfigError(f"--map names class(es) {', '.join(bad)} that run {run.id} does not have; its classes are "
                          f"{', '.join(run.classes)}")


class ExternalRun(Run):
    """``run`` with its test split replaced by the images of an external folder (of the run's classes).

    Model, config, classes and positive class are the run's. ``predictions`` holds one row per external image kept
    (split "test"), with the model's prediction and probabilities; ``artifact`` paths lie in a folder of the run's
    artifacts keyed by the data's fingerprint and the class mapping, so nothing mixes with the run's own results.
    """

    def __init__(self, run: Run, source: Dataset, mapping: Mapping[str, str] | None = None):
        mapping = dict(mapping or {})
        _check_mapping(run, mapping)
        super().__init__(run.dir)
        self.base = run
        self.source = source
        self.mapping = dict(mapping)
        mapped = source.items["label"].map(lambda c: self.mapping.get(c, c))
        self._keep = mapped.isin(run.classes).to_numpy()
        self._labels = mapped.to_numpy()

    @property
    def cache_key(self) -> str:
        """A key unique to the run, the external data and the class mapping (for caches that key on a string)."""
        return f"{self.id}@{self.data_key}"

    @property
    def trained_run(self) -> Run:
        """The run whose model scores the external images."""
        return self.base

    @property
    def data_key(self) -> str:
        """The external data's fingerprint and mapping, hashed."""
        return stable_hash({"data": self.source.fingerprint, "map": sorted(self.mapping.items())}, 12)

    def artifact(self, name: str) -> Path:
        """Path for a result derived from this run on the external data."""
        return self.base.artifact(f"external/{self.data_key}/{name}")

    @property
    def left_out(self) -> dict[str, int]:
        """Images per folder class the run does not know (after the mapping), left out of every score."""
        counts = self.source.items.loc[~self._keep, "label"].value_counts()
        return {str(c): int(k) for c, k in sorted(counts.items())}

    def _all_images(self) -> np.ndarray:
        return image_array(self.source, self.config.image_size, clahe=self.config.clahe)[self._keep]

    def images(self, split: str | None = None) -> np.ndarray:
        """Preprocessed uint8 external images (N, S, S) of the run's classes, in ``predictions`` order."""
        if split not in (None, EXTERNAL_SPLIT):
            return np.zeros((0, self.config.image_size, self.config.image_size), dtype=np.uint8)
        return self._all_images()

    @cached_property
    def proba(self) -> np.ndarray:
        """The model's class probabilities of every kept external image, computed once and cached."""
        if not self._keep.any():
            raise DataError(f"{self.source.root} has no image of the classes of run {self.id} "
                            f"({', '.join(self.classes)}); its classes are {', '.join(self.source.classes)}. Map them "
                            "with --map SRC=DST")

        def compute() -> dict[str, np.ndarray]:
            return {"proba": predict_proba(self.load_model(), self._all_images()).astype(np.float64)}

        proba = cached_arrays(self.artifact("proba.npz"), compute)["proba"]
        if proba.shape != (int(self._keep.sum()), len(self.classes)):
            raise DataError(f"The cached predictions {self.artifact('proba.npz')} do not fit the external data; "
                            "delete that file to compute them again")
        return proba

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """One row per kept external image: file, split, path, label, group, masks, y, pred, probabilities."""
        items = self.source.items[self._keep].reset_index(drop=True)
        proba = self.proba
        rows = pd.DataFrame({"file": items["file"], "split": EXTERNAL_SPLIT, "path": items["path"],
                             "source_label": items["label"], "label": self._labels[self._keep],
                             "group": items["group"], "mask": items["mask"], "lung_mask": items["lung_mask"]})
        rows["y"] = rows["label"].map({c: i for i, c in enumerate(self.classes)}).astype(int)
        rows["pred"] = proba.argmax(1)
        for i, c in enumerate(self.classes):
            rows[f"prob_{c}"] = proba[:, i]
        return rows


def external_dataset(data: str | Path, *, skip_bad: bool = False) -> Dataset:
    """An external folder read like a training folder, but one class or a single image of a class is enough."""
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"External data folder {root} does not exist: give a folder laid out as ROOT/images/<class>/* "
                        "(or ROOT/<class>/*, or with a manifest.csv)")
    return load_folder(root, skip_bad=skip_bad, min_per_class=1, min_classes=1)


def external_view(run: Run, data: str | Path, mapping: Mapping[str, str] | None = None, *,
                  skip_bad: bool = False) -> ExternalRun:
    """The run seen through an external folder (see ``ExternalRun``); classes matched by name or ``mapping``."""
    return ExternalRun(run, external_dataset(data, skip_bad=skip_bad), mapping)


#: Class names other sites use for one of the built-in classes (COVID-QU-Ex's non_covid are other pneumonias).
#: Common class names a run may call otherwise, each with its candidates in order of preference.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "non_covid": ("pneumonia",), "noncovid": ("pneumonia",), "non-covid": ("pneumonia",),
    "viral_pneumonia": ("viral", "pneumonia"), "bacterial_pneumonia": ("bacterial", "pneumonia"),
    "viral": ("pneumonia",), "bacterial": ("pneumonia",),
    "healthy": ("normal",), "negative": ("normal",),
    "covid19": ("covid",), "covid-19": ("covid",), "covid_19": ("covid",),
}


def suggest_mapping(source_classes: Sequence[str], run_classes: Sequence[str]) -> dict[str, str]:
    """A starting mapping for the folder's classes the run lacks, from common synonyms (the user may change it)."""
    out = {}
    for c in source_classes:
        target = next((t for t in SYNONYMS.get(c.lower(), ()) if t in run_classes), None)
        if c not in run_classes and target is not None:
            out[c] = target
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity (an undefined score) as None, so the CLI prints standard JSON."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def _balanced_resampled(y: np.ndarray, pred: np.ndarray, n_classes: int, indices: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each resample (rows of ``indices``): mean recall over the classes present in it."""
    t, p = y[indices], pred[indices]
    recalls = []
    for c in range(n_classes):
        support = (t == c).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            recalls.append(np.where(support > 0, ((t == c) & (p == c)).sum(1) / support, np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def score_predictions(y: np.ndarray, pred: np.ndarray, proba: np.ndarray, classes: Sequence[str], positive: int, *,
                      n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Metrics of the positive class with percentile-bootstrap intervals, per-class scores and the confusion matrix.

    ``metrics``: acc, balanced_acc, sensitivity, specificity, ppv, npv, f1, auc (positive class one-vs-rest) and
    ``per_class``; ``ci``: [low, high] of each metric (None where undefined, e.g. AUC with one class present).
    """
    y, pred, proba = np.asarray(y, dtype=int), np.asarray(pred, dtype=int), np.asarray(proba, dtype=float)
    table = metric_table(y, pred, proba, classes, positive)
    indices = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    dist = resampled_metrics(y, pred, proba[:, positive], positive, indices)
    metrics: dict[str, Any] = {}
    ci: dict[str, list[float | None]] = {}
    for key, name in METRIC_KEYS.items():
        if name is None:
            value = float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) else float("nan")
            samples = _balanced_resampled(y, pred, len(classes), indices)
        else:
            value, samples = table[name], dist[name]
        metrics[key] = _finite(value)
        samples = samples[np.isfinite(samples)]
        ci[key] = ([float(v) for v in np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])]
                   if samples.size and np.isfinite(value) else [None, None])
    report = per_class_report(y, pred, classes)
    metrics["per_class"] = [{"class": r["class"], "precision": _finite(r["precision"]), "recall": _finite(r["recall"]),
                             "f1": _finite(r["F1"]), "support": int(r["support"])} for r in report.to_dict("records")]
    counts, _ = confusion(y, pred, len(classes))
    return {"n": len(y), "metrics": metrics, "ci": ci, "confusion": counts.tolist(),
            "ci_level": 1 - alpha, "n_boot": n_boot}


def internal_scores(run: Run, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``score_predictions`` on the run's own test split (the internal side of the generalisation gap), cached."""
    def compute() -> dict[str, Any]:
        rows = run.predictions[run.predictions["split"] == "test"]
        proba = rows[[f"prob_{c}" for c in run.classes]].to_numpy(dtype=float)
        return score_predictions(rows["y"].to_numpy(), rows["pred"].to_numpy(), proba, run.classes, run.positive,
                                 n_boot=n_boot, seed=seed)

    return cached_json(run.artifact(f"internal-scores-boot{n_boot}-seed{seed}.json"), compute)


def _calibration(view: ExternalRun, y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    from .calibration import apply_temperature, calibration_summary, run_temperature

    out = calibration_summary(y, proba, view.positive)
    try:
        temperature = run_temperature(view.base)
    except DataError:
        return {**out, "temperature": None}
    scaled = calibration_summary(y, apply_temperature(proba, temperature), view.positive)
    return {**out, "temperature": temperature, "ece_scaled": scaled["ece"], "brier_scaled": scaled["brier"]}


def _operating_points(view: ExternalRun, y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Each threshold preset chosen on the run's own validation split, applied to the external images."""
    from .calibration import THRESHOLD_PRESETS, operating_point, threshold_preset

    rows = view.base.predictions[view.base.predictions["split"] == "val"]
    positive = view.positive
    val_true = rows["y"].to_numpy() == positive
    val_score = rows[f"prob_{view.classes[positive]}"].to_numpy(dtype=float)
    out: dict[str, Any] = {}
    for name in THRESHOLD_PRESETS:
        try:
            threshold = threshold_preset(name, val_true, val_score)
        except (ConfigError, DataError) as exc:  # e.g. no positive image in the validation split
            out[name] = {"error": str(exc)}
            continue
        out[name] = operating_point(y == positive, proba[:, positive], threshold)
    return out


def _explanation(view: ExternalRun, method: str) -> dict[str, Any] | None:
    """The explanation report's localisation scores on the external images with a lesion mask (None without)."""
    from .explain.report import localisation_summary, run_localisation

    if not (view.predictions["mask"] != "").any():
        return None
    table = run_localisation(view, method=method)
    if table.empty:
        return None
    summary = localisation_summary(table)
    keys = ("n", "n_empty", "consistency", "consistency_ci", "median", "lung_area_matched_baseline",
            "lung_area_matched_baseline_ci", "random_baseline", "random_baseline_ci", "pointing_game",
            "pointing_chance", "iou_otsu", "relevance_mass", "beats_chance")
    return {"method": method, **{k: summary[k] for k in keys}}


def evaluate_external(run: Run, data: str | Path, mapping: Mapping[str, str] | None = None, *,
                      skip_bad: bool = False, **options: Any) -> dict[str, Any]:
    """The run scored on an external folder (``evaluate_view`` of ``external_view``), cached."""
    return evaluate_view(external_view(run, data, mapping, skip_bad=skip_bad), **options)


def evaluate_view(view: ExternalRun, *, explanations: bool = True, method: str = EXPLAIN_METHOD,
                  n_boot: int = 1000, seed: int = 0, status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Metrics with 95% bootstrap CIs, confusion, calibration, the share of images unlike the training data and,
    where the folder has lesion masks, the explanation localisation scores of a run on external images.

    Cached per run, data fingerprint, class mapping and settings.
    """
    say = status or (lambda _msg: None)
    run = view.base
    key = stable_hash({"boot": n_boot, "seed": seed, "explain": method if explanations else None}, 10)

    def compute() -> dict[str, Any]:
        from .ood import OOD_PERCENTILE, check_unlike

        say(f"Predicting {len(view.predictions)} images")
        rows = view.predictions
        y, pred, proba = rows["y"].to_numpy(), rows["pred"].to_numpy(), view.proba
        out: dict[str, Any] = {
            "run": run.id, "data": str(view.source.root), "data_fingerprint": view.source.fingerprint,
            "mapping": view.mapping, "n": len(rows), "n_left_out": int(sum(view.left_out.values())),
            "left_out": view.left_out, "skipped": [list(s) for s in view.source.skipped],
            "classes": list(run.classes), "positive": run.classes[run.positive],
            "class_counts": {c: int((y == i).sum()) for i, c in enumerate(run.classes)},
        }
        out.update(score_predictions(y, pred, proba, run.classes, run.positive, n_boot=n_boot, seed=seed))
        say("Calibration")
        out["calibration"] = _calibration(view, y, proba)
        out["operating_points"] = _operating_points(view, y, proba)
        say("Comparing each image with the training data")
        unlike = check_unlike(run, view.images(EXTERNAL_SPLIT))
        out["unlike"] = {"method": unlike["method"], "percentile": OOD_PERCENTILE, "threshold": unlike["threshold"],
                         "flagged": np.asarray(unlike["unlike"], dtype=bool).astype(int).tolist(),
                         "distance": np.asarray(unlike["distance"], dtype=float).tolist()}
        out["unlike_share"] = float(np.mean(unlike["unlike"]))
        if explanations:
            say(f"Explanation scores ({method}) on the images with lesion masks")
        out["explanation"] = _explanation(view, method) if explanations else None
        return _strict_json(out)

    return cached_json(view.artifact(f"evaluation-{key}.json"), compute)


def external_rows(view: ExternalRun, result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per external image scored: file, classes, prediction, probabilities and the unlike-training flag."""
    run = view.base
    rows = view.predictions[["file", "source_label", "label", "y", "pred"] + [f"prob_{c}" for c in run.classes]].copy()
    rows.insert(5, "predicted", np.asarray(run.classes)[rows["pred"].to_numpy()])
    rows["unlike_training"] = np.asarray(result["unlike"]["flagged"], dtype=bool)
    rows["feature_distance"] = result["unlike"]["distance"]
    return rows


def generalisation_gap(internal: Mapping[str, Any], external: Mapping[str, Any]) -> pd.DataFrame:
    """One row per metric: internal and external value with their intervals, and the gap (external - internal)."""
    rows = []
    for key in METRIC_KEYS:
        a, b = internal["metrics"][key], external["metrics"][key]
        rows.append({"metric": key, "internal": a, "internal_low": internal["ci"][key][0],
                     "internal_high": internal["ci"][key][1], "external": b, "external_low": external["ci"][key][0],
                     "external_high": external["ci"][key][1],
                     "gap": None if a is None or b is None else b - a})
    return pd.DataFrame(rows)


def gap_by_depth(runs: Sequence[Run], source: Dataset, mapping: Mapping[str, str] | None, metric: str) -> pd.DataFrame:
    """For "metric vs fine-tuning depth" with two lines: each run's internal test and external value with CIs."""
    if metric not in METRIC_KEYS:
        raise ConfigError(f"Unknown metric {metric!r}; choose one of {', '.join(METRIC_KEYS)}.")
    rows = []
    for run in runs:
        internal = internal_scores(run)
        external = evaluate_view(ExternalRun(run, source, mapping), explanations=False)
        for side, result in (("internal", internal), ("external", external)):
            value = result["metrics"][metric]
            low, high = result["ci"][metric]
            rows.append({"run": run.id, "backbone": run.config.backbone, "depth": run.config.depth, "side": side,
                         "value": np.nan if value is None else value, "low": np.nan if low is None else low,
                         "high": np.nan if high is None else high})
    df = pd.DataFrame(rows, columns=["run", "backbone", "depth", "side", "value", "low", "high"])
    return df.sort_values(["side", "depth"], kind="stable").reset_index(drop=True)
