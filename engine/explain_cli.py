"""``python -m engine explain`` and ``explain-report``: one image's overlay, and every method scored on a run."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from .data.imageio import read_image
from .data.transforms import preprocess
from .errors import ConfigError
from .explain.methods import METHODS, get_method, volume_method, volume_methods
from .explain.overlay import write_overlay
from .explain.report import ReportSettings, explanation_report
from .explain.volume import is_volume_run, volume_localisation, volume_localisation_summary
from .progress import Progress, scaled
from .runs import Run, load_run

#: The columns the plain-text table prints (``--json`` prints every key of every row).
TEXT_COLUMNS = ["method", "n_images", "empty_share", "consistency", "lung_area_matched_baseline", "random_baseline",
                "beats_chance", "iou_otsu", "pointing_game", "relevance_mass", "deletion_auc", "insertion_auc", "road",
                "sanity_ssim", "sanity_pass", "seconds_per_image"]


def explain_to_file(run_id: str, method: str, image: Path, out: Path, *, target: str | None = None) -> dict:
    """Explain ``image`` with run ``run_id``'s model and write the overlay to ``out``; returns the explanation."""
    run = load_run(run_id)
    if is_volume_run(run):
        raise ConfigError(f"Run {run_id} explains 3-D CT volumes: open it on Support Regions (the slice viewer), or "
                          f"score its maps with `python -m engine explain-report --run {run_id}`.")
    cfg = run.config
    pixels = preprocess(read_image(image), cfg.image_size, clahe=cfg.clahe)
    return write_overlay(run.load_model(), pixels, method, out, classes=run.classes, target=target)


def method_list(text: str) -> list[str]:
    """``all`` or comma-separated method names -> registry names, with a ConfigError naming the choices."""
    if text.strip().lower() == "all":
        return list(METHODS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--methods takes 'all' or a comma-separated list of {', '.join(METHODS)}.")
    return [get_method(n).name for n in names]


def _json_ready(value: Any) -> Any:
    """NaN (undefined, e.g. no lesion masks) becomes null so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _volume_rows(run: Run, split: str, methods: str, progress: Progress) -> list[dict[str, Any]]:
    """One row per volumetric method: its 3-D localisation scores (mean, 95% CI) next to their baselines."""
    names = volume_methods() if methods.strip().lower() == "all" else [volume_method(n).name for n in
                                                                       method_list(methods)]
    rows = []
    for k, name in enumerate(names):
        table = volume_localisation(run, name, split, progress=scaled(progress, k / len(names), (k + 1) / len(names)))
        summary = volume_localisation_summary(table)
        row: dict[str, Any] = {"method": name, "n_images": len(table)}
        for r in summary.itertuples():
            key = r.score if r.who == summary["who"].iloc[0] else f"{r.score} ({r.who})"
            row.update({key: r.mean, f"{key} low": r.low, f"{key} high": r.high})
            if r.beats_chance is not None:
                row[f"{r.score} beats_chance"] = bool(r.beats_chance)
        rows.append(row)
    return rows


def report_rows(run_id: str, split: str, methods: str) -> list[dict[str, Any]]:
    """The explanation report of run ``run_id`` as JSON-ready rows, with a progress bar on stderr.

    For a 3-D run: the volumetric methods' localisation in 3-D (consistency degree, pointing game, relevance mass,
    each with its lung-matched and smooth-random baselines and 95% CIs).
    """
    run = load_run(run_id)
    with tqdm(total=1000, desc="explanation report", unit="‰", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(fraction: float, text: str) -> None:
            bar.n = int(fraction * 1000)
            bar.set_postfix_str(text)
            bar.refresh()

        if is_volume_run(run):
            return [_json_ready(row) for row in _volume_rows(run, split, methods, progress)]
        table = explanation_report(run, method_list(methods), ReportSettings(split=split), progress=progress)
    return [_json_ready(row) for row in table.to_dict(orient="records")]


def report_text(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain table, one line per method."""
    df = pd.DataFrame(rows)
    df = df[[c for c in TEXT_COLUMNS if c in df.columns]] if "sanity_pass" in df.columns else \
        df[[c for c in df.columns if not c.endswith((" low", " high"))]]
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a")
