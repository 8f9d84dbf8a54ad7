"""The explanation report: every registered method scored on a run's split for localisation (against lesion masks
and baselines scored the same way), faithfulness (deletion, insertion, ROAD) and sanity (cascading randomisation),
with 95% bootstrap intervals and seconds per image; cached per run, method and settings."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.transforms import to_model_input
from ..errors import LungLensError
from ..store import cached_json, read_json, stable_hash
from .consistency import SUPPORT_THRESHOLD
from .faithfulness import deletion_insertion, road
from .localisation import THRESHOLDS, beats_chance, localisation_scores, mean_ci
from .methods import METHODS, Method, attribute, get_method, is_empty
from ..errors import Cancelled  # noqa: F401 - prepare and tests import it here too
from ..progress import check_cancel, scaled
from .runs_explain import run_masks, split_rows
from .sanity import cascading_randomisation, sanity_verdict

if TYPE_CHECKING:
    from ..runs import Run

#: ``progress(fraction in [0, 1], what is being done)``.
ReportProgress = Callable[[float, str], None]

#: Scores whose mean the report gives with a 95% bootstrap interval (key -> higher is better).
SCORES: dict[str, bool] = {
    "consistency": True, "iou": True, "dice": True, "iou_otsu": True, "dice_otsu": True, "pointing_game": True,
    "relevance_mass": True, "relevance_rank": True, "deletion_auc": False, "insertion_auc": True, "road": True,
}
#: Baselines next to the scores they are compared with.
BASELINES = ("lung_area_matched_baseline", "random_baseline", "random_iou_otsu", "random_pointing_game",
             "lung_pointing_baseline", "random_relevance_mass", "lung_relevance_mass_baseline",
             "random_relevance_rank", "deletion_random_auc", "insertion_random_auc")
#: The columns of ``explanation_report`` (the CLI's JSON keys), in order.
REPORT_COLUMNS = (
    "method", "label", "kind", "citation", "n_images", "n_lesion_images", "empty_share", "consistency",
    "consistency_ci", "lung_area_matched_baseline", "lung_area_matched_baseline_ci", "random_baseline",
    "random_baseline_ci", "beats_chance", "consistency_curve", "iou", "dice", "iou_otsu", "iou_otsu_ci",
    "dice_otsu", "pointing_game", "pointing_game_ci", "relevance_mass", "relevance_mass_ci", "relevance_rank",
    "deletion_auc", "deletion_auc_ci", "insertion_auc", "insertion_auc_ci", "deletion_random_auc",
    "insertion_random_auc", "road", "road_ci", "sanity_ssim", "sanity_spearman", "sanity_pass", "sanity_steps",
    "seconds_per_image", "threshold",
)


@dataclass(frozen=True)
class ReportSettings:
    """What the report computes on how many images; part of each cached entry's key."""

    split: str = "test"
    threshold: float = SUPPORT_THRESHOLD
    faithfulness_images: int = 32
    road_images: int = 16
    sanity_images: int = 8
    deletion_steps: int = 32
    seed: int = 0


def _ci(values: Sequence[float], seed: int) -> tuple[float, list[float]]:
    mean, lo, hi = mean_ci(values, seed=seed)
    return mean, [lo, hi]


def report_rows(run: Run, split: str) -> np.ndarray:
    """The rows of ``split`` the report scores, in a fixed seeded order: images with a lesion mask first.

    Slow methods score a prefix of this order, so their images are a subset of the fast methods' images.
    """
    masks = run_masks(run, split)
    rng = np.random.default_rng(0)
    with_lesion = rng.permutation(np.flatnonzero(masks["has_lesion"]))
    without = rng.permutation(np.flatnonzero(~masks["has_lesion"]))
    return np.concatenate([with_lesion, without]).astype(int)


def _row_key(m: Method, params: dict[str, Any], settings: ReportSettings) -> str:
    """Cache key of one report row: the method, its parameters, the settings and how many images it scores."""
    return stable_hash({"method": m.name, "params": params, "settings": asdict(settings),
                        "report_images": m.report_images}, 12)


def method_report(run: Run, method: str, settings: ReportSettings = ReportSettings(), *,
                  progress: ReportProgress | None = None, cancel: Callable[[], bool] | None = None,
                  **params: Any) -> dict[str, Any]:
    """One method's row of the report for ``run`` (computed once, then read from the run's cache)."""
    m = get_method(method)
    params = m.params_for(params)
    key = _row_key(m, params, settings)

    def compute() -> dict[str, Any]:
        return _compute(run, m.name, settings, params, progress or (lambda _f, _t: None), cancel)

    return cached_json(run.artifact(f"explain/report-{m.name}-{key}.json"), compute)


def _compute(run: Run, method: str, s: ReportSettings, params: dict[str, Any], progress: ReportProgress,
             cancel: Callable[[], bool] | None) -> dict[str, Any]:
    m = METHODS[method]
    rows = split_rows(run, s.split)
    order = report_rows(run, s.split)
    if m.report_images is not None:
        order = order[: m.report_images]
    if len(order) == 0:
        raise LungLensError(f"Run {run.id} has no {s.split} images to explain.")
    masks = run_masks(run, s.split)
    images = run.images(s.split)[order]
    targets = rows["pred"].to_numpy()[order].astype(int)
    model = run.load_model()
    x = to_model_input(images)

    maps, seconds, chunk = [], 0.0, 8
    for i in range(0, len(x), chunk):
        check_cancel(cancel)
        progress(0.6 * i / len(x), f"{m.label}: maps {i}/{len(x)}")
        t0 = time.perf_counter()
        maps.append(attribute(model, x[i : i + chunk], method, targets[i : i + chunk], **params))
        seconds += time.perf_counter() - t0
    maps = np.concatenate(maps)

    lesion_idx = [j for j, r in enumerate(order) if masks["has_lesion"][r]]
    local = [localisation_scores(maps[j], masks["lesion"][order[j]],
                                 masks["lung"][order[j]] if masks["has_lung"][order[j]] else None,
                                 s.threshold, seed=int(order[j])) for j in lesion_idx]
    table = pd.DataFrame(local)
    col = (lambda k: table[k].to_numpy(dtype=float)) if len(table) else (lambda k: np.array([], float))

    nf = min(s.faithfulness_images, len(x))
    parts = []
    for i in range(0, nf, 4):  # a few images at a time, so that a cancel is heard within seconds
        check_cancel(cancel)
        progress(0.62 + 0.13 * i / nf, f"{m.label}: deletion and insertion {i}/{nf}")
        j = min(i + 4, nf)
        parts.append(deletion_insertion(model, x[i:j], maps[i:j], targets[i:j], n_steps=s.deletion_steps, seed=s.seed))
    faith = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    nr = min(s.road_images, len(x))
    road_scores = []
    for i in range(0, nr, 4):
        check_cancel(cancel)
        progress(0.75 + 0.1 * i / nr, f"{m.label}: ROAD {i}/{nr}")
        j = min(i + 4, nr)
        road_scores.append(road(model, x[i:j], maps[i:j], targets[i:j], seed=s.seed))
    road_scores = np.concatenate(road_scores)
    progress(0.85, f"{m.label}: sanity check (cascading randomisation)")
    ns = min(s.sanity_images, len(x))

    def explain(mdl: Any, xb: Any, tb: Any) -> np.ndarray:
        check_cancel(cancel)  # once per randomisation step
        return attribute(mdl, xb, method, tb, **params)

    cascade = cascading_randomisation(model, x[:ns], targets[:ns], explain, seed=s.seed)

    out: dict[str, Any] = {"method": m.name, "label": m.label, "kind": m.kind, "citation": m.citation,
                           "n_images": int(len(x)), "n_lesion_images": len(lesion_idx),
                           "empty_share": float(is_empty(maps).mean()), "threshold": s.threshold,
                           "seconds_per_image": seconds / len(x)}
    for name in ("consistency", "iou_otsu", "pointing_game", "relevance_mass"):
        out[name], out[f"{name}_ci"] = _ci(col(name), s.seed)
    for name in ("iou", "dice", "dice_otsu", "relevance_rank"):
        out[name] = mean_ci(col(name), seed=s.seed)[0]
    for name in ("lung_area_matched_baseline", "random_baseline"):
        out[name], out[f"{name}_ci"] = _ci(col(name), s.seed)
    for name in BASELINES[2:8]:
        out[name] = mean_ci(col(name), seed=s.seed)[0]
    out["beats_chance"] = bool(len(table)) and beats_chance(
        col("consistency"), [col("lung_area_matched_baseline"), col("random_baseline")], seed=s.seed)
    curves = (np.array(table["consistency_curve"].tolist(), float) if len(table)
              else np.full((0, len(THRESHOLDS)), np.nan))
    out["consistency_curve"] = {f"{t:g}": (float(np.nanmean(curves[:, k])) if len(curves) else float("nan"))
                                for k, t in enumerate(THRESHOLDS)}
    for name in ("deletion_auc", "insertion_auc"):
        out[name], out[f"{name}_ci"] = _ci(faith[name], s.seed)
    for name in ("deletion_random_auc", "insertion_random_auc"):
        out[name] = float(np.mean(faith[name]))
    out["road"], out["road_ci"] = _ci(road_scores, s.seed)
    out.update(sanity_verdict(cascade))
    out["sanity_steps"] = cascade.to_dict(orient="records")
    progress(1.0, f"{m.label}: done")
    return _plain(out)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python numbers, NaN kept (JSON's NaN, read back by Python)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def explanation_report(run: Run, methods: Sequence[str] | None = None, settings: ReportSettings = ReportSettings(),
                       *, progress: ReportProgress | None = None, cancel: Callable[[], bool] | None = None,
                       params: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per method (``REPORT_COLUMNS``): computes what is not cached, in registry order by default."""
    names = [get_method(n).name for n in (methods or list(METHODS))]
    rows = []
    for i, name in enumerate(names):
        def step(fraction: float, text: str, i: int = i) -> None:
            if progress is not None:
                progress((i + fraction) / len(names), text)

        rows.append(method_report(run, name, settings, progress=step, cancel=cancel, **(params or {}).get(name, {})))
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


def method_reports(work: Sequence[tuple[Run, Sequence[str]]], settings: ReportSettings = ReportSettings(), *,
                   progress: ReportProgress | None = None, cancel: Callable[[], bool] | None = None) -> int:
    """Compute (or read) the report rows of ``work``, (run, method names) pairs, one method at a time; returns how
    many rows there are. ``progress`` hears each row's progress, prefixed with its depth."""
    total, done = sum(len(methods) for _, methods in work), 0
    for run, methods in work:
        for name in methods:
            step = scaled(progress, done / total, (done + 1) / total, f"depth {run.config.depth} · ")
            method_report(run, name, settings, progress=step, cancel=cancel)
            done += 1
    return done


def cached_method_report(run: Run, method: str, settings: ReportSettings = ReportSettings(),
                         **params: Any) -> dict[str, Any] | None:
    """The method's cached row, or None when it has not been computed (never computes)."""
    m = get_method(method)
    params = m.params_for(params)
    key = _row_key(m, params, settings)
    path = run.artifact(f"explain/report-{m.name}-{key}.json")
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None  # damaged: the next ``method_report`` computes it again


def best_per_column(report: pd.DataFrame) -> dict[str, str]:
    """Score column -> the method with the best mean (highest, or lowest for deletion_auc); ties name every one."""
    best = {}
    for column, higher in SCORES.items():
        if column not in report or report[column].isna().all():
            continue
        values = report[column].astype(float)
        target = values.max() if higher else values.min()
        best[column] = ", ".join(report.loc[np.isclose(values, target), "method"])
    return best


def report_across_depths(runs: dict[int, Run], methods: Sequence[str] | None = None,
                         settings: ReportSettings = ReportSettings()) -> pd.DataFrame:
    """Long table (depth, method, label, score, value) of every cached report row of ``runs``; computes nothing."""
    records = []
    for depth, run in sorted(runs.items()):
        for name in methods or list(METHODS):
            row = cached_method_report(run, name, settings)
            if row is None:
                continue
            for score in (*SCORES, "empty_share", "sanity_ssim", "seconds_per_image"):
                records.append({"depth": depth, "method": row["method"], "label": row["label"], "score": score,
                                "value": row.get(score)})
    return pd.DataFrame(records, columns=["depth", "method", "label", "score", "value"])


# --- Helpers for the dashboard (Support Regions): the newest cached row of a method, and per-image localisation. ---

def latest_method_report(run: Run, method: str) -> dict[str, Any] | None:
    """The most recently computed cached report row of ``method`` for ``run`` under any settings, or None.

    The sanity verdict does not depend on the report's threshold, so a page can show it next to any map of the
    method without asking for the exact settings it was computed with. Never computes.
    """
    m = get_method(method)
    folder = run.artifact("explain")
    found = sorted(folder.glob(f"report-{m.name}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if folder.is_dir() else []
    for path in found:
        try:
            row = read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and row.get("method") == m.name:
            return row
    return None


#: Columns of ``run_localisation``.
LOCALISATION_COLUMNS = ["row", "file", "y", "pred", "correct", "empty", "lesion_area", "support_area", "consistency",
                        "lung_area_matched_baseline", "random_baseline", "pointing_game", "iou_otsu",
                        "relevance_mass"]


def run_localisation(run: Run, threshold: float = SUPPORT_THRESHOLD, method: str = "gradcam",
                     target: str | int = "pred", *, progress: ReportProgress | None = None,
                     cancel: Callable[[], bool] | None = None, **params: Any) -> pd.DataFrame:
    """Per test image with a lesion mask: the map's localisation scores next to the report's baselines, cached.

    ``lung_area_matched_baseline`` is the expected consistency of support spread uniformly in the lungs with the
    map's support area (NaN without a lung mask), ``random_baseline`` a smooth random map's consistency; ``empty``
    marks all-zero or constant maps (``is_empty``). ``progress`` / ``cancel``: as ``run_heatmaps``'s.
    """
    from .runs_explain import run_heatmaps

    m = get_method(method)
    params = m.params_for(params)

    def compute() -> list[dict[str, Any]]:
        rows = split_rows(run, "test")
        maps = run_heatmaps(run, m.name, "test", target, progress=scaled(progress, 0.0, 0.8), cancel=cancel,
                            **params)
        masks = run_masks(run, "test")
        empty = is_empty(maps)
        records = []
        for i in np.flatnonzero(masks["has_lesion"]):
            check_cancel(cancel)
            r = rows.iloc[i]
            s = localisation_scores(maps[i], masks["lesion"][i], masks["lung"][i] if masks["has_lung"][i] else None,
                                    threshold, seed=int(i))
            records.append({"row": int(i), "file": r["file"], "y": int(r["y"]), "pred": int(r["pred"]),
                            "correct": bool(r["y"] == r["pred"]), "empty": bool(empty[i]),
                            "lesion_area": float(masks["lesion"][i].mean()),
                            **{k: s[k] for k in LOCALISATION_COLUMNS[7:]}})
        return _plain(records)

    key = stable_hash({"method": m.name, "target": str(target), "params": params, "threshold": threshold}, 12)
    return pd.DataFrame(cached_json(run.artifact(f"explain/localisation-{m.name}-{key}.json"), compute),
                        columns=LOCALISATION_COLUMNS)


def localisation_summary(table: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Means with 95% bootstrap intervals of a ``run_localisation`` table, and whether the map beats chance.

    Keys: n, n_lung, n_empty, consistency(+_ci), median, lung_area_matched_baseline(+_ci), random_baseline(+_ci),
    pointing_game, pointing_chance (hit rate of a peak placed uniformly at random: the mean lesion area),
    support_area, iou_otsu, relevance_mass, beats_chance (both baselines, non-overlapping intervals).
    """
    col = {c: table[c].to_numpy(dtype=float) for c in LOCALISATION_COLUMNS[6:]}
    out: dict[str, Any] = {"n": int(len(table)), "n_empty": int(table["empty"].astype(bool).sum()),
                           "n_lung": int(np.isfinite(col["lung_area_matched_baseline"]).sum())}
    for name in ("consistency", "lung_area_matched_baseline", "random_baseline"):
        out[name], out[f"{name}_ci"] = _ci(col[name], seed)
    finite = col["consistency"][np.isfinite(col["consistency"])]
    out["median"] = float(np.median(finite)) if finite.size else float("nan")
    for name in ("pointing_game", "support_area", "iou_otsu", "relevance_mass"):
        out[name] = mean_ci(col[name], seed=seed)[0]
    out["pointing_chance"] = mean_ci(col["lesion_area"], seed=seed)[0]
    out["beats_chance"] = bool(len(table)) and beats_chance(
        col["consistency"], [col["lung_area_matched_baseline"], col["random_baseline"]], seed=seed)
    return out
