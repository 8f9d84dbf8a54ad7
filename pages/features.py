"""Learned features (Wan et al. sec. 3.3, fig. 6-7): LBP and deep features of every image projected to 2-D / 3-D."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import engine
from dashboard.background import background, cached
from dashboard.exports import csv_button, export_name
from dashboard.features_charts import (
    IMAGE_LABEL_HELP,
    METHOD_LABELS,
    image_labels,
    projection_figure,
    score_text,
    selected_row,
)
from dashboard.url_state import url_widget
from dashboard.widgets import caption, depth_slider, figure, require_runs, run_images
from engine.explain.volume import is_volume_run
from engine.layers import case_slice
from engine.lbp import LBP_BINS, LBP_P, LBP_R, lbp_refusal
from engine.projections import KNN_FOLDS, KNN_K, METHODS, TSNE_PCA_DIMS, feature_dims, run_feature_sets, run_projection

FEATURE_SETS = {"lbp": "LBP features", "deep": "Deep features"}
IMAGE_KEY = "features_image"
LAST_PICK_KEY = "features_last_pick"


def _sync_pick_from_charts() -> None:
    """A point newly clicked in either chart becomes the image picker's value (before the picker is drawn)."""
    seen = st.session_state.setdefault(LAST_PICK_KEY, {})  # each chart's selection at the previous rerun
    for fs in FEATURE_SETS:
        state = st.session_state.get(f"features_{fs}")
        row = selected_row(state["selection"]["points"]) if state else None
        if row != seen.get(fs):
            seen[fs] = row
            if row is not None:
                st.session_state[IMAGE_KEY] = row


def _item(run: engine.Run) -> str:
    """What one point is: ``"volume"`` for a 3-D CT run, else ``"image"``."""
    return "volume" if is_volume_run(run) else "image"


def _image_picker(run: engine.Run) -> int | None:
    """The image picker (a point clicked in a 2-D chart sets it too), wide enough for its labels; returns its row."""
    preds = run.predictions
    labels = image_labels(preds, run.classes)
    _sync_pick_from_charts()
    files = preds["file"].astype(str).to_numpy()
    what = _item(run)
    return url_widget(st.columns([3, 2])[0].selectbox, what.capitalize(), list(labels), key=IMAGE_KEY, param="image",
                      default=None, encode=lambda r: files[r], index=None, format_func=labels.get,
                      placeholder=f"Click a point in a 2-D chart, or pick {'a' if what == 'volume' else 'an'} {what} "
                                  "here", help=IMAGE_LABEL_HELP)


def _image_panel(run: engine.Run, row: int | None) -> None:
    """The picked image with its file, split and classes (a hint while none is picked)."""
    if row is None:
        st.caption("Click a point in a 2-D chart (or pick one above) to see its image; it is ringed in every chart. "
                   "Hover a point for its file and classes.")
        return
    preds = run.predictions
    image = run_images(run)[row]
    r = preds.iloc[row]
    true, pred = run.classes[int(r["y"])], run.classes[int(r["pred"])]
    z = cached(case_slice, run, row)
    if z is None:
        st.image(image, width="stretch")
    else:  # a CT volume: one axial slice of it
        st.image(image[z], width="stretch",
                 caption=f"axial slice {z + 1} of {len(image)} (the slice with the most lesion; the middle one "
                         "without a lesion)")
    verdict = "correct" if true == pred else "**wrong**"
    st.markdown(f"`{r['file']}` ({r['split']} split)  \ntrue **{true}** · predicted **{pred}** ({verdict}), "
                f"p = {float(r[f'prob_{pred}']):.2f}")


def _scores(col: DeltaGenerator, scores: dict, reference: dict | None, alone: bool = False) -> None:
    """Silhouette and k-NN accuracy of one feature set; ``reference`` (LBP's) gives the deep features' deltas;
    ``alone``: the only feature set shown (no delta line)."""
    m1, m2 = col.columns(2)
    for box, key, name, help_ in (
        (m1, "silhouette", "Silhouette", "Mean silhouette of the projected points against the true classes: −1 to 1, "
                                         "higher means tighter, better separated classes."),
        (m2, "knn_accuracy", "k-NN accuracy", f"{KNN_K}-nearest-neighbour accuracy in the projected space, stratified "
                                              f"{int(scores['knn_folds']) or KNN_FOLDS}-fold cross-validation; chance "
                                              f"(majority class) = {score_text(scores['chance'])}."),
    ):
        if alone:
            box.metric(name, score_text(scores[key]), help=help_)
        elif reference is None:  # a neutral delta line keeps both columns' charts at the same height
            box.metric(name, score_text(scores[key]), delta="reference", delta_color="off", delta_arrow="off",
                       help=help_)
        else:
            diff = scores[key] - reference[key]
            box.metric(name, score_text(scores[key]), delta=f"{diff:+.3f} vs LBP" if np.isfinite(diff) else None,
                       help=help_)


st.title("Features")
sel, runs = require_runs("Features")
depth = depth_slider(runs, key="features_depth")
run = runs[depth]
finished = run.result["finished"]

c1, c2, c3 = st.columns([2, 1, 2])
method = url_widget(c1.selectbox, "Projection", METHODS, key="features_method", param="method", default=METHODS[0],
                    format_func=METHOD_LABELS.get)
dims = url_widget(c2.radio, "Dimensions", (2, 3), key="features_dims", param="dims", default=2,
                  format_func=lambda d: f"{d}-D", horizontal=True)
by_correct = url_widget(c3.toggle, "Colour by correct / wrong prediction", (False, True), key="features_correct",
                        param="colour", default=False, encode=lambda b: "correct" if b else "class",
                        help="Off: colour by true class. On: green where the fine-tuned CNN is right, red where wrong.")

picked = _image_picker(run)
shown = [fs for fs in FEATURE_SETS if fs in run_feature_sets(run)]  # LBP on the left, as in Wan's figures
lbp_absent = lbp_refusal(run)
if lbp_absent:
    st.info(f"No LBP chart for this run. {lbp_absent}")
*chart_cols, side = st.columns([4, 4, 3] if len(shown) == 2 else [6, 3])
results: dict[str, pd.DataFrame | None] = {}
for col, fs in zip(chart_cols, shown, strict=True):
    col.markdown(f"**{FEATURE_SETS[fs]}** · {METHOD_LABELS[method]}, {dims}-D")
    with col:
        try:
            results[fs] = background(run_projection, run, fs, method, dims, reports=True, name=f"features_{fs}_job",
                                     label=f"{FEATURE_SETS[fs]}: {METHOD_LABELS[method]} to {dims}-D")
        except engine.LungLensError as exc:
            st.error(f"The {FEATURE_SETS[fs]} of this run cannot be projected: {exc}")
            st.stop()
with side:
    st.markdown(f"**Selected {_item(run)}**")
    _image_panel(run, picked)
for col, fs in zip(chart_cols, shown, strict=True):
    points = results[fs]
    if points is None:  # its progress panel is drawn in the column; the page reruns when it is ready
        continue
    reference = results.get("lbp")
    _scores(col, points.attrs["separability"], reference.attrs["separability"] if fs == "deep" and
            reference is not None else None, alone=len(shown) == 1)
    fig = projection_figure(points, run.classes, method, "correct" if by_correct else "class", picked)
    name = export_name(run, f"{fs}-{method}-{dims}d")
    figure(fig, name, key=f"features_{fs}", where=col, on_select="rerun", selection_mode="points")
    with col:
        csv_button(points.drop(columns="path"), name, key=f"features_{fs}_csv")  # a server path means nothing here

if any(points is None for points in results.values()):
    st.stop()
deep_points = results["deep"]
deep_dims = cached(feature_dims, run, "deep")
chance = score_text(deep_points.attrs["separability"]["chance"])
if lbp_absent:
    caption(
        f"Wan et al. fig. 6 (2-D) and fig. 7 (3-D) for CT volumes: the same {len(deep_points)} volumes (train, val and "
        f"test) of run `{run.id}` ({run.config.backbone}, depth {depth}), one point each. Deep: the {deep_dims}-d "
        "globally average-pooled output of the fine-tuned 3-D network's last conv stage, as in the Performance page's "
        "deep features + SVM baseline. No LBP chart: Wan's LBP is a histogram of 2-D texture patterns and does not "
        "apply to volumes. Each feature is standardised before projecting; kernel PCA uses the linear or RBF kernel "
        f"as in Wan; t-SNE runs on a PCA-{TSNE_PCA_DIMS} reduction of the standardised features. The scores are "
        f"measured in the projected space against the true classes; chance = {chance} (majority class). The image "
        "panel shows one axial slice of the picked volume. Moving the fine-tuning depth switches to the run trained "
        "at that depth."
    )
    st.stop()
lbp_points = results["lbp"]
caption(
    f"Wan et al. fig. 6 (2-D) and fig. 7 (3-D): the same {len(lbp_points)} images (train, val and test) of run "
    f"`{run.id}` ({run.config.backbone}, depth {depth}), one point each. LBP: the {LBP_BINS}-bin uniform LBP "
    f"histogram (P = {LBP_P}, R = {LBP_R}, Wan sec. 3.2), as in the Performance page's LBP + SVM baseline. Deep: the "
    f"{deep_dims}-d flattened output of the fine-tuned network's last conv stage (9216-d for AlexNet, as in Wan). "
    "Each feature is standardised before projecting; kernel PCA uses the linear or RBF kernel as in Wan; t-SNE runs "
    f"on a PCA-{TSNE_PCA_DIMS} reduction of the standardised features. The scores are measured in the projected "
    f"space against the true classes; chance = {score_text(lbp_points.attrs['separability']['chance'])} (majority "
    "class). Moving the fine-tuning depth switches to the run trained at that depth, showing how fine-tuning reshapes the deep "
    "feature space (the LBP side does not depend on the network)."
)
