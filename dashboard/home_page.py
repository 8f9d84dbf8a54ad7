"""The Home page: what LungLens is, the data (with a summary of it) and experiment pickers, training as a background
job with an estimate, progress and cancel, and the cached runs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

import engine
from dashboard.background import cached, forget_results, job_panel, start
from dashboard.state import Selection, selection, set_selection, shared_datasets
from dashboard.widgets import cached_fold_runs, dataset, runs_table
from engine.data.access import DATA_ROOT_ENV, allowed_folder, data_root, is_exposed
from engine.jobs import Job, get_job
from engine.store import stable_hash

if TYPE_CHECKING:
    from engine.prepare import PrepareResult

INITS = ("builtin", "imagenet", "xrv-densenet121", "scratch")
#: Hold-out (1) or k-fold cross-validation with k = 2..10.
FOLD_CHOICES = tuple(range(1, 11))
#: How often the count of trained runs is redrawn while a training job runs.
POLL_SECONDS = 1.0
#: Preview thumbnails per row of the data summary.
PREVIEWS_PER_ROW = 6
BUILTIN_CAPTION = ("Synthetic chest radiographs: normal, pneumonia (lobar consolidation), covid (bilateral peripheral "
                   "ground-glass opacities), with lesion and lung masks.")


def _data_picker(sel: Selection) -> dict:
    st.subheader("1 · Data")
    shared = shared_datasets()
    options = ["Built-in phantoms (generated, no download)", *[f"Shared: {n}" for n in shared], "A folder on this machine"]
    current = sel.config.data
    if current == "builtin":
        index = 0
    elif Path(current).name in shared and Path(current) == shared[Path(current).name]:
        index = 1 + list(shared).index(Path(current).name)
    else:
        index = len(options) - 1
    choice = st.radio("Images", options, index=index, key="home_data_choice")
    changes: dict = {}
    if choice == options[0]:
        changes["data"] = "builtin"
        c1, c2 = st.columns(2)
        changes["builtin_per_class"] = c1.number_input("Images per class", 10, 3000, sel.config.builtin_per_class, 10)
        changes["confounder_prob"] = c2.slider(
            "Shortcut marker: P(marker | covid)", 0.0, 1.0, sel.config.confounder_prob, 0.05,
            help="0 = off. A bright device-like marker outside the lungs that co-occurs with covid with this "
                 "probability (and with the other classes with 1 − p), to reproduce 'right for the wrong reason' "
                 "(Lee et al. 2020).")
        st.caption(BUILTIN_CAPTION)
    elif choice.startswith("Shared: "):
        changes["data"] = str(shared[choice.removeprefix("Shared: ")])
    else:
        exposed = is_exposed(st.get_option("server.address"))
        limit = data_root() if exposed else None
        path = st.text_input("Folder (ROOT/images/<class>/* or ROOT/<class>/*)",
                             value="" if current == "builtin" or Path(current).name in shared else current,
                             disabled=exposed and limit is None,
                             help=f"Only folders under {limit}." if limit else None)
        if exposed and limit is None:
            st.info(f"Typed folders are off: this dashboard is reachable from the network. Set {DATA_ROOT_ENV} to the "
                    "folder holding the datasets it may read (see README, Reliability).")
        elif path:
            try:
                changes["data"] = allowed_folder(path, exposed)
            except engine.LungLensError as exc:
                st.error(str(exc))
        st.caption("Optional: ROOT/masks/<class>/<same name>.png (lesions), ROOT/lung_masks/…, ROOT/manifest.csv "
                   "with file,class,patient_id,split. See README.")
    return changes


def _data_summary(sel: Selection) -> bool:
    """What the chosen data holds, read from it: images per class and split, masks, image sizes, one image per class.
    False (after saying why) when the data cannot be read."""
    c = sel.config
    try:
        ds = dataset(c)
        summary: engine.DataSummary = cached(engine.data_summary, ds, test_fraction=c.test_fraction,
                                             val_fraction=c.val_fraction, folds=c.folds, seed=c.seed, clahe=c.clahe)
    except engine.LungLensError as exc:
        st.error(f"The selected data cannot be used: {exc}")
        return False
    left, right = st.columns([3, 2])
    groups = (f" from {summary.groups:,} patients or groups (kept within one split)"
              if summary.groups < summary.images else "")
    skipped = f" {summary.skipped} unreadable image(s) skipped." if summary.skipped else ""
    left.markdown(f"**{sel.data_label}**: {summary.images:,} images{groups} in {summary.classes_text()}.{skipped}")
    table = summary.table.rename(columns={"lesion_masks": "lesion masks", "lung_masks": "lung masks"},
                                 index={"all": "all classes"})
    fold = f" (fold 0 of {c.folds})" if c.folds > 1 else ""
    left.dataframe(table, width="stretch", column_config={"_index": st.column_config.TextColumn("class")})
    with left:
        if summary.split_problem:
            st.warning(f"These images cannot be split for training: {summary.split_problem}.")
        else:
            st.caption(f"train / val / test: the split every run of this experiment uses{fold}; {summary.split_note}.")
        st.caption(f"{summary.masks_text()} Stored images: {summary.sizes_text()}; the runs see them resized to "
                   f"{c.image_size} × {c.image_size} px{' after CLAHE' if c.clahe else ''}.")
    with right:
        st.caption("One image per class, as the runs see it" + (" (lesion mask outlined in red)" if any(
            p.outlined for p in summary.previews) else ""))
        previews = list(summary.previews)
        for row in range(0, len(previews), PREVIEWS_PER_ROW):
            chunk = previews[row: row + PREVIEWS_PER_ROW]
            for col, preview in zip(st.columns(len(chunk)), chunk):
                col.image(preview.pixels, caption=preview.label, width="stretch")
    return True


def _experiment_picker(sel: Selection) -> tuple[dict, tuple[int, ...]]:
    st.subheader("2 · Experiment")
    c = sel.config
    c1, c2, c3 = st.columns(3)
    backbone = c1.selectbox("Backbone", engine.BACKBONES, index=engine.BACKBONES.index(c.backbone))
    init = c2.selectbox("Initialisation", INITS, index=INITS.index(c.init) if c.init in INITS else 0,
                        help="builtin: pretrained once on the phantom source corpus (no download); imagenet: "
                             "torchvision's ImageNet weights, downloaded into TORCH_HOME/hub/checkpoints on first use; "
                             "xrv-densenet121 (DenseNet-121 only): TorchXRayVision's weights pretrained on public "
                             "chest X-ray corpora, downloaded into ~/.torchxrayvision on first use; scratch: random.")
    epochs = c3.number_input("Epochs (max; early stopping on validation loss)", 1, 200, c.epochs)
    depths = st.multiselect("Fine-tuning depths to compare (trainable conv blocks, Lee et al.)",
                            list(range(engine.N_BLOCKS + 1)), default=list(sel.depths))
    c4, c5 = st.columns(2)
    size = c4.select_slider("Image size (px)", [64, 96, 128, 160, 192, 224], value=c.image_size,
                            help="224 is the papers' size; 128 keeps the CPU demo to about 12 minutes from a cold "
                                 "cache (2 cores).")
    clahe = c5.toggle("CLAHE contrast equalisation (Lee et al.)", value=c.clahe)
    fold_choices = sorted({*FOLD_CHOICES, c.folds})
    folds = st.selectbox(
        "Cross-validation folds", fold_choices, index=fold_choices.index(c.folds), key="home_folds",
        format_func=lambda k: "1 (hold-out)" if k == 1 else f"{k} folds",
        help="1: one train/validation/test split. k > 1: the test split stays the same and the rest is cut into k "
             "patient-disjoint folds; each fold is the validation split of one run trained on the other k − 1, so "
             "every depth trains k runs. 5 is the usual choice: Lee et al. 2020 (J Pers Med) and Wan et al. 2021 "
             "(Entropy) use five folds. Performance then shows per-fold ROC curves with mean ± sd AUC (Ouyang et al. "
             "2020, fig. 4) and Training one curve per fold.")
    # fc6/fc7 narrowing (the CPU demo's) only exists for AlexNet/VGG, and ImageNet weights come with the full head.
    head_width = c.head_width if backbone in ("alexnet", "vgg16", "vgg19") and init != "imagenet" else None
    return ({"backbone": backbone, "init": init, "epochs": int(epochs), "image_size": int(size), "clahe": clahe,
             "head_width": head_width, "folds": int(folds), "fold": 0}, tuple(sorted(depths)))


def _missing_label(missing: list[engine.RunConfig]) -> str:
    """The runs to train: ``depths 0, 5``, or per depth the folds (numbered from 0) ``depth 0: folds 0, 2; ...``."""
    if all(cfg.folds == 1 for cfg in missing):
        return f"depths {', '.join(str(c.depth) for c in missing)}"
    folds: dict[int, list[int]] = {}
    for cfg in missing:
        folds.setdefault(cfg.depth, []).append(cfg.fold)
    return "; ".join(f"depth {d}: fold{'s' if len(f) > 1 else ''} {', '.join(map(str, f))}" for d, f in folds.items())


def _train_key(sel: Selection) -> str:
    """The job key of training this experiment (every depth and fold): one job per experiment, whichever session."""
    return "train:" + stable_hash(sel.config.replace(depth=0, fold=0).key_dict(), 16)


def _start_training(sel: Selection, configs: list[engine.RunConfig], estimate: engine.TrainingEstimate | None,
                    retrain_damaged: bool = False) -> None:
    """Start training ``configs`` as the experiment's background job and rerun, so the panel replaces the button."""
    def work(progress, cancelled) -> list[engine.SweepRow]:
        return engine.train_missing(configs, progress=progress, cancel=cancelled, estimate=estimate,
                                    retrain_damaged=retrain_damaged)

    where = " on Ray" if engine.executor_from_env() is not None else ""
    start(_train_key(sel), f"Training {len(configs)} run(s){where}", work)
    st.rerun()


def _forget_run_lists(_key: str, _started: float) -> None:
    """Drop the dashboard's caches that list or summarise runs (once per finished job: see ``_after_training``)."""
    st.cache_resource.clear()
    forget_results()


def _after_training(job: Job | None) -> None:
    """Once a training job has ended (done, cancelled or failed), its runs are new: the caches listing runs go, once
    per job for the whole server (``cached`` remembers the call, made after the caches are cleared)."""
    if job is not None and not job.running:
        cached(_forget_run_lists, job.key, job.started)


def _trained(job: Job) -> None:
    """A finished training job: how many runs it trained in how long."""
    rows: list[engine.SweepRow] = job.result
    fresh = sum(not r.cached for r in rows)
    reused = f" ({len(rows) - fresh} more came from the cache)" if fresh < len(rows) else ""
    st.success(f"Trained {fresh} run(s) in {_duration(job.elapsed)}{reused}.", icon=":material/check_circle:")


def _count_line(sel: Selection, running: bool) -> None:
    """``**k of n** runs ... trained``, redrawn every second while a training job runs, so it follows the runs."""
    def line() -> None:
        runs = cached_fold_runs(sel)
        configs = sel.configs()
        trained = sum(runs[cfg.depth][cfg.fold] is not None for cfg in configs)
        per = f": {len(sel.depths)} depth(s) × {sel.folds} folds" if sel.folds > 1 else ""
        st.markdown(f"**{trained} of {len(configs)}** runs of this experiment are trained and cached{per}.")

    st.fragment(line, run_every=POLL_SECONDS if running else None)()


def _train_button(sel: Selection, missing: list[engine.RunConfig], running: bool) -> None:
    """The Train button (disabled while the experiment trains) with a rough estimate of the time it takes."""
    try:
        estimate: engine.TrainingEstimate | None = cached(engine.estimate_training, missing, len(dataset(sel.config)))
    except engine.LungLensError as exc:
        estimate = None
        st.caption(f"No time estimate: {exc}")
    left, right = st.columns([2, 3])
    label = f"Train {len(missing)} run(s) ({_missing_label(missing)})"
    if left.button(label, type="primary", icon=":material/play_arrow:", disabled=running, key="home_train",
                   help="Training of this experiment is running (started here or in another session): its progress "
                        "is below." if running else "Trains in the background: the pages stay usable; Cancel stops "
                                                     "it, keeping the runs finished before."):
        _start_training(sel, missing, estimate)
    if estimate is not None:
        right.markdown(f"Estimated time: **{engine.duration(estimate.seconds)}** (rough)")
        right.caption(estimate.basis)


def _train_section(sel: Selection) -> None:
    """Step 3: how many runs are trained, Train with an estimate, and the training job's panel."""
    st.subheader("3 · Train")
    key = _train_key(sel)
    job = get_job(key)
    running = job is not None and job.running
    _after_training(job)
    try:
        runs = cached_fold_runs(sel)
    except engine.DamagedRunError as exc:
        st.error(str(exc))
        if st.button("Train the damaged run(s) again", type="primary", icon=":material/build:", disabled=running,
                     key="home_retrain"):
            _start_training(sel, sel.configs(), None, retrain_damaged=True)
        job_panel(key, "home_train", done=_trained, what="the rest of the training")
        return
    except engine.LungLensError as exc:
        st.error(f"The selected data cannot be used: {exc}")
        return
    missing = [cfg for cfg in sel.configs() if runs[cfg.depth][cfg.fold] is None]
    _count_line(sel, running)
    if missing:
        _train_button(sel, missing, running)
    job_panel(key, "home_train", done=_trained, what="the rest of the training")
    if not missing and not running:
        st.success("Everything is trained: open Training, Performance, Features, Layers or Support Regions.")
        _prepare(sel, [runs[d][0] for d in sel.depths])


def _prepare_key(runs: list[engine.Run]) -> str:
    """The job key of preparing ``runs``: one job per set of runs, whichever session starts it."""
    return "prepare:" + stable_hash(sorted(r.id for r in runs), 16)


def _prepare_work(run_ids: list[str]):
    """The job: prepare every view of the runs (loaded in the job's thread), reporting progress, stopping on cancel."""
    def work(progress, cancelled) -> PrepareResult:
        from engine.prepare import prepare_runs  # the whole engine stack: loaded when a prepare starts, not with Home

        return prepare_runs([engine.load_run(r) for r in run_ids], progress=progress, cancel=cancelled)
    return work


def _prepared(job: Job) -> None:
    """A finished prepare: how long it took and how many views did not apply."""
    result: PrepareResult = job.result
    skipped = sum(len(s.notes) for s in result.steps)
    note = f" ({skipped} view(s) do not apply to these runs and were skipped)" if skipped else ""
    st.success(f"Every view of the {len(result.runs)} depth(s) is ready, prepared in {_duration(result.seconds)}"
               f"{note}: every page now reads them from the cache.", icon=":material/bolt:")


def _duration(seconds: float) -> str:
    """``42 s`` or ``2 min 5 s``: how long something took."""
    whole = round(seconds)
    return f"{whole} s" if whole < 90 else f"{whole // 60} min {whole % 60} s"


def _prepare(sel: Selection, runs: list[engine.Run]) -> None:
    """The "Prepare every view" button: every page's views of every depth computed in the background, cancellable."""
    key = _prepare_key(runs)
    job = get_job(key)
    if st.button("Prepare every view (for a live demo)", key="home_prepare", type="primary",
                 disabled=job is not None and job.running, icon=":material/bolt:",
                 help=f"Computes every view of the {len(sel.depths)} depth(s) that the pages show (baselines, "
                      "projections, filters, guided backpropagation, explanations and the explanation report, the "
                      "same image across depths) and caches it, so that every page answers at once. It runs in the "
                      "background and can be cancelled; what is already cached is not computed again. The "
                      "explanation report's slow methods make this take long the first time. From a terminal: "
                      "python -m engine prepare."):
        start(key, f"Prepare {len(runs)} depth(s)", _prepare_work([r.id for r in runs]))
        st.rerun()
    job_panel(key, "home_prepare", done=_prepared, what="the rest of the views")


def home() -> None:
    """Draw the Home page."""
    st.title("LungLens")
    st.markdown(
        "LungLens trains CNN classifiers of chest X-ray and CT images (such as COVID-19 against other findings and "
        "normal lungs) and shows, page by page, **how** they learn and **why** they decide: training curves, diagnostic "
        "performance with confidence intervals, learned features, the layers' filters and neurons, and the image "
        "regions that support each decision. "
        "It follows the interpretation architecture of Wan et al. (Entropy 2021) and the fine-tuning-depth study of "
        "Lee et al. (J Pers Med 2020)."
    )
    with st.expander("How to read the pages"):
        st.markdown(
            "- **Training**: loss and the five criteria per epoch, train vs test; a depth slider switches runs; with "
            "k folds, one curve per fold.\n"
            "- **Performance**: the fine-tuned CNN against LBP + SVM and deep features + SVM, with 95% CIs; ROC, PR, "
            "confusion matrices; metric vs fine-tuning depth; with k folds, per-fold ROC curves and mean ± sd AUC; "
            "calibration and operating points; an external test on another site's folder.\n"
            "- **Features**: deep and LBP features projected to 2-D/3-D (PCA, kernel PCA, t-SNE) with separability scores.\n"
            "- **Layers**: first-layer filters before/after fine-tuning, hidden neurons by guided backpropagation.\n"
            "- **Support Regions**: Grad-CAM, LIME and occlusion maps, their overlap with lesion masks (consistency "
            "degree), and cases right for the wrong reason, on the test split or an external folder; a new image is "
            "diagnosed with a warning when it is unlike the training data."
        )
    sel = selection()
    changes = _data_picker(sel)
    summary_slot = st.container()  # under "1 · Data"; drawn once the experiment (split, size, CLAHE) is known
    config_changes, depths = _experiment_picker(sel)
    try:
        new = Selection(sel.config.replace(**changes, **config_changes), depths or sel.depths)
    except engine.LungLensError as exc:
        st.error(str(exc))
        return
    if new != sel:
        set_selection(new)
        sel = new
    with summary_slot:
        usable = _data_summary(sel)
    if usable:
        _train_section(sel)

    st.subheader("Cached runs")
    runs_table(engine.list_runs())
    damaged = engine.damaged_runs()
    if len(damaged):
        st.warning(f"{damaged['run'].nunique()} damaged run(s) are not shown or used: "
                   + "; ".join(damaged["problem"]) + f". Fix: {damaged['fix'].iloc[0]}.")


home()
