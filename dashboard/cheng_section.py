"""Performance tab "backbones x augmentation": Cheng et al.'s Table 1 on this experiment. Pick backbones and a depth;
the runs missing train as a background job; bars and a heatmap of the scores and of the change augmentation makes,
and the table with 95% CIs (``engine.cheng``)."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

import engine
from dashboard.background import cached, job_panel, start
from dashboard.cheng_charts import augmentation_bars, change_heatmap, figure_label
from dashboard.exports import csv_button
from dashboard.state import after_training
from dashboard.url_state import url_widget
from dashboard.widgets import caption, dataset, figure
from engine.cheng import AUGMENT, FIGURES
from engine.jobs import Job, get_job
from engine.models.names import BACKBONES, N_BLOCKS, VOLUME_BACKBONES
from engine.store import stable_hash

#: The backbones the tab offers: every 2-D one of the registry (augmentation applies to 2-D images).
IMAGE_BACKBONES = tuple(b for b in BACKBONES if b not in VOLUME_BACKBONES)
#: Cheng et al.'s setting, for the caption.
PAPER = ("Cheng et al. compared 10 backbones on 4 classes (covid, normal, viral and bacterial pneumonia), each "
         "trained for 100 epochs on 1,412 real chest X-rays with and without their augmentation: 7 of 10 improved "
         "with it, by about +1% accuracy on average (their text; e.g. ResNet-50 79% without, 80% with).")


def train_button(job_key: str, missing: list[engine.RunConfig], n_images: int, *, what: str, key: str,
                 running: bool, help: str) -> None:
    """A button that trains ``missing`` as the background job ``job_key`` (its ``job_panel`` shows progress and
    Cancel), labelled with the number of runs and the estimated time; the estimate's basis under it."""
    try:
        estimate: engine.TrainingEstimate | None = cached(engine.estimate_training, missing, n_images)
    except engine.LungLensError:
        estimate = None
    label = f"Train the missing {what} ({len(missing)} run(s)"
    label += f", {engine.duration(estimate.seconds)})" if estimate is not None else ")"

    def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> list[engine.SweepRow]:
        return engine.train_missing(missing, progress=progress, cancel=cancelled, estimate=estimate)

    if st.button(label, key=key, type="primary", icon=":material/play_arrow:", disabled=running, help=help):
        start(job_key, f"Training the missing {what} ({len(missing)} run(s))", work)
        st.rerun()
    if estimate is not None:
        st.caption(estimate.basis)


def trained_message(what: str) -> Callable[[Job], None]:
    """``job_panel``'s ``done``: how many runs the job trained, and how long it took."""
    def done(job: Job) -> None:
        rows: list[engine.SweepRow] = job.result
        st.success(f"Trained {sum(not r.cached for r in rows)} {what} run(s) in {job.elapsed:.0f} s.",
                   icon=":material/check_circle:")
    return done


def _job_key(base: engine.RunConfig, backbones: list[str], depth: int) -> str:
    """The job training a comparison's missing runs (one per experiment, depth and backbones, whichever session)."""
    experiment = {k: v for k, v in base.key_dict().items() if k not in ("backbone", "augment", "head_width", "depth")}
    return "cheng:" + stable_hash([experiment, sorted(backbones), depth], 16)


def _name(depth: int, what: str) -> str:
    """A file-name stem for an export of the tab: ``lunglens-depth5-backbones-augmentation-<what>``."""
    return f"lunglens-depth{depth}-backbones-augmentation-{what}"


def _status(configs: list[engine.RunConfig], runs: list[engine.Run]) -> pd.DataFrame:
    """Which runs exist: per backbone, without and with augmentation, its training time or "not trained"."""
    seconds = {(r.config.backbone, r.config.augment): r.result["seconds"] for r in runs}
    backbones = list(dict.fromkeys(c.backbone for c in configs))
    return pd.DataFrame({"backbone": backbones, **{
        f"{'with' if on else 'without'} augmentation": [
            f"trained in {seconds[(b, on)]:.0f} s" if (b, on) in seconds else "not trained" for b in backbones]
        for on in AUGMENT}})


def _pickers(run: engine.Run) -> tuple[list[str], int]:
    """The backbones (default: this run's) and the depth (default: this run's) to compare."""
    left, right = st.columns([4, 1])
    depth = url_widget(right.selectbox, "Depth", list(range(N_BLOCKS + 1)), key="performance_cheng_depth",
                       param="cheng_depth", default=run.config.depth,
                       help="Fine-tuning depth of every run of the comparison (trainable conv blocks).")
    backbones = url_widget(left.multiselect, "Backbones", IMAGE_BACKBONES, key="performance_cheng_backbones",
                           param="cheng_backbones", default=[run.config.backbone],
                           help="Each is trained with and without augmentation on this experiment's data and split.")
    return backbones, depth


def _views(table: pd.DataFrame, effect: pd.DataFrame, classes: list[str], depth: int, base: engine.RunConfig) -> None:
    """The bars, the change heatmap and the table with CIs, for the picked score and class."""
    left, right = st.columns([1, 1])
    score = url_widget(left.selectbox, "Score", FIGURES, key="performance_cheng_figure", param="cheng_figure",
                       default="accuracy")
    class_ = url_widget(right.selectbox, "Class (precision, recall, F1: one-vs-rest)", classes,
                        key="performance_cheng_class", param="cheng_class", default=classes[0])
    left, right = st.columns([1, 1])
    with left:
        figure(augmentation_bars(table, score, class_), _name(depth, figure_label(score, class_)),
               key="performance_cheng_bars")
    if effect.empty:
        right.info("The change appears once a backbone has both runs, with and without augmentation.",
                   icon=":material/pending:")
    else:
        with right:
            figure(change_heatmap(effect, classes, "F1" if score == "accuracy" else score),
                   _name(depth, "change"), key="performance_cheng_change")
    view = engine.table1_view(table, effect, class_).drop(columns=["depth", "fold"])
    st.dataframe(view, hide_index=True, width="stretch", key="performance_cheng_table",
                 column_config={"seconds": st.column_config.NumberColumn("wall s", format="%.1f"),
                                "parameters": st.column_config.NumberColumn(format="localized")})
    csv_button(table, _name(depth, "table"), key="performance_cheng_csv")
    gained, pairs, mean = engine.improved(effect)
    tally = (f" Here augmentation raised the test accuracy of {gained} of {pairs} backbone(s); mean change "
             f"{mean:+.3f}." if pairs else "")
    caption(f"Cheng et al.'s Table 1 on this experiment ({base.data}, {base.image_size} px, {base.epochs} epoch(s), "
            f"init {base.init}, depth {depth}): every run on the same data, seed and split, so all score the same "
            f"{int(table['n_test'].iloc[0])} test images. Accuracy over every class; precision, recall and F1 of the "
            f"chosen class one-vs-rest (Cheng et al. count covid as the positive: their Table 1; every class: their "
            "Tables 2-3). Brackets: 95% percentile-bootstrap intervals over the test images (1,000 resamples, seed "
            "0, the same resamples for every run, so the change's interval is paired); the change is with - "
            "without. Wall s: each run's training time on this machine (pretraining of a built-in backbone "
            f"excluded; the change row: with - without); parameters: the model's weights.{tally} {PAPER}")


def cheng_section(run: engine.Run) -> None:
    """Cheng et al.'s Table 1 for this experiment: the chosen backbones with and without augmentation."""
    st.subheader("Backbones with and without augmentation (Cheng et al., Table 1)")
    if run.config.backbone in VOLUME_BACKBONES:
        st.info("Cheng et al.'s augmentation applies to 2-D images: this experiment holds 3-D volumes. Choose 2-D "
                "data on Home for this comparison.", icon=":material/info:")
        return
    backbones, depth = _pickers(run)
    if not backbones:
        st.info("Pick one or more backbones to compare.", icon=":material/info:")
        return
    base = run.config.replace(depth=depth)
    ds = dataset(base)
    try:  # e.g. an experiment with Ouyang's attention, which AlexNet and VGG cannot train
        configs = engine.backbone_configs(base, backbones, [depth], all_folds=False)
    except engine.ConfigError as exc:
        st.warning(f"These backbones cannot run this experiment: {exc}", icon=":material/warning:")
        return
    key = _job_key(base, backbones, depth)
    job = get_job(key)
    running = job is not None and job.running
    after_training(job)
    runs = engine.backbone_runs(configs, ds)
    st.dataframe(_status(configs, runs), hide_index=True, key="performance_cheng_status")
    trained = {(r.config.backbone, r.config.augment) for r in runs}
    missing = [c for c in configs if (c.backbone, c.augment) not in trained]
    if missing:
        train_button(key, missing, len(ds), what="backbone x augmentation", key="performance_cheng_train",
                     running=running, help="Trains in the background, each run on this experiment's data and split; "
                                           "Cancel stops it, keeping the runs finished before.")
    job_panel(key, "performance_cheng_job", done=trained_message("backbone x augmentation"),
              what="the rest of the runs")
    if not runs:
        st.info(f"No run of {', '.join(backbones)} at depth {depth} is trained yet: train them above, or with "
                f"`python -m engine sweep --backbones {','.join(backbones)} --augment both --depths {depth}` and "
                "this experiment's options.", icon=":material/pending:")
        return
    try:
        table = cached(engine.augmentation_table, runs)
        effect = cached(engine.augmentation_effect, runs)
    except engine.LungLensError as exc:
        st.warning(str(exc))
        return
    _views(table, effect, engine.class_order(runs[0]), depth, base)
