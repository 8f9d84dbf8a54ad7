"""The Home page: what LungLens is, the data and experiment pickers, training with progress, and the cached runs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

import engine
from dashboard.state import Selection, selection, set_selection, shared_datasets
from dashboard.widgets import cached_fold_runs, runs_table, time_left
from engine.data.access import DATA_ROOT_ENV, allowed_folder, data_root, is_exposed
from engine.jobs import get_job, start_job
from engine.store import stable_hash

if TYPE_CHECKING:
    from engine.prepare import PrepareResult

INITS = ("builtin", "imagenet", "xrv-densenet121", "scratch")
#: Hold-out (1) or k-fold cross-validation with k = 2..10.
FOLD_CHOICES = tuple(range(1, 11))
#: Session-state keys of this session's prepare job (the job itself lives in engine.jobs) and of the finished job
#: already shown, and how often the progress panel redraws while the job runs.
PREPARE_JOB, PREPARE_SEEN = "home_prepare_job", "home_prepare_seen"
POLL_SECONDS = 1.0


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
        st.caption("Synthetic chest radiographs: normal, pneumonia (lobar consolidation), covid (bilateral peripheral "
                   "ground-glass opacities), with lesion and lung masks.")
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


def _run_name(cfg: engine.RunConfig) -> str:
    """``depth 2``, or ``depth 2, fold 3`` in a cross-validated experiment."""
    return f"depth {cfg.depth}" + (f", fold {cfg.fold}" if cfg.folds > 1 else "")


def _missing_label(missing: list[engine.RunConfig]) -> str:
    """The runs to train: ``depths 0, 5``, or per depth the folds (numbered from 0) ``depth 0: folds 0, 2; ...``."""
    if all(cfg.folds == 1 for cfg in missing):
        return f"depths {', '.join(str(c.depth) for c in missing)}"
    folds: dict[int, list[int]] = {}
    for cfg in missing:
        folds.setdefault(cfg.depth, []).append(cfg.fold)
    return "; ".join(f"depth {d}: fold{'s' if len(f) > 1 else ''} {', '.join(map(str, f))}" for d, f in folds.items())


def _train(sel: Selection, missing: list[engine.RunConfig], retrain_damaged: bool = False) -> None:
    """Train the missing runs with a live progress display and an estimate of the time left."""
    overall = st.progress(0.0, text="Starting…")
    current = st.progress(0.0, text="")
    log = st.empty()
    t0 = time.perf_counter()
    executor = engine.executor_from_env()  # $LUNGLENS_RAY_ADDRESS set: each run is a Ray task
    shares = [0.0] * len(missing)  # the done share of each run (on Ray several train at once)

    def progress_for(i: int, cfg: engine.RunConfig):
        def report(p: engine.Progress) -> None:
            if not p.phase.startswith("pretrain"):
                shares[i] = p.fraction
            done = sum(shares) / len(missing)
            elapsed = time.perf_counter() - t0
            eta = f" · about {elapsed / done - elapsed:.0f} s left" if done > 0.02 else ""
            name = _run_name(cfg)
            what = "pretraining the built-in backbone" if p.phase.startswith("pretrain") else name
            overall.progress(min(done, 1.0), text=f"Run {i + 1} of {len(missing)}: {what}{eta}")
            if p.phase == engine.RUN_DONE:
                current.progress(1.0, text=f"{name[0].upper()}{name[1:]} trained")
                return
            current.progress(p.fraction, text=f"Epoch {p.epoch} of {p.epochs} · batch {p.batch}/{p.batches}")
            if p.metrics:
                log.caption(f"Last epoch: validation loss {p.metrics.get('val_loss', float('nan')):.3f}, "
                            f"test ACC {p.metrics.get('test_acc', float('nan')):.3f}")
        return report

    where = " on Ray" if executor is not None else ""
    with st.status(f"Training {len(missing)} run(s){where}…", expanded=True) as box:
        rows = engine.run_sweep(missing, progress_for, status=box.write, retrain_damaged=retrain_damaged,
                                executor=executor)
        box.update(label=f"Trained {len(rows)} run(s) in {time.perf_counter() - t0:.0f} s", state="complete")
    st.cache_resource.clear()


def _prepare_key(runs: list[engine.Run]) -> str:
    """The job key of preparing ``runs``: one job per set of runs, whichever session starts it."""
    return "prepare:" + stable_hash(sorted(r.id for r in runs), 16)


def _prepare_work(run_ids: list[str]):
    """The job: prepare every view of the runs (loaded in the job's thread), reporting progress, stopping on cancel."""
    def work(progress, cancelled) -> PrepareResult:
        from engine.prepare import prepare_runs  # the whole engine stack: loaded when a prepare starts, not with Home

        return prepare_runs([engine.load_run(r) for r in run_ids], progress=progress, cancel=cancelled)
    return work


def _prepare_panel() -> None:
    """This session's prepare job: progress, time left and Cancel while it runs (polled), then how it ended."""
    key = st.session_state.get(PREPARE_JOB)
    job = get_job(key) if key else None
    if job is None:
        return

    def panel() -> None:
        current = get_job(key)
        if current is None:
            return
        if current.running:
            st.progress(current.fraction, text=f"{current.text} · {current.fraction:.0%} · {time_left(current)}")
            if current.cancel_requested:
                st.caption("Cancelling after the current step…")
            elif st.button("Cancel", key="home_prepare_cancel", icon=":material/stop:"):
                current.cancel()
                st.caption("Cancelling after the current step…")
            st.caption("It runs in the background: the other pages stay usable (and get faster as it goes).")
            return
        seen = f"{key}@{current.started}"
        if st.session_state.get(PREPARE_SEEN) != seen:
            st.session_state[PREPARE_SEEN] = seen
            st.rerun()  # the whole page: the button comes back and polling stops
        if current.status == "done":
            result = current.result
            skipped = sum(len(s.notes) for s in result.steps)
            note = f" ({skipped} view(s) do not apply to these runs and were skipped)" if skipped else ""
            st.success(f"Every view of the {len(result.runs)} depth(s) is ready, prepared in {_duration(result.seconds)}"
                       f"{note}: every page now reads them from the cache.", icon=":material/bolt:")
        elif current.status == "cancelled":
            st.info("Prepare cancelled: the views finished before the cancel stay cached; press the button again to "
                    "go on from there.")
        else:
            st.error(f"Prepare stopped with an error: {current.error}")

    st.fragment(panel, run_every=POLL_SECONDS if job.running else None)()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:.0f} s"


def _prepare(sel: Selection, runs: list[engine.Run]) -> None:
    """The "Prepare every view" button: every page's views of every depth computed in the background, cancellable."""
    key = st.session_state.get(PREPARE_JOB)
    job = get_job(key) if key else None
    busy = job is not None and job.running
    if st.button("Prepare every view (for a live demo)", key="home_prepare", type="primary", disabled=busy,
                 icon=":material/bolt:",
                 help=f"Computes every view of the {len(sel.depths)} depth(s) that the pages show (baselines, "
                      "projections, filters, guided backpropagation, explanations and the explanation report, the "
                      "same image across depths) and caches it, so that every page answers at once. It runs in the "
                      "background and can be cancelled; what is already cached is not computed again. The "
                      "explanation report's slow methods make this take long the first time. From a terminal: "
                      "python -m engine prepare."):
        key = _prepare_key(runs)
        start_job(key, f"Prepare {len(runs)} depth(s)", _prepare_work([r.id for r in runs]))
        st.session_state[PREPARE_JOB] = key
        st.session_state.pop(PREPARE_SEEN, None)
        st.rerun()
    _prepare_panel()


def home() -> None:
    """Draw the Home page."""
    st.title("LungLens")
    st.markdown(
        "LungLens trains CNN classifiers of chest X-ray and CT images (COVID-19, pneumonia, normal) and shows, page by "
        "page, **how** they learn and **why** they decide: training curves, diagnostic performance with confidence "
        "intervals, learned features, the layers' filters and neurons, and the image regions that support each decision. "
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
    config_changes, depths = _experiment_picker(sel)
    try:
        new = Selection(sel.config.replace(**changes, **config_changes), depths or sel.depths)
    except engine.LungLensError as exc:
        st.error(str(exc))
        return
    if new != sel:
        set_selection(new)
        sel = new

    st.subheader("3 · Train")
    try:
        runs = cached_fold_runs(sel)
    except engine.DamagedRunError as exc:
        st.error(str(exc))
        if st.button("Train the damaged run(s) again", type="primary", icon=":material/build:"):
            try:
                _train(sel, sel.configs(), retrain_damaged=True)
            except engine.LungLensError as err:
                st.error(str(err))
            else:
                st.rerun()
        return
    except engine.LungLensError as exc:
        st.error(f"The selected data cannot be used: {exc}")
        return
    configs = sel.configs()
    missing = [cfg for cfg in configs if runs[cfg.depth][cfg.fold] is None]
    trained = len(configs) - len(missing)
    per = f": {len(sel.depths)} depth(s) × {sel.folds} folds" if sel.folds > 1 else ""
    st.markdown(f"**{trained} of {len(configs)}** runs of this experiment are trained and cached{per}.")
    if missing:
        label = f"Train {len(missing)} run(s) ({_missing_label(missing)})"
        if st.button(label, type="primary", icon=":material/play_arrow:"):
            try:
                _train(sel, missing)
            except engine.LungLensError as exc:
                st.error(str(exc))
            else:
                st.rerun()
    else:
        st.success("Everything is trained: open Training, Performance, Features, Layers or Support Regions.")
        _prepare(sel, [runs[d][0] for d in sel.depths])

    st.subheader("Cached runs")
    runs_table(engine.list_runs())
    damaged = engine.damaged_runs()
    if len(damaged):
        st.warning(f"{damaged['run'].nunique()} damaged run(s) are not shown or used: "
                   + "; ".join(damaged["problem"]) + f". Fix: {damaged['fix'].iloc[0]}.")



home()
