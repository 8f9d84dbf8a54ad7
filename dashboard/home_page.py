"""The Home page: what LungLens is, the data (with a summary of it) and experiment pickers, training as a background
job with an estimate, progress and cancel, and the cached runs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

import engine
from dashboard.background import background, cached, job_panel, start
from dashboard.external_picker import checked_folder
from dashboard.state import Selection, after_training, selection, set_selection, shared_datasets
from dashboard.widgets import cached_fold_runs, dataset, runs_table
from engine.config import SAMPLINGS
from engine.data.access import data_root, is_exposed
from engine.data.sources import BUILTIN_CT, BUILTIN_SOURCES
from engine.data.volume import HU_WINDOW, volume_shape
from engine.jobs import Job, get_job
from engine.models.names import ATTENTION_BACKBONES, MLP_HEAD_BACKBONES
from engine.store import stable_hash

if TYPE_CHECKING:
    from engine.prepare import PrepareResult

INITS = ("builtin", "imagenet", "xrv-densenet121", "scratch")
#: Initialisations of a 3-D backbone: there are no ImageNet or chest X-ray weights in 3-D.
VOLUME_INITS = ("builtin", "scratch")
#: Image sides (px) of a 2-D run, and run sizes of a 3-D one (a volume of ``volume_shape(size)`` voxels).
IMAGE_SIZES = (64, 96, 128, 160, 192, 224)
VOLUME_SIZES = (32, 48, 64, 96, 128, 192, 256)
#: Hold-out (1) or k-fold cross-validation with k = 2..10.
FOLD_CHOICES = tuple(range(1, 11))
#: How often the count of trained runs is redrawn while a training job runs.
POLL_SECONDS = 1.0
#: Preview thumbnails per row of the data summary.
PREVIEWS_PER_ROW = 6
#: The built-in data sources as step 1 offers them, with what they hold.
BUILTIN_CHOICES = {name: source.label for name, source in BUILTIN_SOURCES.items()}
FOLDER_CHOICE = "A folder on this machine"
#: The preset an experiment starts from when the data's dimensionality changes: 2-D images or 3-D volumes.
DIM_PRESETS = {2: "demo", 3: "ct"}
#: How training batches are drawn, in words (``RunConfig.sampling``).
SAMPLING_NAMES = {"uniform": "uniform (every image alike)",
                  "size-balanced": "size-balanced (rare infection sizes of each class oversampled)",
                  "dual": "dual (uniform + size-balanced models, combined by eq. 5)"}
ATTENTION_HELP = (
    "Ouyang et al. 2020 (IEEE TMI), eqs. 1-4: the attention map A = ReLU(conv1×1(f, w)) of the last feature maps f, "
    "with w the classifier's weights of the class, is upsampled, normalised and trimmed to T(A) = sigmoid(α (A − β)) "
    "with α = 100, β = 0.4; L_ex = Σ (T(A) − M)² / (Σ T(A) + Σ M) pulls it towards the lesion mask M of the positive "
    "(covid) training cases that have one, and the loss trained is L_c + λ L_ex with λ = 0.5. Needs lesion masks "
    "and a backbone whose classifier is one linear layer on pooled features ({backbones})."
)
SAMPLING_HELP = (
    "Ouyang et al. 2020, §III-C: uniform draws every training image alike; size-balanced bins the images by infection "
    "/ lung volume ratio and oversamples the rare sizes of each class (small-infection covid, large-infection CAP); "
    "dual trains one model of each and combines their probabilities by their eq. 5, P = w P_uniform + (1 − w) "
    "P_size-balanced, with w = 0.35 where the infection ratio is below 0.001 or above 0.030 and 0.96 otherwise. "
    "Size-balanced and dual need lesion and lung masks (for the ratio)."
)


def _chosen_folder(current: str, shared: dict[str, Path]) -> str | None:
    """The folder typed for "A folder on this machine" (checked against the data root when exposed), or None."""
    exposed = is_exposed(st.get_option("server.address"))
    limit = data_root() if exposed else None
    path = st.text_input("Folder (ROOT/images/<class>/* or ROOT/<class>/*)",
                         value="" if current in BUILTIN_CHOICES or Path(current).name in shared else current,
                         disabled=exposed and limit is None,
                         help=f"Only folders under {limit}." if limit else None)
    st.caption("Images (PNG, JPEG, DICOM, ...) or CT volumes (NIfTI: .nii, .nii.gz), not mixed. Optional: "
               "ROOT/masks/<class>/<same name> (lesions), ROOT/lung_masks/…, ROOT/manifest.csv with "
               "file,class,patient_id,split. See README.")
    return checked_folder(path, exposed, limit)


def data_ndim(cfg: engine.RunConfig) -> int | None:
    """2 or 3: whether the config's data are images or volumes (None when they cannot be read)."""
    if cfg.data in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[cfg.data].ndim
    try:
        return dataset(cfg).ndim
    except engine.LungLensError:
        return None


def for_data(sel: Selection, data: str) -> Selection:
    """``sel`` on ``data``; when the data's dimensionality is not the backbone's, the experiment of its preset
    (``DIM_PRESETS``: the CT demo for volumes, the 2-D demo for images) on that data, the folds kept."""
    moved = sel.with_config(data=data)
    ndim = data_ndim(moved.config)
    if ndim is None or ndim == (3 if sel.volumes else 2):
        return moved
    preset = engine.preset(DIM_PRESETS[ndim])
    return Selection(preset.config.replace(data=data, folds=sel.config.folds), preset.depths)


def _data_picker(sel: Selection) -> Selection:
    """Step 1: the data source and its options; returns the selection on that data (see ``for_data``)."""
    st.subheader("1 · Data")
    shared = shared_datasets()
    options = [*BUILTIN_CHOICES.values(), *[f"Shared: {n}" for n in shared], FOLDER_CHOICE]
    current = sel.config.data
    if current in BUILTIN_CHOICES:
        index = list(BUILTIN_CHOICES).index(current)
    elif Path(current).name in shared and Path(current) == shared[Path(current).name]:
        index = len(BUILTIN_CHOICES) + list(shared).index(Path(current).name)
    else:
        index = len(options) - 1
    choice = st.radio("Images", options, index=index, key="home_data_choice")
    if choice.startswith("Shared: "):
        return for_data(sel, str(shared[choice.removeprefix("Shared: ")]))
    if choice == FOLDER_CHOICE:
        folder = _chosen_folder(current, shared)
        return sel if folder is None else for_data(sel, folder)
    data = next(d for d, label in BUILTIN_CHOICES.items() if label == choice)
    sel = for_data(sel, data)
    c1, c2 = st.columns(2)
    if data == BUILTIN_CT:
        per_class = c1.number_input("Volumes per class", 10, 2000, sel.config.builtin_per_class, 10,
                                    help="Generated once (a few seconds a volume) and cached.")
        sel = sel.with_config(builtin_per_class=int(per_class))
    else:
        per_class = c1.number_input("Images per class", 10, 3000, sel.config.builtin_per_class, 10)
        marker = c2.slider(
            "Shortcut marker: P(marker | covid)", 0.0, 1.0, sel.config.confounder_prob, 0.05,
            help="0 = off. A bright device-like marker outside the lungs that co-occurs with covid with this "
                 "probability (and with the other classes with 1 − p), to reproduce 'right for the wrong reason' "
                 "(Lee et al. 2020).")
        sel = sel.with_config(builtin_per_class=int(per_class), confounder_prob=marker)
    st.caption(BUILTIN_SOURCES[data].caption)
    return sel


def _infection_spread(sel: Selection, ds: engine.Dataset) -> None:
    """The infection / lung ratio per class (quartiles, share per Table III group), computed in the background."""
    spread = background(engine.infection_spread, ds, sel.config.image_size, label="Infection ratios from the masks",
                        name="home_infection", reports=True)
    if spread is None:
        return
    if spread.empty:
        st.caption("No item has both a lesion and a lung mask: the infection ratio is unknown.")
        return
    groups = [name for name, _, _ in engine.SIZE_GROUPS]
    st.dataframe(spread, width="stretch", key="home_infection_table",
                 column_config={"_index": st.column_config.TextColumn("class"),
                                **{q: st.column_config.NumberColumn(format="%.4f")
                                   for q in spread.columns if q not in groups and q != "n"},
                                **{g: st.column_config.NumberColumn(f"share {g}", format="percent") for g in groups}})
    st.caption("Infection / lung volume ratio per class, from the lesion and lung masks at the run size (what "
               "size-balanced sampling bins by): n with both masks, min, quartiles (q1, median, q3) and max, and the "
               "share of each class in the three infection-size groups of Ouyang et al.'s Table III.")


def _sizes_caption(summary: engine.DataSummary, c: engine.RunConfig) -> str:
    """What the stored images (or volumes) are and what the runs make of them."""
    if summary.ndim == 3:
        seen = (f"the runs see them reoriented, resampled to one spacing, lung-windowed ({HU_WINDOW[0]:g} to "
                f"{HU_WINDOW[1]:g} HU) and padded or cropped to {' × '.join(map(str, volume_shape(c.image_size)))} "
                "voxels (slices × rows × columns)")
    else:
        seen = f"the runs see them resized to {c.image_size} × {c.image_size} px{' after CLAHE' if c.clahe else ''}"
    return f"{summary.masks_text()} Stored {summary.unit}: {summary.sizes_text()}; {seen}."


def _preview_caption(preview) -> str:
    """A thumbnail's caption: the class, and for a volume the axial slice shown."""
    if preview.slice is None:
        return preview.label
    k, n = preview.slice
    return f"{preview.label} · axial slice {k + 1} of {n}"


def _data_summary(sel: Selection) -> bool:
    """What the chosen data holds, read from it: images (volumes) per class and split, masks, sizes, one image (an
    axial slice) per class, the infection ratios. False (after saying why) when the data cannot be read."""
    c = sel.config
    try:
        ds = dataset(c)
        summary: engine.DataSummary | None = background(
            engine.data_summary, ds, test_fraction=c.test_fraction, val_fraction=c.val_fraction, folds=c.folds,
            seed=c.seed, clahe=c.clahe, label="Reading the data summary", name="home_summary")
    except engine.LungLensError as exc:
        st.error(f"The selected data cannot be used: {exc}")
        return False
    if summary is None:  # read in the background: its panel is drawn; training can start meanwhile
        return True
    left, right = st.columns([3, 2])
    unit = summary.unit
    groups = (f" from {summary.groups:,} patients or groups (kept within one split)"
              if summary.groups < summary.images else "")
    skipped = f" {summary.skipped} unreadable {unit[:-1]}(s) skipped." if summary.skipped else ""
    left.markdown(f"**{sel.data_label}**: {summary.images:,} {unit}{groups} in {summary.classes_text()}.{skipped}")
    table = summary.table.rename(columns={"images": unit, "lesion_masks": "lesion masks", "lung_masks": "lung masks"},
                                 index={"all": "all classes"})
    fold = f" (fold 0 of {c.folds})" if c.folds > 1 else ""
    left.dataframe(table, width="stretch", column_config={"_index": st.column_config.TextColumn("class")})
    with left:
        if summary.split_problem:
            st.warning(f"These {unit} cannot be split for training: {summary.split_problem}.")
        else:
            st.caption(f"train / val / test: the split every run of this experiment uses{fold}; {summary.split_note}.")
        st.caption(_sizes_caption(summary, c))
    with right:
        what = ("One volume per class as the runs see it: the axial slice with the most lesion" if summary.ndim == 3
                else "One image per class, as the runs see it")
        st.caption(what + (" (lesion mask outlined in red)" if any(p.outlined for p in summary.previews) else ""))
        previews = list(summary.previews)
        for row in range(0, len(previews), PREVIEWS_PER_ROW):
            chunk = previews[row: row + PREVIEWS_PER_ROW]
            for col, preview in zip(st.columns(len(chunk)), chunk):
                col.image(preview.pixels, caption=_preview_caption(preview), width="stretch")
    if ds.has_masks and ds.has_lung_masks:
        _infection_spread(sel, ds)
    return True


def _masks(sel: Selection) -> tuple[bool, bool]:
    """Whether the selection's data have lesion masks, and lung masks (both False when they cannot be read)."""
    try:
        ds = dataset(sel.config)
    except engine.LungLensError:
        return False, False
    return ds.has_masks, ds.has_lung_masks


def _guidance_options(c: engine.RunConfig, backbone: str, masks: tuple[bool, bool]) -> dict:
    """Ouyang et al.'s training options: the online attention toggle and the sampling (only what the data allow)."""
    has_lesion, has_lung = masks
    c1, c2 = st.columns(2)
    fits = backbone in ATTENTION_BACKBONES
    attention = c1.toggle("Online attention (Ouyang et al.)", value=c.attention and fits and has_lesion,
                          disabled=not (fits and has_lesion),
                          help=ATTENTION_HELP.format(backbones=", ".join(ATTENTION_BACKBONES)))
    if not has_lesion:
        c1.caption("Off: the data have no lesion masks.")
    elif not fits:
        c1.caption(f"Off: {backbone}'s classifier has several layers; choose one of {', '.join(ATTENTION_BACKBONES)}.")
    samplings = list(SAMPLINGS) if has_lesion and has_lung else ["uniform"]
    sampling = c2.selectbox("Sampling (Ouyang et al.)", samplings, format_func=SAMPLING_NAMES.get,
                            index=samplings.index(c.sampling) if c.sampling in samplings else 0, help=SAMPLING_HELP)
    if len(samplings) == 1:
        c2.caption("Uniform only: size-balanced and dual sampling need lesion and lung masks.")
    return {"attention": attention, "sampling": sampling}


def _experiment_picker(sel: Selection, masks: tuple[bool, bool]) -> tuple[dict, tuple[int, ...]]:
    """Step 2: backbone (of the data's dimensionality), initialisation, epochs, depths, size, CLAHE, folds and
    Ouyang's training options. ``masks``: whether the data have lesion and lung masks."""
    st.subheader("2 · Experiment")
    c = sel.config
    volumes = sel.volumes
    backbones = [b for b in engine.BACKBONES if (b in engine.VOLUME_BACKBONES) == volumes]
    inits = VOLUME_INITS if volumes else INITS
    c1, c2, c3 = st.columns(3)
    backbone = c1.selectbox("Backbone", backbones, index=backbones.index(c.backbone),
                            help="3-D ResNets (MONAI, last stage stride 1 as Ouyang et al.) for CT volumes"
                            if volumes else "2-D CNNs for chest X-ray images; CT volumes take the 3-D ResNets.")
    init = c2.selectbox("Initialisation", inits, index=inits.index(c.init) if c.init in inits else 0,
                        help="builtin: pretrained once on the 3-D CT phantom source corpus (no download); scratch: "
                             "random." if volumes else
                             "builtin: pretrained once on the phantom source corpus (no download); imagenet: "
                             "torchvision's ImageNet weights, downloaded into TORCH_HOME/hub/checkpoints on first use; "
                             "xrv-densenet121 (DenseNet-121 only): TorchXRayVision's weights pretrained on public "
                             "chest X-ray corpora, downloaded into ~/.torchxrayvision on first use; scratch: random.")
    epochs = c3.number_input("Epochs (max; early stopping on validation loss)", 1, 200, c.epochs)
    depths = st.multiselect("Fine-tuning depths to compare (trainable conv blocks, Lee et al.)",
                            list(range(engine.N_BLOCKS + 1)), default=list(sel.depths))
    c4, c5 = st.columns(2)
    if volumes:
        size = c4.select_slider("Volume size (slices × rows × columns)", sorted({*VOLUME_SIZES, c.image_size}),
                                value=c.image_size, format_func=lambda s: " × ".join(map(str, volume_shape(s))),
                                help="Ouyang et al. use 138 × 256 × 256; 32 × 64 × 64 keeps the CPU demo to minutes.")
        clahe = False
        c5.caption("CLAHE: 2-D images only (a volume's contrast is the lung window).")
    else:
        size = c4.select_slider("Image size (px)", sorted({*IMAGE_SIZES, c.image_size}), value=c.image_size,
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
    guidance = _guidance_options(c, backbone, masks)
    # fc6/fc7 narrowing (the CPU demo's) only exists for AlexNet/VGG, and ImageNet weights come with the full head.
    head_width = c.head_width if backbone in MLP_HEAD_BACKBONES and init != "imagenet" else None
    return ({"backbone": backbone, "init": init, "epochs": int(epochs), "image_size": int(size), "clahe": clahe,
             "head_width": head_width, "folds": int(folds), "fold": 0, **guidance}, tuple(sorted(depths)))


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
    after_training(job)
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
        "LungLens trains CNN classifiers of chest X-ray images and 3-D chest CT volumes (such as COVID-19 against "
        "other findings and normal lungs) and shows, page by page, **how** they learn and **why** they decide: "
        "training curves, diagnostic performance with confidence intervals, learned features, the layers' filters "
        "and neurons, and the image regions that support each decision. "
        "It follows the interpretation architecture of Wan et al. (Entropy 2021) and the fine-tuning-depth study of "
        "Lee et al. (J Pers Med 2020); for CT, the 3-D system of Ouyang et al. (IEEE TMI 2020): online attention "
        "trained against infection masks, dual sampling and results by infection size; and Cheng et al.'s DPN-SE "
        "with their comparison of backbones with and without augmentation on four classes."
    )
    with st.expander("How to read the pages"):
        st.markdown(
            "- **Training**: loss and the five criteria per epoch, train vs test; a depth slider switches runs; with "
            "k folds, one curve per fold.\n"
            "- **Performance**: the fine-tuned CNN against LBP + SVM and deep features + SVM, with 95% CIs; ROC, PR, "
            "confusion matrices; metric vs fine-tuning depth; with k folds, per-fold ROC curves and mean ± sd AUC; "
            "calibration and operating points; an external test on another site's folder; Ouyang et al.'s four "
            "training variants (Table II), results by infection size (Table III) and the support regions with and "
            "without attention; Cheng et al.'s backbones with and without augmentation (Table 1).\n"
            "- **Features**: deep and LBP features projected to 2-D/3-D (PCA, kernel PCA, t-SNE) with separability scores.\n"
            "- **Layers**: first-layer filters before/after fine-tuning, hidden neurons by guided backpropagation; "
            "the network's topology and a decision tree that imitates the CNN (Wan et al.'s future work).\n"
            "- **Support Regions**: Grad-CAM, LIME and occlusion maps, their overlap with lesion masks (consistency "
            "degree), and cases right for the wrong reason, on the test split or an external folder; a new image is "
            "diagnosed with a warning when it is unlike the training data."
        )
    sel = selection()
    try:
        on_data = _data_picker(sel)
    except engine.LungLensError as exc:
        st.error(str(exc))
        return
    summary_slot = st.container()  # under "1 · Data"; drawn once the experiment (split, size, CLAHE) is known
    config_changes, depths = _experiment_picker(on_data, _masks(on_data))
    try:
        new = Selection(on_data.config.replace(**config_changes), depths or on_data.depths)
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
