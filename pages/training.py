"""Training dynamics (Wan et al. fig. 4-5): loss and the five criteria per epoch, across fine-tuning depths."""
from __future__ import annotations

import math

import streamlit as st

import engine
from dashboard.exports import csv_button, export_name
from dashboard.state import size_text
from dashboard.training_charts import (
    MAX_BACKBONES,
    QUANTITIES,
    SPLIT_NAMES,
    attention_loss_figure,
    compare_figure,
    compare_table,
    criteria_figure,
    fold_curves_figure,
    has_attention_loss,
    loss_figure,
    run_label,
)
from dashboard.url_state import flag, url_widget
from dashboard.widgets import all_runs, caption, depth_slider, figure, require_runs, trained_folds
from engine.crossval import SD_DDOF, fold_epoch_curve
from engine.runs import related_runs

MARKS_CAPTION = (
    "Green line: best epoch (lowest validation loss; its weights are the model kept and evaluated). Red dashed: early "
    "stop (validation loss did not improve for `patience` epochs). Grey dotted: learning-rate reduction "
    "(ReduceLROnPlateau on validation loss)."
)
DROPOUT_CAPTION = (
    "Train loss and criteria are measured on the batches as they were trained (dropout on, weights still moving); "
    "validation and test are scored after each epoch in eval mode. That is why the test loss can sit below the train "
    "loss, as Wan et al. note for their fig. 4."
)


def _number(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _cards(run: engine.Run) -> None:
    result, cfg = run.result, run.config
    test = result.get("test", {})
    cols = st.columns(6)
    cols[0].metric("Best epoch", f"{result['best_epoch']} of {result['epochs_run']}",
                   help="Epoch with the lowest validation loss; its weights are the model kept.")
    cols[1].metric("Test ACC", _number(test.get("acc")), help="Of the model kept (the best epoch's weights).")
    cols[2].metric("Test AUC", _number(test.get("auc")),
                   help=f"Of the model kept; ROC AUC of the positive class ({run.classes[run.positive]}) one-vs-rest.")
    cols[3].metric("Training time", _duration(result["seconds"]))
    cols[4].metric("Initialisation", cfg.init,
                   help="builtin: pretrained on the phantom source corpus; imagenet: torchvision's ImageNet "
                        "weights; xrv-densenet121: TorchXRayVision's DenseNet-121 pretrained on public chest X-ray "
                        "corpora; scratch: random; otherwise the weights file it names.")
    cols[5].metric("Positive class", run.classes[run.positive],
                   help="Sensitivity, specificity, PPV and NPV are of this class taken one-vs-rest.")
    stop = (f"stopped early after epoch {result['epochs_run']} (patience {cfg.patience})" if result["stopped_early"]
            else f"ran all {result['epochs_run']} epochs")
    fold = f"fold {cfg.fold} of a {cfg.folds}-fold cross-validation, " if cfg.folds > 1 else ""
    caption(f"Run `{run.id}`: {fold}{cfg.backbone}, last {cfg.depth} of {engine.N_BLOCKS} conv blocks and the head "
            f"trained, {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size}, {size_text(cfg)}{_ouyang(cfg)}; {stop}.",
            label="About this run")


def _ouyang(cfg: engine.RunConfig) -> str:
    """Ouyang et al.'s training options of a run in words (nothing for a plain run with uniform sampling)."""
    parts = [f"online attention (λ = {cfg.attention_lambda:g})"] if cfg.attention else []
    if cfg.sampling == "dual":
        parts.append("dual sampling (the curves are its uniform-sampling member's; the test scores its eq. 5 "
                     "ensemble's)")
    elif cfg.sampling != "uniform":
        parts.append(f"{cfg.sampling} sampling")
    return "".join(f", {p}" for p in parts)


def _folds_name(run: engine.Run, what: str) -> str:
    """A file-name stem for an export about every fold of ``run``'s depth: ``lunglens-resnet18-depth5-<what>``."""
    return f"lunglens-{run.config.backbone}-depth{run.config.depth}-{what}"


def _single(run: engine.Run) -> None:
    history, best, stopped = run.history, run.result["best_epoch"], run.result["stopped_early"]
    st.subheader("Loss per epoch")
    figure(loss_figure(history, best, stopped), export_name(run, "loss"), key="training_loss")
    caption(f"Train solid, validation dotted, test dashed. {DROPOUT_CAPTION} {MARKS_CAPTION}")
    if has_attention_loss(history):
        _attention_loss(run)

    st.subheader("The five criteria per epoch")
    prefix = ""
    if "train_macro_sensitivity" in history:
        positive = run.classes[run.positive]
        prefix = url_widget(st.radio, "Criteria of", ["", "macro_"], key="training_average", param="average",
                            default="", horizontal=True,
                            format_func={"": f"the positive class ({positive}) one-vs-rest",
                                         "macro_": "every class one-vs-rest, averaged (macro)"}.get)
    figure(criteria_figure(history, best, stopped, prefix=prefix), export_name(run, f"{prefix}criteria"),
           key="training_criteria")
    caption("Wan et al. eq. 1-5: ACC = (TP+TN)/all, sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), "
            "PPV = TP/(TP+FP), NPV = TN/(TN+FN). Train solid, test dashed; a gap is a missing value (e.g. no "
            "predicted positive yet, so PPV is undefined).")
    csv_button(history, export_name(run, "history"), key="training_history_csv")


def _attention_loss(run: engine.Run) -> None:
    """Ouyang et al.'s attention loss per epoch, for a run trained with it."""
    cfg = run.config
    st.subheader("Attention loss per epoch (Ouyang et al. eq. 3)")
    figure(attention_loss_figure(run.history, run.result["best_epoch"], run.result["stopped_early"]),
           export_name(run, "attention-loss"), key="training_attention_loss")
    caption(f"L_ex = Σ (T(A) − M)² / (Σ T(A) + Σ M) (eq. 3): how far the trimmed attention map T(A) = sigmoid(α (A − "
            f"β)) (eq. 2, α = {cfg.attention_alpha:g}, β = {cfg.attention_beta:g}) of each {run.classes[run.positive]} "
            "training case with a lesion mask M is from that mask; 0 when they coincide. Averaged per epoch over every "
            "training case (0 for the cases without a mask or of another class), on the batches as they were trained. "
            f"The training loss is L_c + λ L_ex with λ = {cfg.attention_lambda:g} (eq. 4); the cross-entropy L_c is "
            "the loss above.")


def _compare(runs: dict[int, engine.Run]) -> None:
    base = runs[max(runs)]  # any run of the selection: related runs differ from it by the depth at most
    related = related_runs(base, [*runs.values(), *all_runs()])
    backbone = base.config.backbone
    others = sorted({b for b, _ in related} - {backbone})
    # Pills, not multiselects: every choice stays readable at any width (a multiselect clips its chips).
    c1, c2 = st.columns(2)
    c3, c4 = st.columns([1, 2])
    extra: list[str] = []
    if others:
        extra = url_widget(c2.pills, "Other backbones", others, key="training_compare_backbones", param="backbones",
                           default=[], selection_mode="multi", width="stretch",
                           help=f"Cached runs of other backbones on the same data, init, epochs, image size and "
                                f"split: a row of panels each (the first {MAX_BACKBONES - 1} are drawn).")
    else:
        c2.caption("Other backbones: none cached on the same data and split.")
    backbones = [backbone, *extra[:MAX_BACKBONES - 1]]
    if len(extra) >= MAX_BACKBONES:
        st.caption(f"Drawn: {', '.join(backbones)}; at most {MAX_BACKBONES} backbones fit one chart.")
    depths = sorted({d for b, d in related if b in backbones})
    chosen_depths = url_widget(c1.pills, "Fine-tuning depths", depths, key="training_compare_depths", param="runs",
                               default=[d for d in sorted(runs) if d in depths], selection_mode="multi",
                               width="stretch")
    quantity = url_widget(c3.selectbox, "Curve", list(QUANTITIES), key="training_compare_quantity", param="quantity",
                          default="loss", format_func=QUANTITIES.get)
    splits = url_widget(c4.pills, "Splits", list(SPLIT_NAMES), key="training_compare_splits", param="splits",
                        default=["train", "test"], format_func=SPLIT_NAMES.get, selection_mode="multi",
                        width="stretch")
    keys = [(b, d) for (b, d) in sorted(related) if b in backbones and d in chosen_depths]
    if not keys or not splits:
        st.info("Pick at least one depth and one split to compare.")
        return
    histories = {k: related[k].history for k in keys}
    fig = compare_figure(histories, quantity, splits, {k: related[k].result["best_epoch"] for k in keys})
    figure(fig, f"lunglens-training-compare-{quantity}", key="training_compare_chart")
    caption("A panel per split (train solid, validation dotted, test dashed), a row of panels per backbone and a "
            "colour per fine-tuning depth, darker for deeper, the same in every panel; click a depth in the legend to "
            "hide or show it everywhere. A star marks each run's best epoch (lowest validation loss). A widening gap "
            "between train and test is over-fitting; more trainable blocks can fit the training split faster and "
            f"over-fit sooner. {DROPOUT_CAPTION}")
    csv_button(compare_table({run_label(*k): h for k, h in histories.items()}, quantity, splits),
               f"lunglens-training-compare-{quantity}", key="training_compare_csv")


def _folds(run: engine.Run) -> None:
    k = run.config.folds
    st.subheader(f"Cross-validation: one curve per fold ({k} folds)")
    runs = trained_folds(run)
    if runs is None:
        return
    c1, c2 = st.columns(2)
    quantity = url_widget(c1.selectbox, "Curve", list(QUANTITIES), key="training_folds_quantity",
                          param="fold_quantity", default="loss", format_func=QUANTITIES.get)
    split = url_widget(c2.selectbox, "Split", list(SPLIT_NAMES), key="training_folds_split", param="fold_split",
                       default="val", format_func=SPLIT_NAMES.get)
    try:
        curve = fold_epoch_curve(runs, f"{split}_{quantity}")
    except engine.LungLensError as exc:
        st.warning(str(exc))
        return
    name = "loss" if quantity == "loss" else QUANTITIES[quantity]  # ACC, PPV, NPV keep their capitals
    fig = fold_curves_figure(curve, f"{SPLIT_NAMES[split].capitalize()} {name}",
                             {r.config.fold: r.result["best_epoch"] for r in runs}, bounded=quantity != "loss")
    figure(fig, _folds_name(run, f"folds-{split}-{quantity}"), key="training_folds")
    caption(
        f"A thin line per fold (numbered from 0, as in the runs table): fold f's model trained on the other {k - 1} "
        "folds and was early-stopped on fold f, its validation split; the test split is the same for every fold. "
        "Thick black line: the mean over the folds at each epoch, over the folds still training then (early stopping "
        f"can end a fold sooner); its hover gives the standard deviation over folds (sample sd, ddof = {SD_DDOF}). "
        "Star: each fold's best epoch (lowest validation loss; its weights are the fold's model). The cards and "
        "curves above are fold 0's."
    )
    csv_button(curve, _folds_name(run, f"folds-{split}-{quantity}"),
               key="training_folds_csv")


st.title("Training")
sel, runs = require_runs("Training")
# Compare mode shows only the overlay: the single run's slider, cards and curves would sit above it unused.
if url_widget(st.toggle, "Compare runs", (False, True), key="training_compare", param="compare", default=False,
              encode=flag, help="Overlay the curves of several fine-tuning depths (and backbones trained on the "
                                "same data), a panel per split."):
    _compare(runs)
else:
    run = runs[depth_slider(runs, key="training_depth")]
    _cards(run)
    _single(run)
    if run.config.folds > 1:
        _folds(run)
