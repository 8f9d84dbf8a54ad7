"""One self-contained HTML report of a run: provenance, training curves, Table 1 with CIs, confusion / ROC / PR,
calibration, feature projections, first-layer filters and explanations, drawn with the dashboard's Plotly builders.

The file opens offline: plotly.js is inlined once, images are PNG data URIs inside the figures, and nothing is
fetched. Every section reads the engine's cached results (computing what is missing, as the pages do); a section
whose data is missing says so instead of failing the report.
"""
from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

import engine
from dashboard.calibration_charts import calibration_table, reliability_figure
from dashboard.exports import export_name, png_config
from dashboard.features_charts import METHOD_LABELS, projection_figure, score_text
from dashboard.layers_charts import filter_figure, filters_unchanged, image_grid_figure
from dashboard.performance_charts import (
    comparison_marks,
    comparison_table,
    confusion_figure,
    per_class_figure,
    pr_figure,
    roc_figure,
    table1_caption,
    tied_metrics,
)
from dashboard.report_charts import FAIL_COLOR, report_table
from dashboard.training_charts import criteria_figure, loss_figure
from engine.data.sources import BUILTIN_SOURCES, data_label
from engine.store import atomic_write_bytes

#: ``progress(fraction in [0, 1], what is being drawn)``.
ReportProgress = Callable[[float, str], None]
#: The report's sections in order: anchor -> title.
SECTIONS: dict[str, str] = {
    "run": "Run and provenance",
    "training": "Training curves",
    "performance": "Performance on the test split",
    "calibration": "Calibration",
    "projections": "Feature projections",
    "filters": "First-layer filters",
    "explanations": "Explanations",
}
#: The projection of the Features page's default view (first method, 2-D, coloured by class).
PROJECTION_METHOD, PROJECTION_DIMS = "pca", 2
#: Grad-CAM overlays: this many test images of each true class, the first ones in the test split's order.
GRADCAM_PER_CLASS = 2
FILTER_TITLES = {"before": "Before fine-tuning", "after": "After fine-tuning",
                 "difference": "Difference (after − before)"}
#: The Plotly template of every figure (close to the dashboard's look).
TEMPLATE = "plotly_white"
#: Errors that mean a section's data is missing or unusable: the section says so and the report goes on.
MISSING = (engine.LungLensError, OSError)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2937; margin: 0;
       line-height: 1.45; }
header { background: #0f172a; color: #f8fafc; padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .3rem; font-size: 1.6rem; }
header p { margin: .2rem 0; color: #cbd5e1; }
header code { color: #f8fafc; }
nav a { color: #93c5fd; margin-right: 1rem; text-decoration: none; }
main { padding: 0 2rem 2rem; max-width: 1400px; }
section { border-bottom: 1px solid #e5e7eb; padding: 1rem 0 1.5rem; }
h2 { font-size: 1.3rem; margin: .8rem 0; }
h3 { font-size: 1.05rem; margin: 1rem 0 .4rem; }
.caption { color: #4b5563; font-size: .88rem; max-width: 110ch; }
.missing { background: #fef9c3; border-left: 4px solid #ca8a04; padding: .5rem .8rem; max-width: 110ch; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 1rem; }
.grid3 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 1rem; }
.grid2 > div, .grid3 > div { min-width: 0; }  /* a grid cell may shrink below its figure's drawn width */
table.data { border-collapse: collapse; font-size: .88rem; margin: .4rem 0; }
table.data th, table.data td { border: 1px solid #e5e7eb; padding: .25rem .55rem; text-align: left;
                               vertical-align: top; }
table.data thead th { background: #f1f5f9; }
table.data td.best { background: #dcfce7; color: #166534; font-weight: 700; }
table.data td.fail { color: FAIL; font-weight: 700; }
footer { color: #6b7280; font-size: .8rem; padding: 1rem 2rem; }
""".replace("FAIL", FAIL_COLOR)

#: Each figure is drawn while the page is still being read, when its grid cell may span the whole row (the cells
#: after it do not exist yet): once everything is laid out, every figure is fitted to its cell.
_RESIZE = ("window.addEventListener('load', function () { document.querySelectorAll('.plotly-graph-div')"
           ".forEach(function (d) { Plotly.Plots.resize(d); }); });")


def escape(text: Any) -> str:
    """``text`` as HTML text: ``&``, ``<``, ``>`` and both quotes escaped (file and class names are user data)."""
    return html.escape(str(text), quote=True)


def _cell(value: Any) -> str:
    """One table cell's text: n/a for a missing value, three decimals for a fraction, plain text otherwise."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    return str(value)


def html_table(table: pd.DataFrame, *, index: bool = False, marks: pd.DataFrame | None = None,
               table_id: str | None = None) -> str:
    """``table`` as an escaped HTML table; cells True in ``marks`` (same shape) get the best-value class."""
    head = ([escape(table.index.name or "")] if index else []) + [escape(c) for c in table.columns]
    rows = []
    for i, (label, row) in enumerate(table.iterrows()):
        cells = [f"<th>{escape(label)}</th>"] if index else []
        for j, value in enumerate(row):
            text = _cell(value)
            classes = []
            if marks is not None and bool(marks.iloc[i, j]):
                classes.append("best")
            if text.startswith("FAIL"):
                classes.append("fail")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return (f'<table class="data"{ident}><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of (what, value) pairs."""
    return html_table(pd.DataFrame([{"": k, "value": _cell(v)} for k, v in pairs], columns=["", "value"]))


def _caption(text: str) -> str:
    return f'<p class="caption">{escape(text)}</p>'


def _missing(what: str, exc: BaseException) -> str:
    return f'<p class="missing">{escape(what)} is not available for this run: {escape(exc)}</p>'


class _Figures:
    """Turns Plotly figures into report divs, each with a PNG export named after the run and the figure."""

    def __init__(self, run: engine.Run) -> None:
        self.run = run

    def __call__(self, fig: go.Figure, name: str) -> str:
        # Streamlit's template holds placeholder colours its front end replaces; a file needs a real template.
        fig.update_layout(template=TEMPLATE)
        config = png_config(export_name(self.run, name)) | {"responsive": True}
        return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=config, default_width="100%",
                           default_height=f"{int(fig.layout.height or 450)}px")


def _guarded(what: str, build: Callable[[], str]) -> str:
    """``build()``, or a note that ``what`` is not available when its data is missing."""
    try:
        return build()
    except MISSING as exc:
        return _missing(what, exc)


# --- sections ---------------------------------------------------------------------------------------------------------

def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "n/a"
    return datetime.fromtimestamp(float(timestamp), tz=timezone.utc).astimezone().isoformat(timespec="seconds")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _run_section(run: engine.Run, fig: _Figures) -> str:
    cfg, meta, result = run.config, run.meta, run.result
    splits = run.predictions["split"].value_counts()
    code = meta.get("code") or {}
    git = code.get("git_commit")
    identity = [
        ("Run id", run.id), ("Backbone", cfg.backbone),
        ("Fine-tuning depth", f"{cfg.depth} of {engine.N_BLOCKS} conv blocks (and the head)"),
        ("Initialisation", cfg.init),
        ("Classes", ", ".join(run.classes)), ("Positive class", run.classes[run.positive]),
    ]
    if cfg.folds > 1:
        identity.append(("Cross-validation", f"fold {cfg.fold} of {cfg.folds}"))
    data = [
        ("Data", BUILTIN_SOURCES[cfg.data].short if cfg.data in BUILTIN_SOURCES else cfg.data),
        ("Data folder when trained", meta.get("data_root", "n/a")),
        ("Data fingerprint", meta.get("data_fingerprint", "n/a")),
        ("Images per split", ", ".join(f"{s} {int(splits.get(s, 0))}" for s in ("train", "val", "test"))),
        ("Unreadable images skipped", len(meta.get("skipped_images") or [])),
    ]
    provenance = [
        ("LungLens engine (training)", code.get("engine", "n/a")),
        ("Engine source hash", code.get("source_sha256", "n/a")),
        ("Training code hash", code.get("training_code", "n/a")),
        ("Git commit", f"{git}{' (with uncommitted changes)' if code.get('git_dirty') == 'true' else ''}"
         if git else "n/a (not a git checkout)"),
        ("Device", meta.get("device", "n/a")), ("torch", meta.get("torch", "n/a")),
        ("Python", meta.get("python", "n/a")),
    ]
    timings = [
        ("Finished", _when(result.get("finished"))), ("Training time", _duration(result.get("seconds"))),
        ("Best epoch", f"{result.get('best_epoch')} of {result.get('epochs_run')} run"),
        ("Stopped early", bool(result.get("stopped_early"))),
        ("Frozen layers cached (prefix cache)", bool(meta.get("prefix_cached", False))),
    ]
    init = meta.get("init")
    init_rows = list(init.items()) if isinstance(init, dict) else [("initial weights", init)]
    config = pd.DataFrame({"field": list(cfg.to_dict()), "value": [_cell(v) for v in cfg.to_dict().values()]})
    return (
        '<div class="grid2">'
        f"<div><h3>Identity</h3>{_pairs(identity)}<h3>Data</h3>{_pairs(data)}</div>"
        f"<div><h3>Code and device</h3>{_pairs(provenance)}<h3>Timings</h3>{_pairs(timings)}</div>"
        "</div>"
        f'<div class="grid2"><div><h3>Configuration</h3>{html_table(config)}</div>'
        f"<div><h3>Initial weights</h3>{_pairs(init_rows)}</div></div>"
    )


def _training_section(run: engine.Run, fig: _Figures) -> str:
    history, best, stopped = run.history, run.result["best_epoch"], run.result["stopped_early"]
    positive = run.classes[run.positive]
    return (
        "<h3>Loss per epoch</h3>" + fig(loss_figure(history, best, stopped), "loss")
        + _caption("Train solid, validation dotted, test dashed. Train figures are measured on the batches as they "
                   "were trained (dropout on); validation and test after each epoch in eval mode. Green line: best "
                   "epoch (lowest validation loss; its weights are the model evaluated below); red dashed: early "
                   "stop; grey dotted: learning-rate reductions.")
        + "<h3>The five criteria per epoch (Wan et al., fig. 5)</h3>"
        + fig(criteria_figure(history, best, stopped), "criteria")
        + _caption(f"ACC, and sensitivity, specificity, PPV and NPV of the positive class ({positive}) one-vs-rest "
                   "(Wan et al. eq. 1-5); a gap is an undefined value.")
    )


def _table1(run: engine.Run, n_test: int) -> str:
    from engine.baselines import compare_methods

    table = compare_methods(run)
    caption = table1_caption(n_test, run.classes[run.positive], run.config.backbone, tied_metrics(table))
    notes = sorted({n for n in table["cv_note"] if n})
    return (html_table(comparison_table(table), index=True, marks=comparison_marks(table), table_id="table-1")
            + _caption(caption) + "".join(_caption(f"Cross-validation: {n}.") for n in notes))


def _test_views(run: engine.Run, fig: _Figures) -> str:
    from engine.evaluation import evaluate_run

    ev = evaluate_run(run)
    classes, positive = ev["classes"], ev["classes"][ev["positive"]]
    per_class = pd.DataFrame(ev["per_class"])[["class", "precision", "recall", "F1", "support"]]
    return (
        '<div class="grid2">'
        f"<div>{fig(confusion_figure(ev['confusion']['counts'], classes, False), 'confusion')}"
        + _caption("Confusion matrix: rows are the true class, columns the prediction (test images).") + "</div>"
        f"<div>{fig(roc_figure(ev['roc'], positive), 'roc')}"
        + _caption(f"ROC curves, one-vs-rest per class; {positive}, the positive class, is drawn thicker.") + "</div>"
        f"<div>{fig(pr_figure(ev['pr'], positive), 'precision-recall')}"
        + _caption("Precision-recall curves, one-vs-rest; AP = average precision.") + "</div>"
        f"<div>{fig(per_class_figure(ev['per_class']), 'per-class')}{html_table(per_class)}"
        + _caption("Per-class precision, recall and F1, each class one-vs-rest; support = test images of the class; "
                   "n/a marks an undefined value.") + "</div>"
        "</div>"
    )


def _performance_section(run: engine.Run, fig: _Figures) -> str:
    n_test = int((run.predictions["split"] == "test").sum())
    return ("<h3>Fine-tuned CNN vs classical baselines (Wan et al., Table 1)</h3>"
            + _guarded("Table 1 (the SVM baselines)", lambda: _table1(run, n_test))
            + "<h3>The fine-tuned CNN on the test split</h3>"
            + _guarded("The test-split evaluation", lambda: _test_views(run, fig)))


def _calibration_section(run: engine.Run, fig: _Figures) -> str:
    from engine.calibration import run_calibration

    raw = run_calibration(run)
    positive = raw["class"]
    return (
        '<div class="grid2">'
        f"<div>{fig(reliability_figure(raw), 'reliability')}</div>"
        f"<div>{html_table(calibration_table(raw))}</div></div>"
        + _caption(f"Reliability diagram of the probability of {positive} (the positive class, one-vs-rest): the "
                   f"images of each split in {raw['n_bins']} equal-width probability bins, each bin's mean predicted "
                   f"probability against its share of {positive} images; on the dashed diagonal the probabilities "
                   "are calibrated. ECE: the gap between the two averaged over the bins, weighted by their images; "
                   "Brier score: mean squared difference between probability and outcome. Lower is better for both.")
    )


def _projection(run: engine.Run, fig: _Figures, feature_set: str) -> str:
    from engine.projections import run_projection

    points = run_projection(run, feature_set, PROJECTION_METHOD, PROJECTION_DIMS)
    scores = points.attrs["separability"]
    name = {"lbp": "LBP features", "deep": "Deep features"}[feature_set]
    summary = pd.DataFrame([{"silhouette": score_text(scores["silhouette"]),
                             "k-NN accuracy": score_text(scores["knn_accuracy"]),
                             "chance (majority class)": score_text(scores["chance"])}])
    return (f"<h3>{escape(name)}</h3>" + html_table(summary)
            + fig(projection_figure(points, run.classes, PROJECTION_METHOD), f"projection-{feature_set}"))


def _projections_section(run: engine.Run, fig: _Figures) -> str:
    label = METHOD_LABELS[PROJECTION_METHOD]
    return (
        '<div class="grid2">'
        + "".join(f"<div>{_guarded(name, lambda fs=fs: _projection(run, fig, fs))}</div>"
                  for fs, name in (("lbp", "The LBP projection"), ("deep", "The deep-feature projection")))
        + "</div>"
        + _caption(f"Wan et al. fig. 6: every image of the run (train, val and test) projected to 2-D by {label}, "
                   "one point each, coloured by true class (the Features page's default view). LBP: the 59-bin "
                   "uniform LBP histogram; deep: the fine-tuned network's last conv stage, flattened; each feature "
                   "standardised first. Silhouette and k-NN accuracy are measured in the projected space against the "
                   "true classes.")
    )


def _gray_as_rgb(tiles: np.ndarray) -> np.ndarray:
    """Gray (n, k, k) filters as RGB, so that 0.5 (no change) stays mid-grey instead of being contrast-stretched."""
    return np.repeat(tiles[..., None], 3, axis=-1) if tiles.ndim == 3 else tiles


def _filters_section(run: engine.Run, fig: _Figures) -> str:
    from engine.layers import FILTER_VIEWS, run_filter_grid

    grids = {view: run_filter_grid(run, view) for view in FILTER_VIEWS}
    n, k = grids["after"].shape[:2]
    unchanged = filters_unchanged(grids["difference"])
    panels = "".join(f"<div><h3>{escape(FILTER_TITLES[v])}</h3>{fig(filter_figure(_gray_as_rgb(g)), f'filters-{v}')}"
                     "</div>" for v, g in grids.items())
    note = ("conv1 is frozen at this depth, so before and after are the same." if unchanged
            else "conv1 changed during fine-tuning.")
    return (f'<div class="grid3">{panels}</div>'
            + _caption(f"Wan et al. fig. 8: the {n} filters of {run.config.backbone}'s first conv layer, {k} × {k} "
                       "each, as the sum of their three channel kernels (the input is one gray image in three "
                       "channels), magnified with nearest-neighbour pixels. Before and after: each filter min-max "
                       "scaled on its own; difference: after − before on one scale, mid-grey = unchanged. " + note))


def _gradcam_rows(rows: pd.DataFrame) -> list[int]:
    """The first GRADCAM_PER_CLASS test rows of each true class, in test-split order."""
    picked = rows.groupby("y", sort=True).head(GRADCAM_PER_CLASS)
    return sorted(int(i) for i in picked.index)


def _short(name: str, width: int = 22) -> str:
    stem = Path(name).stem
    return stem if len(stem) <= width else stem[: width - 1] + "…"


def _gradcam(run: engine.Run, fig: _Figures) -> str:
    from engine.explain import heatmap_overlay, run_heatmaps, split_rows

    rows = split_rows(run, "test")
    if rows.empty:
        raise engine.DataError("the test split is empty")
    picked = _gradcam_rows(rows)
    images, maps = run.images("test"), run_heatmaps(run, "gradcam", "test", "pred")
    gray = [np.repeat(images[r][..., None], 3, axis=-1) for r in picked]
    overlays = [heatmap_overlay(images[r], maps[r]) for r in picked]
    tiles = np.stack([*gray, *overlays]).astype(np.float32) / 255.0
    names = np.asarray(run.classes)
    titles = [_short(rows.loc[r, "file"]) for r in picked]
    titles += [f"true {names[rows.loc[r, 'y']]} · pred {names[rows.loc[r, 'pred']]}" for r in picked]
    grid = image_grid_figure(tiles, cols=len(picked), titles=titles, row_titles=["image", "Grad-CAM"],
                             row_height=180)
    return (fig(grid, "gradcam") + _caption(
        f"Grad-CAM (Selvaraju et al. 2017; Wan et al. eq. 7-9) of the predicted class at the last convolutional "
        f"layer, in jet colours over the image (red = strongest support), for the first {GRADCAM_PER_CLASS} test "
        "images of each true class. The Support Regions page shows any image, method and layer."))


def _explanation_report(run: engine.Run) -> str:
    from engine.explain.methods import METHODS
    from engine.explain.report import REPORT_COLUMNS, best_per_column, latest_method_report

    found = [row for row in (latest_method_report(run, name) for name in METHODS) if row is not None]
    if not found:
        return ('<p class="missing">No explanation report is cached for this run yet: compute it on the Support '
                "Regions page (Explanation report) or with <code>python -m engine prepare</code>, then write this "
                "report again.</p>")
    report = pd.DataFrame(found, columns=list(REPORT_COLUMNS))
    table, marks = report_table(report, best_per_column(report))
    thresholds = sorted({_cell(t) for t in report["threshold"]})
    return (html_table(table, marks=marks, table_id="explanation-report") + _caption(
        f"The newest cached explanation-report row of each of {len(found)} method(s), mean and 95% bootstrap "
        f"interval (support threshold {', '.join(thresholds)}). ★ bold green: the best mean of a column (every "
        "tied method is marked, as on the Support Regions page). Consistency: share of the lesion covered by "
        "support (Wan §3.5), next to a lung-area baseline and a random map scored the same way; deletion (lower "
        "is better) and insertion AUCs after Petsiuk et al. 2018; ROAD after Rong et al. 2022; sanity check: "
        "cascading model-parameter randomisation (Adebayo et al. 2018), FAIL in red."))


def _explanations_section(run: engine.Run, fig: _Figures) -> str:
    return ("<h3>Grad-CAM on test images</h3>" + _guarded("Grad-CAM", lambda: _gradcam(run, fig))
            + "<h3>Explanation report</h3>" + _guarded("The explanation report", lambda: _explanation_report(run)))


_BUILDERS: dict[str, Callable[[engine.Run, _Figures], str]] = {
    "run": _run_section, "training": _training_section, "performance": _performance_section,
    "calibration": _calibration_section, "projections": _projections_section, "filters": _filters_section,
    "explanations": _explanations_section,
}


# --- the document -----------------------------------------------------------------------------------------------------

def report_html(run: engine.Run, progress: ReportProgress | None = None,
                cancelled: Callable[[], bool] | None = None) -> str:
    """The whole report of ``run`` as one HTML document; ``cancelled()`` is checked between sections."""
    say = progress or (lambda _f, _t: None)
    fig = _Figures(run)
    started = time.perf_counter()
    body = []
    for i, (key, title) in enumerate(SECTIONS.items()):
        if cancelled is not None and cancelled():
            from engine.explain.report import Cancelled

            raise Cancelled("The report was cancelled; nothing was written.")
        say(i / len(SECTIONS), f"{title} ({i + 1} of {len(SECTIONS)})")
        content = _guarded(f"The section “{title}”", lambda b=_BUILDERS[key]: b(run, fig))
        body.append(f'<section id="{key}"><h2>{escape(title)}</h2>{content}</section>')
    say(1.0, "done")
    cfg = run.config
    data = data_label(cfg.data)
    nav = "".join(f'<a href="#{k}">{escape(t)}</a>' for k, t in SECTIONS.items())
    generated = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>LungLens report · {escape(run.id)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>LungLens report</h1><p>Run <code>{escape(run.id)}</code>: {escape(cfg.backbone)}, fine-tuning "
        f"depth {cfg.depth}, init {escape(cfg.init)}, on {escape(data)}.</p>"
        f"<p>Written {escape(generated)} by LungLens {escape(engine.__version__)}.</p><nav>{nav}</nav></header>"
        f"<main>{''.join(body)}</main>"
        f"<footer>Self-contained: every figure and image is in this file; it opens offline. Assembled in "
        f"{time.perf_counter() - started:.1f} s.</footer><script>{_RESIZE}</script></body></html>\n"
    )


def write_report(run: engine.Run, out: Path, progress: ReportProgress | None = None) -> Path:
    """Write ``report_html(run)`` to ``out`` atomically (a reader never sees half a file); returns its full path."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise engine.ConfigError(f"{out} is a folder: give the report a file name, such as {out / 'report.html'}.")
    atomic_write_bytes(out, report_html(run, progress).encode("utf-8"))
    return out.resolve()
