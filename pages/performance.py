"""Diagnostic performance: Wan et al.'s Table 1 with CIs, confusion, ROC / PR, per-class scores, metric vs depth."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

import engine
from dashboard.calibration_section import calibration_section
from dashboard.exports import csv_button, export_name
from dashboard.external_section import external_section
from dashboard.html_report import report_html
from dashboard.performance_charts import (
    comparison_styler,
    confusion_figure,
    depth_figure,
    fold_roc_figure,
    fold_table,
    per_class_figure,
    pr_figure,
    roc_figure,
    table1_caption,
    tied_metrics,
)
from dashboard.training_charts import related_runs
from dashboard.widgets import (all_runs, caption, depth_slider, figure, fold_runs_of, require_runs, time_left,
                               trained_folds)
from engine.baselines import compare_methods
from engine.crossval import SD_DDOF, fold_depth_curve, fold_metric_summary, fold_metrics, fold_roc
from engine.evaluation import METRICS, depth_curve, evaluate_run
from engine.jobs import JobFn, Progress, get_job, start_job

#: How often the report panel redraws itself while its job runs.
POLL_SECONDS = 1.0


# ``finished`` keys the caches below so that a run trained again under the same id is not served stale.
@st.cache_data(show_spinner=False, max_entries=64)
def _methods(run_id: str, finished: float) -> pd.DataFrame:
    return compare_methods(engine.load_run(run_id))


@st.cache_data(show_spinner=False, max_entries=64)
def _evaluation(run_id: str, finished: float) -> dict:
    return evaluate_run(engine.load_run(run_id))


@st.cache_data(show_spinner=False, max_entries=64)
def _depth_curve(run_ids: tuple[str, ...], finished: tuple[float, ...], metric: str) -> pd.DataFrame:
    return depth_curve([engine.load_run(r) for r in run_ids], metric)


@st.cache_data(show_spinner=False, max_entries=16)
def _fold_views(run_ids: tuple[str, ...], finished: tuple[float, ...]) -> tuple[dict, pd.DataFrame]:
    runs = [engine.load_run(r) for r in run_ids]
    table = fold_metrics(runs)
    return fold_roc(runs), fold_table(table, fold_metric_summary(table))


@st.cache_data(show_spinner=False, max_entries=64)
def _fold_depth_curve(run_ids: tuple[tuple[str, ...], ...], finished: tuple[tuple[float, ...], ...],
                      metric: str) -> pd.DataFrame:
    return fold_depth_curve([[engine.load_run(r) for r in group] for group in run_ids], metric)


def _report_key(run: engine.Run) -> str:
    """The background job building ``run``'s HTML report (one per run and training, shared by every session)."""
    return f"html-report:{run.id}:{run.result['finished']}"


def _build_report(run_id: str) -> JobFn:
    def build(progress: Progress, cancelled: Callable[[], bool]) -> bytes:
        return report_html(engine.load_run(run_id), progress, cancelled).encode("utf-8")

    return build


def _report_panel(run: engine.Run) -> None:
    """Build the run's self-contained HTML report in the background (progress, cancel), then offer it for download."""
    key = _report_key(run)
    job = get_job(key)
    was_running = job is not None and job.running

    def panel() -> None:
        current = get_job(key)
        if current is not None and current.running:
            st.progress(current.fraction, text=f"HTML report: {current.text} · {current.fraction:.0%} · "
                                               f"{time_left(current)}")
            if current.cancel_requested:
                st.caption("Cancelling after the current section…")
            elif st.button("Cancel", key="performance_report_cancel", icon=":material/stop:"):
                current.cancel()
            return
        if was_running:
            st.rerun()  # it finished while this panel polled: redraw the page once, so the panel stops polling
        done = current is not None and current.status == "done"
        left, right = st.columns(2)
        if done:
            left.download_button("Download HTML report", current.result,
                                 file_name=f"{export_name(run, 'report')}.html", mime="text/html",
                                 key="performance_report_download", on_click="ignore", icon=":material/download:",
                                 type="primary",
                                 help="One file with this run's provenance, curves, tables and figures; it opens "
                                      "offline in any browser.")
        elif current is not None and current.status == "failed":
            st.error(f"The HTML report could not be built: {current.error}")
        elif current is not None and current.status == "cancelled":
            st.info("Cancelled: no HTML report was built.")
        if (right if done else left).button(
                "Build the HTML report again" if done else "Build HTML report", key="performance_report_build",
                icon=":material/description:",
                help=f"The same file as `python -m engine report --run {run.id} --out report.html`; it is built in "
                     "the background while the page stays usable."):
            start_job(key, f"HTML report of {run.id}", _build_report(run.id))
            st.rerun()
        if done:
            st.caption(f"Built in {current.elapsed:.0f} s ({len(current.result) / 1e6:.1f} MB). Build it again after "
                       "computing more views (e.g. the explanation report on Support Regions) to include them.")

    st.fragment(panel, run_every=POLL_SECONDS if was_running else None)()


def _comparison(run: engine.Run, n_test: int) -> None:
    st.subheader("Fine-tuned CNN vs classical baselines (Wan et al., Table 1)")
    try:
        with st.spinner("Fitting the SVM baselines on LBP and deep features (once per run, then cached)…"):
            table = _methods(run.id, run.result["finished"])
    except engine.LungLensError as exc:
        st.error(f"The baselines cannot be computed for this run: {exc}")
        return
    st.table(comparison_styler(table))  # a static table wraps its cells: seven "value [low, high]" columns fit
    csv_button(table, export_name(run, "table-1"), key="performance_table1_csv")
    caption(table1_caption(n_test, run.classes[run.positive], run.config.backbone, tied_metrics(table)))
    for note in sorted({n for n in table["cv_note"] if n}):
        st.caption(f"Cross-validation: {note}.")


def _detail(run: engine.Run, ev: dict) -> None:
    st.subheader("The fine-tuned CNN on the test split")
    classes, positive = ev["classes"], ev["classes"][ev["positive"]]
    left, right = st.columns(2)
    with left:
        normalised = st.toggle("Normalise rows (share of each true class)", key="performance_normalise")
        matrix = ev["confusion"]["normalised" if normalised else "counts"]
        figure(confusion_figure(matrix, classes, normalised),
               export_name(run, "confusion-normalised" if normalised else "confusion"), key="performance_confusion")
        caption("Confusion matrix (Cheng et al., Lee et al. fig. 6): rows are the true class, columns the prediction.")
    with right:
        figure(roc_figure(ev["roc"], positive), export_name(run, "roc"), key="performance_roc")
        caption(f"ROC curves, one-vs-rest per class (Lee et al. fig. 7); {positive}, the positive class, is drawn "
                "thicker. A class with no test image or no other class is left out.")
    left, right = st.columns(2)
    with left:
        figure(pr_figure(ev["pr"], positive), export_name(run, "precision-recall"), key="performance_pr")
        caption("Precision-recall curves, one-vs-rest; AP = average precision. More telling than ROC when a class "
                "is rare.")
    with right:
        figure(per_class_figure(ev["per_class"]), export_name(run, "per-class"), key="performance_per_class")
        per_class = pd.DataFrame(ev["per_class"])[["class", "precision", "recall", "F1", "support"]]
        st.dataframe(per_class, hide_index=True, width="stretch", key="performance_per_class_table",
                     column_config={k: st.column_config.NumberColumn(format="%.3f")
                                    for k in ("precision", "recall", "F1")})
        csv_button(per_class, export_name(run, "per-class"), key="performance_per_class_csv")
        caption("Per-class precision, recall and F1, each class taken one-vs-rest (Cheng et al., tables 2-3); "
                "support = test images of the class. None marks an undefined value (e.g. the class is never "
                "predicted).")


def _crossval(run: engine.Run) -> None:
    k = run.config.folds
    st.subheader(f"Cross-validation: {k} folds on the same test split (Ouyang et al., fig. 4)")
    runs = trained_folds(run)
    if runs is None:
        return
    try:
        with st.spinner(f"Scoring the {k} folds on the test split…"):
            roc, table = _fold_views(tuple(r.id for r in runs), tuple(r.result["finished"] for r in runs))
    except engine.LungLensError as exc:
        st.warning(str(exc))
        return
    left, right = st.columns(2)
    with left:
        figure(fold_roc_figure(roc), export_name(run, "folds-roc"), key="performance_folds_roc")
    with right:
        st.dataframe(table, hide_index=True, width="stretch", key="performance_folds_table",
                     column_config={m: st.column_config.NumberColumn(format="%.3f") for m in METRICS})
        csv_button(table, export_name(run, "folds"), key="performance_folds_csv")
    caption(
        f"Fold f's model was trained on the other {k - 1} folds of the non-test images and early-stopped on fold f; "
        f"every fold's model is scored on the same {roc['n_test']} test images. Curves: ROC of the positive class "
        f"({roc['positive']}) one-vs-rest, one per fold (numbered from 0, as in the runs table). Title and the table's "
        f"last rows: mean and standard deviation over the {k} folds, the sample sd (ddof = {SD_DDOF}, numpy.std(..., "
        "ddof=1)), as Ouyang et al. report mean ± std of their five fold models. A metric undefined in a fold (e.g. "
        "PPV when nothing is predicted positive) is left out of its mean and sd. The views above this section are "
        "fold 0's."
    )


def _depth(run: engine.Run, runs: dict[int, engine.Run]) -> None:
    st.subheader("Test metric vs fine-tuning depth (Lee et al., fig. 5)")
    metric = st.selectbox("Metric", METRICS, key="performance_metric")
    related = related_runs(run, [*runs.values(), *all_runs()])
    ordered = [related[k] for k in sorted(related)]
    k = run.config.folds
    with st.spinner(f"Evaluating {len(ordered) * k} runs…"):
        if k > 1:
            groups = [(r, fold_runs_of(r)) for r in ordered]
            complete = [g for _, g in groups if all(g)]
            left_out = [f"{r.config.backbone} depth {r.config.depth}" for r, g in groups if not all(g)]
            if left_out:
                st.info(f"Left out, as not all {k} folds are trained: {', '.join(left_out)}. Train them on Home.")
            if not complete:
                return
            curve = _fold_depth_curve(tuple(tuple(r.id for r in g) for g in complete),
                                      tuple(tuple(r.result["finished"] for r in g) for g in complete), metric)
        else:
            curve = _depth_curve(tuple(r.id for r in ordered), tuple(r.result["finished"] for r in ordered), metric)
    if curve["depth"].nunique() < 2:
        st.info("Only one fine-tuning depth is trained for this experiment: add depths on Home to see the curve.")
    figure(depth_figure(curve, metric), export_name(run, f"{metric}-vs-depth"), key="performance_depth_curve")
    csv_button(curve, export_name(run, f"{metric}-vs-depth"), key="performance_depth_csv")
    backbones = ", ".join(sorted(curve["backbone"].unique()))
    bars = (f"Points: the mean over the {k} folds of each depth's test {metric}; error bars: ± 1 standard deviation "
            f"over the folds (sample sd, ddof = {SD_DDOF}); the hover adds the folds' min and max; star: the best mean."
            if k > 1 else "Error bars: 95% bootstrap CI on the test split; star: the best run.")
    caption(
        f"Lines: {backbones} (every cached backbone trained on the same data, init, epochs, image size and split). "
        f"{bars} Lee et al. found 2 of 5 fine-tuned VGG16 blocks best (AUC 0.950) and accuracy dropping beyond 3: "
        "deeper fine-tuning is not always better on small medical data."
    )


st.title("Performance")
sel, runs = require_runs("Performance")
depth = depth_slider(runs, key="performance_depth")
run = runs[depth]
try:
    with st.spinner("Evaluating the test split…"):
        evaluation = _evaluation(run.id, run.result["finished"])
except engine.LungLensError as exc:
    st.error(f"This run cannot be evaluated: {exc}")
    st.stop()
st.caption(f"Run `{run.id}`: {run.config.backbone}, depth {depth}, init {run.config.init}; n_test = "
           f"{evaluation['n_test']} test images.")
_report_panel(run)
_comparison(run, evaluation["n_test"])
_detail(run, evaluation)
if run.config.folds > 1:
    _crossval(run)
_depth(run, runs)
calibration_section(run)
external_section(run, runs)
