"""Learned features (Wan et al. sec. 3.3, fig. 6-7): LBP and deep features of every image projected to 2-D / 3-D."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import engine
from dashboard.exports import csv_button, export_name
from dashboard.features_charts import METHOD_LABELS, image_labels, projection_figure, score_text, selected_row
from dashboard.url_state import url_widget
from dashboard.widgets import caption, depth_slider, figure, require_runs, run_images
from engine.lbp import LBP_BINS, LBP_P, LBP_R
from engine.projections import KNN_FOLDS, KNN_K, METHODS, TSNE_PCA_DIMS, run_features, run_projection

FEATURE_SETS = {"lbp": "LBP features", "deep": "Deep features"}
IMAGE_KEY = "features_image"
LAST_PICK_KEY = "features_last_pick"


# ``finished`` keys the caches so that a run trained again under the same id is not served stale.
@st.cache_data(show_spinner=False, max_entries=128)
def _projection(run_id: str, finished: float, feature_set: str, method: str, dims: int) -> tuple[pd.DataFrame, dict]:
    df = run_projection(engine.load_run(run_id), feature_set, method, dims)
    return df, dict(df.attrs["separability"])


@st.cache_data(show_spinner=False, max_entries=64)
def _deep_dims(run_id: str, finished: float) -> int:
    return int(run_features(engine.load_run(run_id), "deep").shape[1])


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


def _image_panel(run: engine.Run) -> int | None:
    """The picked image (clicked in a 2-D chart or chosen by name) with its classes; returns its row."""
    preds = run.predictions
    labels = image_labels(preds, run.classes)
    _sync_pick_from_charts()
    files = preds["file"].astype(str).to_numpy()
    row = url_widget(st.selectbox, "Image", list(labels), key=IMAGE_KEY, param="image", default=None,
                     encode=lambda r: files[r], index=None, format_func=labels.get,
                     placeholder="Click a point (2-D) or pick a file")
    if row is None:
        st.caption("Click a point in a 2-D chart (or pick a file here) to see the image; it is ringed in both charts. "
                   "Hover a point for its file and classes.")
        return None
    image = run_images(run)[row]
    r = preds.iloc[row]
    true, pred = run.classes[int(r["y"])], run.classes[int(r["pred"])]
    st.image(image, width="stretch")
    verdict = "correct" if true == pred else "**wrong**"
    st.markdown(f"`{r['file']}` ({r['split']} split)  \ntrue **{true}** · predicted **{pred}** ({verdict}), "
                f"p = {float(r[f'prob_{pred}']):.2f}")
    return row


def _scores(col: DeltaGenerator, scores: dict, reference: dict | None) -> None:
    """Silhouette and k-NN accuracy of one feature set; ``reference`` (LBP's) gives the deep features' deltas."""
    m1, m2 = col.columns(2)
    for box, key, name, help_ in (
        (m1, "silhouette", "Silhouette", "Mean silhouette of the projected points against the true classes: −1 to 1, "
                                         "higher means tighter, better separated classes."),
        (m2, "knn_accuracy", "k-NN accuracy", f"{KNN_K}-nearest-neighbour accuracy in the projected space, stratified "
                                              f"{int(scores['knn_folds']) or KNN_FOLDS}-fold cross-validation; chance "
                                              f"(majority class) = {score_text(scores['chance'])}."),
    ):
        if reference is None:  # a neutral delta line keeps both columns' charts at the same height
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

try:
    with st.spinner(f"Projecting LBP and deep features with {METHOD_LABELS[method]} (once per run and method, then "
                    "cached; t-SNE can take a while)…"):
        results = {fs: _projection(run.id, finished, fs, method, dims) for fs in FEATURE_SETS}
        deep_dims = _deep_dims(run.id, finished)
except engine.LungLensError as exc:
    st.error(f"The features of this run cannot be projected: {exc}")
    st.stop()

left, right, side = st.columns([5, 5, 3])
with side:
    st.markdown("**Selected image**")
    picked = _image_panel(run)
for col, fs in zip((left, right), FEATURE_SETS, strict=True):
    points, scores = results[fs]
    col.markdown(f"**{FEATURE_SETS[fs]}** · {METHOD_LABELS[method]}, {dims}-D")
    _scores(col, scores, results["lbp"][1] if fs == "deep" else None)
    fig = projection_figure(points, run.classes, method, "correct" if by_correct else "class", picked)
    name = export_name(run, f"{fs}-{method}-{dims}d")
    figure(fig, name, key=f"features_{fs}", where=col, on_select="rerun", selection_mode="points")
    with col:
        csv_button(points.drop(columns="path"), name, key=f"features_{fs}_csv")  # a server path means nothing here

lbp_points = results["lbp"][0]
caption(
    f"Wan et al. fig. 6 (2-D) and fig. 7 (3-D): the same {len(lbp_points)} images (train, val and test) of run "
    f"`{run.id}` ({run.config.backbone}, depth {depth}), one point each. LBP: the {LBP_BINS}-bin uniform LBP "
    f"histogram (P = {LBP_P}, R = {LBP_R}, Wan sec. 3.2), as in the Performance page's LBP + SVM baseline. Deep: the "
    f"{deep_dims}-d flattened output of the fine-tuned network's last conv stage (9216-d for AlexNet, as in Wan). "
    "Each feature is standardised before projecting; kernel PCA uses the linear or RBF kernel as in Wan; t-SNE runs "
    f"on a PCA-{TSNE_PCA_DIMS} reduction of the standardised features. The scores are measured in the projected "
    f"space against the true classes; chance = {score_text(results['lbp'][1]['chance'])} (majority class). Moving "
    "the fine-tuning depth switches to the run trained at that depth, showing how fine-tuning reshapes the deep "
    "feature space (the LBP side does not depend on the network)."
)
