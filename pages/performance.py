"""Diagnostic performance: Wan et al.'s Table 1 with CIs, confusion, ROC / PR, per-class scores, metric vs depth,
Ouyang et al.'s variants and Cheng et al.'s backbones with and without augmentation."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st
from streamlit.elements.lib.mutable_tab_container import TabContainer

import engine
from dashboard.background import background, cached, job_panel, start
from dashboard.calibration_section import calibration_section
from dashboard.cheng_section import cheng_section, train_button, trained_message
from dashboard.exports import csv_button, export_name
from dashboard.external_section import external_section
from dashboard.html_report import report_html
from dashboard.performance_charts import (
    attention_effect_figure,
    attention_effect_table,
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
from dashboard.state import after_training
from dashboard.url_state import flag, url_tabs, url_widget
from dashboard.widgets import (
    all_runs,
    caption,
    dataset,
    depth_slider,
    figure,
    fold_runs_of,
    require_runs,
    trained_folds,
)
from engine.baselines import compare_methods
from engine.crossval import SD_DDOF, fold_depth_curve, fold_metric_summary, fold_metrics, fold_roc
from engine.evaluation import METRICS, depth_curve, evaluate_run
from engine.jobs import Job, JobFn, Progress, get_job
from engine.models.names import ATTENTION_BACKBONES
from engine.ouyang import TABLE_METRICS
from engine.runs import related_runs
from engine.store import stable_hash

#: The page's sections, a lazy tab each (only the open one computes): URL code -> tab label.
SECTIONS = {"table1": "Table 1: CNN vs baselines", "test": "Test split", "folds": "Cross-validation",
            "depth": "Metric vs depth", "calibration": "Calibration", "external": "External test",
            "ouyang": "Ouyang: attention & sampling", "cheng": "backbones x augmentation"}
#: Ouyang et al. 2020, Table II, test set (mean ± sd AUC of their five fold models; 3-D ResNet34 on 2,796 real CT
#: scans of COVID-19 and CAP), by our variant names.
PAPER_TABLE2_AUC = {"RN + US": "0.934 ± 0.011", "Attention RN + US": "0.948 ± 0.003",
                    "Attention RN + SS": "0.938 ± 0.002", "Attention RN + DS": "0.944 ± 0.003"}
#: Criteria of Table III (Table II adds F1).
SIZE_METRICS = ("AUC", "ACC", "sensitivity", "specificity")
#: Height of a row of ``st.dataframe`` (px), to show a table whole.
TABLE_ROW_PX = 35
SECTION_KEY, SECTION_PARAM = "performance_section", "section"


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

    def done(job: Job) -> None:
        st.download_button("Download HTML report", job.result, file_name=f"{export_name(run, 'report')}.html",
                           mime="text/html", key="performance_report_download", on_click="ignore",
                           icon=":material/download:", type="primary",
                           help="One file with this run's provenance, curves, tables and figures; it opens offline "
                                "in any browser.")
        st.caption(f"Built in {job.elapsed:.0f} s ({len(job.result) / 1e6:.1f} MB). Build it again after computing "
                   "more views (e.g. the explanation report on Support Regions) to include them.")

    job = job_panel(key, "performance_report", done=done, what="the HTML report")
    if job is not None and job.running:
        return
    built = job is not None and job.status == "done"
    if st.button("Build the HTML report again" if built else "Build HTML report", key="performance_report_build",
                 icon=":material/description:",
                 help=f"The same file as `python -m engine report --run {run.id} --out report.html`; it is built in "
                      "the background while the page stays usable."):
        start(key, f"HTML report of {run.id}", _build_report(run.id))
        st.rerun()


def _comparison(run: engine.Run, n_test: int) -> None:
    st.subheader("Fine-tuned CNN vs classical baselines (Wan et al., Table 1)")
    try:
        table = background(compare_methods, run, label="Table 1: SVM baselines on LBP and deep features",
                           name="performance_methods", reports=True)
    except engine.LungLensError as exc:
        st.error(f"The baselines cannot be computed for this run: {exc}")
        return
    if table is None:  # computing in the background: its panel is drawn, the other tabs stay usable
        return
    note = table.attrs.get("note", "")
    if note:  # a method that does not apply to this run (LBP on CT volumes)
        st.info(note, icon=":material/info:")
    st.table(comparison_styler(table))  # a static table wraps its cells: seven "value [low, high]" columns fit
    csv_button(table, export_name(run, "table-1"), key="performance_table1_csv")
    caption(table1_caption(n_test, run.classes[run.positive], run.config.backbone, tied_metrics(table),
                           lbp="LBP + SVM" in set(table["method"])))
    for note in sorted({n for n in table["cv_note"] if n}):
        caption(f"Cross-validation: {note}.", label="About the cross-validation")


def _detail(run: engine.Run, ev: dict) -> None:
    st.subheader("The fine-tuned CNN on the test split")
    classes, positive = ev["classes"], ev["classes"][ev["positive"]]
    # Above both columns, so that the confusion matrix and the ROC curves start level.
    normalised = url_widget(st.toggle, "Normalise the confusion matrix's rows (share of each true class)",
                            (False, True), key="performance_normalise", param="normalise", default=False, encode=flag)
    left, right = st.columns(2)
    with left:
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


def _test_split(run: engine.Run) -> None:
    """The test split's views once ``evaluate_run`` is in (computed in the background the first time)."""
    try:
        evaluation = background(evaluate_run, run, label="Evaluating the test split", name="performance_eval")
    except engine.LungLensError as exc:
        st.error(f"This run cannot be evaluated: {exc}")
        return
    if evaluation is not None:
        _detail(run, evaluation)


def _crossval(run: engine.Run) -> None:
    k = run.config.folds
    st.subheader(f"Cross-validation: {k} folds on the same test split (Ouyang et al., fig. 4)")
    runs = trained_folds(run)
    if runs is None:
        return
    try:
        roc = cached(fold_roc, runs)
        per_fold = cached(fold_metrics, runs)
        table = fold_table(per_fold, fold_metric_summary(per_fold))
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
        "PPV when nothing is predicted positive) is left out of its mean and sd. The other tabs show fold 0's run."
    )


def _depth(run: engine.Run, runs: dict[int, engine.Run]) -> None:
    st.subheader("Test metric vs fine-tuning depth (Lee et al., fig. 5)")
    metric = url_widget(st.columns([1, 3])[0].selectbox, "Metric", METRICS, key="performance_metric", param="metric",
                        default=METRICS[0])
    related = related_runs(run, [*runs.values(), *all_runs()])
    ordered = [related[k] for k in sorted(related)]
    k = run.config.folds
    label = f"Test {metric} of {len(ordered) * k} runs"
    if k > 1:
        groups = [(r, fold_runs_of(r)) for r in ordered]
        complete = [g for _, g in groups if all(g)]
        left_out = [f"{r.config.backbone} depth {r.config.depth}" for r, g in groups if not all(g)]
        if left_out:
            st.info(f"Left out, as not all {k} folds are trained: {', '.join(left_out)}. Train them on Home.")
        if not complete:
            return
        curve = background(fold_depth_curve, complete, metric, label=label, name="performance_depth_job")
    else:
        curve = background(depth_curve, ordered, metric, label=label, name="performance_depth_job", reports=True)
    if curve is None:
        return
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


def _ouyang_name(base: engine.RunConfig, what: str) -> str:
    """A file-name stem for an export of the Ouyang tab: ``lunglens-resnet3d18-depth2-ouyang-<what>``."""
    return f"lunglens-{base.backbone}-depth{base.depth}-ouyang-{what}"


def _variant_of(cfg: engine.RunConfig) -> str:
    """The name of the Table II variant a config trains (its attention and sampling)."""
    return next(v.name for v in engine.VARIANTS if (v.attention, v.sampling) == (cfg.attention, cfg.sampling))


def _ouyang_key(base: engine.RunConfig) -> str:
    """The job training the missing variants of ``base`` (one per experiment and depth, whichever session)."""
    return "ouyang:" + stable_hash(base.key_dict(), 16)


def _train_variants(base: engine.RunConfig, missing: list[engine.RunConfig], masks: bool, running: bool) -> None:
    """Which variants are not trained, and the button that trains them as a background job."""
    names = sorted({_variant_of(c) for c in missing}, key=list(engine.variant_configs(base)).index)
    st.info(f"Not trained yet: {', '.join(names)} ({len(missing)} run(s)). Table II, the ROC curves and Table III "
            "need all four variants.", icon=":material/pending:")
    if not masks:
        st.warning("Online attention and size-balanced sampling need lesion masks (and lung masks for the infection "
                   "ratio): this data has none, so only the plain variant can be trained. Add masks/<class>/ and "
                   "lung_masks/<class>/ beside images/ (see README).")
        return
    train_button(_ouyang_key(base), missing, len(dataset(base)), what="variants", key="performance_ouyang_train",
                 running=running, help="Trains in the background (dual sampling trains both of its members); Cancel "
                                       "stops it, keeping the runs finished before.")


def _table2(base: engine.RunConfig, ds: engine.Dataset) -> None:
    """Their Table II: the four variants' criteria, mean ± sd over the folds."""
    table = cached(engine.variant_table, base, ds)
    if table.empty:
        st.info("No variant has all its folds trained yet: the tables appear as the variants finish.")
        return
    shown = engine.format_mean_sd(table, TABLE_METRICS)
    st.dataframe(shown, hide_index=True, width="stretch", key="performance_ouyang_table2")
    csv_button(table, _ouyang_name(base, "table2"), key="performance_ouyang_table2_csv")
    k = base.folds
    spread = (f"mean ± sd over the {k} fold models on the same test split (sample sd, ddof = {SD_DDOF})" if k > 1
              else "one hold-out run each (choose 5 folds on Home for mean ± sd over fold models, as the paper)")
    paper = "; ".join(f"{name} {auc}" for name, auc in PAPER_TABLE2_AUC.items())
    caption(f"Ouyang et al. 2020, Table II, on this experiment ({base.backbone}, depth {base.depth}): RN = the CNN, "
            "US / SS / DS = uniform / size-balanced / dual sampling, Attention = their online attention loss (eqs. "
            f"1-4). Test split, {spread}; sensitivity, specificity and F1 of the positive class. Dual sampling "
            "combines the uniform and size-balanced attention models by eq. 5. The paper's numbers come from a 3-D "
            f"ResNet34 trained from scratch on 2,796 real CT scans (COVID-19 vs CAP); its test AUCs: {paper}.")


def _variant_rocs(base: engine.RunConfig, ds: engine.Dataset) -> None:
    """Per-fold ROC curves of each variant, two a row (their fig. 4)."""
    rocs = cached(engine.variant_rocs, base, ds)
    for i, (name, roc) in enumerate(rocs.items()):
        if i % 2 == 0:
            columns = st.columns(2)
        with columns[i % 2]:
            figure(fold_roc_figure(roc, name), _ouyang_name(base, "roc-" + name.lower().replace(" + ", "-").replace(" ", "-")),
                   key=f"performance_ouyang_roc_{i}")
    caption("ROC curves of the positive class on the test split, one per fold model of each variant (Ouyang et al. "
            "fig. 4); the title gives the mean ± sd AUC over the folds.")


def _table3(base: engine.RunConfig, ds: engine.Dataset) -> None:
    """Their Table III: each variant's criteria within each infection-size group of the test split."""
    ratios = background(engine.infection_ratios, ds, base.image_size, label="Infection ratios from the masks",
                        name="performance_ouyang_ratios")
    if ratios is None:
        return
    table = cached(engine.size_table, base, ratios, ds)
    if table.empty:
        st.info("No test item has both a lesion and a lung mask: the infection ratio, and so Table III, is unknown.")
        return
    shown = engine.format_mean_sd(table, SIZE_METRICS)
    st.dataframe(shown, hide_index=True, width="stretch", key="performance_ouyang_table3",
                 height=TABLE_ROW_PX * (len(shown) + 1) + 3)  # every row: four variants by three groups
    csv_button(table, _ouyang_name(base, "table3"), key="performance_ouyang_table3_csv")
    groups = ", ".join(name for name, _, _ in engine.SIZE_GROUPS)
    caption(f"Ouyang et al. 2020, Table III: the test split cut by infection / lung volume ratio ({groups}; from the "
            "lesion and lung masks at the run size), each group scored separately (mean ± sd over the fold models); "
            "n = test items in the group, n_positive of the positive class. AUC is undefined (–) in a group holding "
            "one class only. Sensitivity tells how the positive class fares by size, specificity the other class.")


def _attention_effect(base: engine.RunConfig) -> None:
    """The plain and the attention model's support regions against the lesion (and a shortcut marker)."""
    st.subheader("Support with and without attention")
    effect = background(engine.attention_effect, base, method="gradcam", ds=dataset(base),
                        label="Grad-CAM of the plain and the attention model on the test split",
                        name="performance_ouyang_effect", reports=True)
    if effect is None:
        return
    left, right = st.columns(2)
    with left:
        figure(attention_effect_figure(effect), _ouyang_name(base, "attention-effect"),
               key="performance_ouyang_effect_chart")
    with right:
        table = attention_effect_table(effect)
        st.table(table)
        csv_button(effect, _ouyang_name(base, "attention-effect"),
                   key="performance_ouyang_effect_csv")
    marker = ("; on data with the shortcut marker, the share of the support region on the marker and the accuracy "
              "on the test images with and without it" if effect["on_marker"].notna().any() else "")
    caption("The plain model (RN + US) and the model trained with the attention loss (Attention RN + US), fold 0: "
            "the consistency degree (Wan et al. §3.5: the share of the lesion covered by Grad-CAM support, map > "
            f"0.7) over the test images with a lesion mask (column 'with a lesion'){marker}. Means with 95% "
            "percentile-bootstrap intervals over the test images (error bars); overlapping intervals mean the "
            "difference may be chance.")


def _ouyang(run: engine.Run) -> None:
    """Ouyang et al.'s results for this experiment at this depth: the four training variants (Table II), their ROC
    curves, Table III by infection size, and the support with and without attention."""
    base = run.config.replace(fold=0, attention=False, sampling="uniform")
    st.subheader(f"Ouyang et al.: attention and sampling variants at depth {base.depth} (Table II)")
    if base.backbone not in ATTENTION_BACKBONES:
        st.info(f"The online attention needs a backbone whose classifier is one linear layer on pooled features "
                f"({', '.join(ATTENTION_BACKBONES)}); {base.backbone} has a multi-layer head. Choose another on Home.")
        return
    ds = dataset(base)
    key = _ouyang_key(base)
    job = get_job(key)
    running = job is not None and job.running
    after_training(job)
    missing = engine.missing_configs(base, ds)
    if missing:
        _train_variants(base, missing, ds.has_masks and ds.has_lung_masks, running)
    job_panel(key, "performance_ouyang_job", done=trained_message("variant"), what="the rest of the variants")
    try:
        _table2(base, ds)
        _variant_rocs(base, ds)
        st.subheader("By infection size (Table III)")
        _table3(base, ds)
        _attention_effect(base)
    except engine.LungLensError as exc:
        st.warning(str(exc))


def _sections(run: engine.Run) -> dict[str, TabContainer]:
    """The section tabs by URL code (the open one kept in the URL as ``section``; its ``.open`` is True). Only the
    open tab's section is drawn: the others compute nothing until opened."""
    return url_tabs({c: label for c, label in SECTIONS.items() if c != "folds" or run.config.folds > 1}, SECTION_KEY,
                    SECTION_PARAM)[0]


st.title("Performance")
sel, runs = require_runs("Performance")
depth = depth_slider(runs, key="performance_depth")
run = runs[depth]
n_test = int((run.predictions["split"] == "test").sum())
st.caption(f"Run `{run.id}`: {run.config.backbone}, depth {depth}, init {run.config.init}; n_test = {n_test} test "
           f"{'volumes' if run.config.backbone in engine.VOLUME_BACKBONES else 'images'}.")
_report_panel(run)
draw: dict[str, Callable[[], None]] = {
    "table1": lambda: _comparison(run, n_test), "test": lambda: _test_split(run), "folds": lambda: _crossval(run),
    "depth": lambda: _depth(run, runs), "calibration": lambda: calibration_section(run),
    "external": lambda: external_section(run, runs), "ouyang": lambda: _ouyang(run),
    "cheng": lambda: cheng_section(run),
}
for code, tab in _sections(run).items():
    if tab.open:
        with tab:
            draw[code]()
