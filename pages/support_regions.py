"""Support regions (Wan et al. §3.5, Cheng et al. fig. 7, Lee et al. figs. 8-10, Ouyang et al. figs. 5-6): where
the model looks, how much of the lesion that covers, which decisions rest on the wrong region, and a new image."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

import engine
from dashboard.support_charts import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_SIDE,
    METHOD_LABELS,
    OUTCOMES,
    consistency_depth_figure,
    consistency_depth_table,
    consistency_histogram,
    consistency_summary,
    depth_strip_figure,
    diagnose_upload,
    filter_test_rows,
    image_label,
    lime_figure,
    probability_figure,
    support_figure,
)
from dashboard.widgets import depth_slider, require_runs
from engine.data.imageio import IMAGE_SUFFIXES
from engine.explain import (
    SUPPORT_THRESHOLD,
    consistency_degree,
    outside_share,
    pointing_game,
    run_consistency,
    run_heatmaps,
    run_image_explanation,
    run_masks,
    split_rows,
    support_area,
    wrong_reason_gallery,
)
from engine.models.backbones import StagedNet, conv_layers

SECTIONS = ("Explain an image", "Consistency degree", "Wrong-reason gallery", "Same image across depths",
            "Diagnose a new image")
#: LIME perturbation counts offered; 1000 is the lime package's default (and Cheng et al.'s setting).
LIME_SAMPLES = (50, 100, 250, 500, 1000, 2000)
#: Methods scored over the whole test split; LIME costs ``n_samples`` model runs per image, too slow for a split.
SPLIT_METHODS = ("Grad-CAM", "Guided Grad-CAM", "Occlusion")
#: Image panels and bar charts: no Plotly toolbar over their titles (drag still zooms, double-click resets).
NO_TOOLBAR = {"displayModeBar": False}
TARGETS = {"Predicted": "pred", "True": "true"}
#: Gallery filter: both kinds, or only images classified wrongly / rightly (the value of the ``correct`` column).
GALLERY_KINDS = {"Both": None, "Misclassified (Lee fig. 9)": False, "Right for the wrong reason (Lee fig. 10)": True}
OUTLINES_CAPTION = ("Heatmaps in jet colours, red high and blue low (Wan fig. 11). Magenta line: support region "
                    "(heatmap above the threshold). Green: annotated lesion. Dotted cyan: lungs (where the data has "
                    "these masks).")
METHOD_NOTES = {
    "Grad-CAM": "Grad-CAM (Wan eqs. 7-9): gradient-weighted feature maps of the chosen conv layer, ReLU, upsampled.",
    "Guided Grad-CAM": "Guided Grad-CAM: Grad-CAM times guided backpropagation, pixel-sharp; scaled by its 99th "
                       "percentile because it is spiky.",
    "LIME": "LIME (Cheng et al. §3.3, fig. 7): 50 SLIC superpixels switched off at random; red superpixels raise the "
            "class probability, blue ones lower it. The support contour is drawn on the red part.",
    "Occlusion": "Occlusion: the drop in the class probability when a gray window (1/8 of the side, half-overlapping) "
                 "hides each region.",
}


# Runs are keyed by id and ``finished`` so that a run trained again under the same id is not served stale.
# Arrays go through cache_resource (shared, not copied on every rerun); the engine caches them on disk as well.
@st.cache_resource(show_spinner=False, max_entries=8)
def _model(run_id: str, finished: float) -> StagedNet:
    return engine.load_run(run_id).load_model()


@st.cache_resource(show_spinner=False, max_entries=8)
def _test_images(run_id: str, finished: float) -> np.ndarray:
    return engine.load_run(run_id).images("test")


@st.cache_resource(show_spinner=False, max_entries=8)
def _masks(run_id: str, finished: float) -> dict[str, np.ndarray]:
    return run_masks(engine.load_run(run_id), "test")


@st.cache_resource(show_spinner=False, max_entries=32)
def _split_maps(run_id: str, finished: float, method: str, target: str, layer: str | None = None) -> np.ndarray:
    return run_heatmaps(engine.load_run(run_id), method, "test", target, layer)


@st.cache_data(show_spinner=False, max_entries=128)
def _image_map(run_id: str, finished: float, row: int, method: str, target: str | int,
               params: tuple[tuple[str, Any], ...]) -> dict[str, np.ndarray]:
    return run_image_explanation(engine.load_run(run_id), row, "test", method, target, **dict(params))


@st.cache_data(show_spinner=False, max_entries=64)
def _consistency(run_id: str, finished: float, threshold: float, method: str, target: str) -> pd.DataFrame:
    return run_consistency(engine.load_run(run_id), threshold, method, target)


@st.cache_data(show_spinner=False, max_entries=32)
def _gallery(run_id: str, finished: float, threshold: float, mostly: float, layer: str | None) -> pd.DataFrame:
    return wrong_reason_gallery(engine.load_run(run_id), threshold, mostly=mostly, layer=layer)


@st.cache_data(show_spinner=False, max_entries=16)
def _diagnose(run_id: str, finished: float, digest: str, _data: bytes, name: str, lime_samples: int) -> Any:
    # ``digest`` stands for the bytes in the cache key; the cache lives in memory only, nothing goes to disk.
    run = engine.load_run(run_id)
    return diagnose_upload(_data, name, _model(run_id, finished), run.classes, run.config.image_size,
                           run.config.clahe, lime_samples)


def _key(run: engine.Run) -> tuple[str, float]:
    return run.id, run.result["finished"]


def _masks_of(masks: dict[str, np.ndarray], row: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The lesion and lung masks of one test image, None where the data has none (or the lesion mask is empty)."""
    lesion, lung = masks["lesion"][row], masks["lung"][row]
    return (lesion if masks["has_lesion"][row] and lesion.any() else None,
            lung if masks["has_lung"][row] and lung.any() else None)


def _scores(heatmap: np.ndarray, lesion: np.ndarray | None, lung: np.ndarray | None, threshold: float) -> dict:
    """The engine's scores of one heatmap against the image's masks (NaN where a mask is missing)."""
    nan = float("nan")
    return {
        "consistency degree": consistency_degree(heatmap, lesion, threshold) if lesion is not None else nan,
        "pointing game": ("hit" if pointing_game(heatmap, lesion) else "miss") if lesion is not None else "n/a",
        "support area": support_area(heatmap, threshold),
        "support outside lesion": outside_share(heatmap, lesion, threshold) if lesion is not None else nan,
        "support outside lungs": outside_share(heatmap, lung, threshold) if lung is not None else nan,
    }


def _target_picker(classes: tuple[str, ...], key: str, column: Any) -> str | int:
    """Predicted, true or any class, as the engine's target ('pred', 'true' or a class index)."""
    kind = column.radio("Explain the class", (*TARGETS, "Another class"), horizontal=True, key=key)
    if kind in TARGETS:
        return TARGETS[kind]
    return classes.index(column.selectbox("Class to explain", classes, key=f"{key}_class"))


def _layer_picker(run: engine.Run, key: str, column: Any) -> str | None:
    """A Grad-CAM layer of the run's model; None for the last conv layer, the default (Wan et al.)."""
    names = [name for name, _ in conv_layers(_model(*_key(run)))]
    layer = column.selectbox("Grad-CAM layer", names, index=len(names) - 1, key=key,
                             help="Wan et al. use the last convolutional layer (the default): it holds the most "
                                  "semantic information but is coarse. Earlier layers localise small objects (a "
                                  "marker, a device) more sharply and are less class-specific.")
    return None if layer == names[-1] else layer  # the default stays implicit: its cache is shared with other views


def _grid(n: int, per_row: int) -> Iterator[Any]:
    """Containers for ``n`` panels laid out row by row, so that the panels of a row line up."""
    for start in range(0, n, per_row):
        yield from st.columns(per_row)[: min(per_row, n - start)]


def _target_index(row: pd.Series, target: str | int) -> int:
    """The class index a target names for one test row."""
    return int(row["pred"] if target == "pred" else row["y"] if target == "true" else target)


def _pick_image(rows: pd.DataFrame, classes: tuple[str, ...]) -> int | None:
    """A test image (row of ``split_rows``), filterable by true class and by correct / wrong; None if none matches."""
    c1, c2 = st.columns(2)
    chosen = c1.multiselect("True class", classes, key="support_classes", placeholder="All classes")
    outcome = c2.radio("Classification", OUTCOMES, horizontal=True, key="support_outcome")
    shown = filter_test_rows(rows, classes, chosen, outcome)
    if shown.empty:
        st.info("No test image matches these filters: widen the class or classification filter.")
        return None
    return st.selectbox(f"Test image ({len(shown)} of {len(rows)} match)", shown.index.tolist(),
                        format_func=lambda i: image_label(rows.loc[i], classes), key="support_image")


def _pick_methods(run: engine.Run) -> tuple[list[str], str | int, dict[str, dict[str, Any]]]:
    """The chosen methods, the class to explain and each method's parameters (Grad-CAM layer, LIME samples)."""
    c1, c2, c3 = st.columns(3)
    labels = c1.multiselect("Methods", list(METHOD_LABELS), default=["Grad-CAM"], key="support_methods")
    target = _target_picker(run.classes, "support_target", c2)
    params: dict[str, dict[str, Any]] = {label: {} for label in labels}
    if {"Grad-CAM", "Guided Grad-CAM"} & set(labels):
        layer = _layer_picker(run, "support_layer", c3)
        if layer is not None:
            params["Grad-CAM"] = params["Guided Grad-CAM"] = {"layer": layer}
    if "LIME" in labels:
        st.session_state.setdefault("support_lime_samples", 1000)  # a state default, not value=, so a preset value wins
        n_samples = c3.select_slider("LIME samples", LIME_SAMPLES, key="support_lime_samples",
                                     help="Perturbed images LIME scores; fewer is faster and noisier.")
        params["LIME"] = {"n_samples": n_samples}
    return labels, target, params


def _explain_section(run: engine.Run, threshold: float, opacity: float) -> None:
    rows, classes = split_rows(run, "test"), run.classes
    row = _pick_image(rows, classes)
    if row is None:
        return
    labels, target, params = _pick_methods(run)
    image, (lesion, lung) = _test_images(*_key(run))[row], _masks_of(_masks(*_key(run)), row)
    r = rows.loc[row]
    columns = st.columns(len(labels) + 1)
    with columns[0]:
        st.plotly_chart(support_figure(image, lesion=lesion, lung=lung, title="Image", height=380),
                        width="stretch", key="support_image_figure", config=NO_TOOLBAR)
    scores = {}
    for column, label in zip(columns[1:], labels):
        method = METHOD_LABELS[label]
        with column, st.spinner(f"Computing {label}…"):
            result = _image_map(*_key(run), row, method, target, tuple(sorted(params[label].items())))
            title = f"{label} · {classes[_target_index(r, target)]}"
            if method == "lime":
                fig = lime_figure(image, result, threshold=threshold, opacity=opacity, lesion=lesion, lung=lung,
                                  title=title, height=380)
            else:
                fig = support_figure(image, result["heatmap"], threshold=threshold, opacity=opacity, lesion=lesion,
                                     lung=lung, title=title, height=380)
            st.plotly_chart(fig, width="stretch", key=f"support_overlay_{method}", config=NO_TOOLBAR)
        scores[label] = _scores(result["heatmap"], lesion, lung, threshold)
    st.caption(OUTLINES_CAPTION + " " + " ".join(METHOD_NOTES[label] for label in labels))

    left, right = st.columns(2)
    with left:
        probabilities = {c: float(r[f"prob_{c}"]) for c in classes}
        st.plotly_chart(probability_figure(probabilities, classes[int(r["y"])]), width="stretch",
                        key="support_probabilities", config=NO_TOOLBAR)
    with right:
        if scores:
            table = pd.DataFrame(scores)  # one column per method
            st.dataframe(table.map(lambda v: v if isinstance(v, str) else "n/a" if np.isnan(v) else f"{v:.1%}"),
                         width="stretch")
            st.caption(f"Scores of each map at threshold {threshold:g}: consistency degree = share of the lesion "
                       "covered by support (Wan §3.5); pointing game = whether the map's peak lies in the lesion; "
                       "support outside = share of the support pixels outside the lesion or the lungs.")


def _consistency_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float, opacity: float) -> None:
    masks = _masks(*_key(run))
    if not masks["has_lesion"].any():
        st.info("This data has no lesion masks (for example covidct, which has labels only), so the consistency "
                "degree cannot be measured. Lesion masks go in ROOT/masks/<class>/<same name>.png; the other "
                "sections of this page work without them.")
        return
    c1, c2 = st.columns(2)
    label = c1.selectbox("Method", SPLIT_METHODS, key="support_consistency_method",
                         help="LIME is left out: it costs one model run per perturbed sample for every image.")
    kind = c2.radio("Explain the class", tuple(TARGETS), horizontal=True, key="support_consistency_target",
                    help="Wan et al. explain the model's decision (predicted). The true class asks whether the "
                         "evidence for the right answer lies on the lesion.")
    method, target = METHOD_LABELS[label], TARGETS[kind]
    with st.spinner(f"Scoring {label} against the lesion masks of every test image (once per run, then cached)…"):
        df = _consistency(*_key(run), threshold, method, target)
    s = consistency_summary(df)
    cols = st.columns(4)
    cols[0].metric("Mean consistency degree", f"{s['consistency']:.1%}",
                   help=f"{label}; median {s['median']:.1%}; {s['n']} test images with a lesion mask.")
    cols[1].metric("Baseline: lungs, uniform", "n/a" if np.isnan(s["lung_baseline"]) else f"{s['lung_baseline']:.1%}",
                   help=f"A heatmap of 1 over the lungs, 0 elsewhere ({s['n_lung']} images with a lung mask).")
    cols[2].metric("Baseline: random field", f"{s['random_baseline']:.1%}",
                   help="A smooth random heatmap (blurred uniform noise, seeded per image), scored the same way.")
    cols[3].metric("Pointing game", f"{s['pointing_game']:.1%}",
                   help=f"Share of images whose heatmap peak lies in the lesion; a random peak hits "
                        f"{s['pointing_chance']:.1%} (the mean lesion area).")
    st.plotly_chart(consistency_histogram(df, label), width="stretch", key="support_consistency_histogram")
    st.caption(
        f"Consistency degree (Wan §3.5): the share of the annotated lesion covered by support pixels (heatmap > "
        f"{threshold:g}). Wan et al. report a mean of 60.02% on 500 CT images for a modified AlexNet's Grad-CAM at "
        f"0.7; here the mean is {s['consistency']:.1%} on {s['n']} test images. The degree grows with the support "
        f"area (here {s['support_area']:.1%} of the image on average), so read it against the baselines: a map that "
        "covers the whole lungs scores the lungs-uniform value without localising anything. Dashed lines: means."
    )
    table = df[df["lesion_area"] > 0]  # an empty lesion mask (a normal image) has no consistency degree
    table = table.assign(true_class=[run.classes[y] for y in table["y"]],
                         predicted=[run.classes[p] for p in table["pred"]])
    with st.expander("Per image with a lesion (highest consistency first)"):
        st.dataframe(
            table.sort_values("consistency", ascending=False)[
                ["file", "true_class", "predicted", "consistency", "lung_baseline", "random_baseline",
                 "pointing_game", "lesion_area", "support_area"]],
            hide_index=True, width="stretch",
            column_config={c: st.column_config.NumberColumn(format="percent") for c in
                           ("consistency", "lung_baseline", "random_baseline", "lesion_area", "support_area")})
    _top_consistency(run, df, method, target, threshold, opacity, masks)
    _consistency_by_depth(runs, threshold, method, target, label)


def _top_consistency(run: engine.Run, df: pd.DataFrame, method: str, target: str, threshold: float, opacity: float,
                     masks: dict[str, np.ndarray]) -> None:
    """The six images of highest consistency with their maps (Wan fig. 12)."""
    st.markdown("**Highest consistency degree (Wan et al., fig. 12)**")
    top = df.sort_values("consistency", ascending=False, kind="stable").head(6)
    maps, images = _split_maps(*_key(run), method, target), _test_images(*_key(run))
    for k, (cell, (_, r)) in enumerate(zip(_grid(len(top), 3), top.iterrows())):
        row = int(r["row"])
        lesion, lung = _masks_of(masks, row)
        with cell:
            st.plotly_chart(support_figure(images[row], maps[row], threshold=threshold, opacity=opacity, lesion=lesion,
                                           lung=lung, height=300, colorbar=False, legend=False,
                                           title=f"{r['consistency']:.0%} of the lesion"),
                            width="stretch", key=f"support_top_{k}", config=NO_TOOLBAR)
            st.caption(f"`{r['file']}`")
    st.caption(OUTLINES_CAPTION)


def _consistency_by_depth(runs: dict[int, engine.Run], threshold: float, method: str, target: str,
                          label: str) -> None:
    st.markdown("**Consistency degree vs fine-tuning depth**")
    frames = {}
    with st.spinner(f"Scoring {label} for {len(runs)} trained depth(s)…"):
        for depth, r in sorted(runs.items()):
            frames[depth] = _consistency(*_key(r), threshold, method, target)
    table = consistency_depth_table(frames)
    if len(table) < 2:
        st.info("Only one fine-tuning depth is trained for this experiment: add depths on Home to compare them.")
    st.plotly_chart(consistency_depth_figure(table), width="stretch", key="support_consistency_depth")
    st.caption(f"One point per trained depth, each run scored on its own test split with {label} at threshold "
               f"{threshold:g}. Does fine-tuning more blocks move the support onto the lesions (Lee et al. compare "
               "depths by accuracy only)?")


def _gallery_section(run: engine.Run, threshold: float, opacity: float) -> None:
    masks = _masks(*_key(run))
    c1, c2, c3, c4 = st.columns(4)
    kind = c1.radio("Show", tuple(GALLERY_KINDS), key="support_gallery_kind")
    layer = _layer_picker(run, "support_gallery_layer", c2)
    mostly = c3.slider("'Mostly outside' means more than this share of the support", 0.3, 0.9, 0.5, 0.05,
                       key="support_mostly")
    n_show = c4.slider("Images shown", 4, 32, 12, 4, key="support_gallery_size")
    with st.spinner("Explaining every test image with Grad-CAM (once per run and layer, then cached)…"):
        gallery = _gallery(*_key(run), threshold, mostly, layer)
    n_test = len(split_rows(run, "test"))
    if not (masks["has_lesion"].any() or masks["has_lung"].any()):
        st.info("This data has no lesion or lung masks: the gallery can only list misclassified images, not those "
                "right for the wrong reason.")
    if gallery.empty:
        st.success(f"None of the {n_test} test images is misclassified or has its support mostly outside the "
                   "lesion and the lungs.")
        return
    wrong = int((~gallery["correct"]).sum())
    st.markdown(f"**{wrong}** misclassified and **{len(gallery) - wrong}** right for the wrong reason, of {n_test} "
                "test images.")
    if GALLERY_KINDS[kind] is not None:
        gallery = gallery[gallery["correct"] == GALLERY_KINDS[kind]]
    if gallery.empty:
        st.info(f"No test image of this kind ({kind.lower()}) at these settings.")
        return
    st.caption(f"Worst first; showing {min(n_show, len(gallery))} of {len(gallery)}.")
    maps, images = _split_maps(*_key(run), "gradcam", "pred", layer), _test_images(*_key(run))
    shown = gallery.head(n_show)
    for k, (cell, (_, g)) in enumerate(zip(_grid(len(shown), 4), shown.iterrows())):
        row = int(g["row"])
        lesion, lung = _masks_of(masks, row)
        with cell:
            st.plotly_chart(support_figure(images[row], maps[row], threshold=threshold, opacity=opacity,
                                           lesion=lesion, lung=lung, height=280, colorbar=False, legend=False,
                                           title=f"{k + 1}. {g['true_class']} → {g['pred_class']}"),
                            width="stretch", key=f"support_gallery_{k}", config=NO_TOOLBAR)
            st.caption(f"`{g['file']}`: {g['reason']}.")
    st.caption(
        "Grad-CAM of the predicted class at the chosen layer. Ranked by badness = the probability given to a wrong "
        "class (0 when correct) + the share of the support outside the lesion or the lungs when it exceeds the "
        "'mostly' cut. Lee et al. (figs. 9-10) found foreign bodies (ports, pacemakers) behind wrong and "
        "right-for-the-wrong-reason calls; Ouyang et al. (fig. 6) show maps lit outside the lungs in failures. "
        + OUTLINES_CAPTION)


def _depths_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float, opacity: float) -> None:
    rows, classes = split_rows(run, "test"), run.classes
    c1, c2 = st.columns([2, 1])
    row = c1.selectbox("Test image", rows.index.tolist(), format_func=lambda i: image_label(rows.loc[i], classes),
                       key="support_depth_image")
    kind = c2.radio("Explain the class", ("True", "Predicted"), horizontal=True, key="support_depth_target",
                    help="The true class shows every depth's evidence for the same class; 'predicted' each run's "
                         "own decision.")
    target = TARGETS[kind]
    masks = _masks(*_key(run))
    lesion, lung = _masks_of(masks, row)
    file = rows.loc[row, "file"]
    maps, titles = {}, {}
    with st.spinner(f"Grad-CAM of the test split for {len(runs)} depth(s) (once per run, then cached)…"):
        for depth, r in sorted(runs.items()):
            other = split_rows(r, "test")
            match = np.flatnonzero(other["file"].to_numpy() == file)
            if not len(match):
                continue
            i = int(match[0])
            maps[depth] = _split_maps(*_key(r), "gradcam", target)[i]
            pred = classes[int(other.loc[i, "pred"])]
            title = f"depth {depth}: {pred} ({float(other.loc[i, f'prob_{pred}']):.2f})"
            if lesion is not None:
                title += f" · {consistency_degree(maps[depth], lesion, threshold):.0%} of lesion"
            titles[depth] = title
    if len(maps) < 2:
        st.info("Only one fine-tuning depth of this experiment is trained with this image in its test split: add "
                "depths on Home to compare them.")
    st.plotly_chart(depth_strip_figure(_test_images(*_key(run))[row], maps, titles, threshold=threshold,
                                       opacity=opacity, lesion=lesion, lung=lung),
                    width="stretch", key="support_depth_strip", config=NO_TOOLBAR)
    st.caption("Grad-CAM on the last conv layer of each depth's run; panel titles give that run's prediction, its "
               "probability and, with a lesion mask, the consistency degree. " + OUTLINES_CAPTION)


def _diagnose_section(run: engine.Run, threshold: float, opacity: float) -> None:
    cfg = run.config
    st.markdown(f"Upload a chest X-ray or CT slice: this run's model (depth {cfg.depth}) gives its class probabilities "
                "and shows where it looked, by Grad-CAM and LIME.")
    upload = st.file_uploader("Image (PNG, JPEG, BMP or TIFF)", type=[s.lstrip(".") for s in IMAGE_SUFFIXES],
                              key="support_upload", max_upload_size=MAX_UPLOAD_BYTES // 2**20)
    n_samples = st.select_slider("LIME samples", LIME_SAMPLES, value=1000, key="support_upload_lime_samples",
                                 help="Perturbed images LIME scores; fewer is faster and noisier.")
    st.caption(f"At most {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_SIDE} px per side. The image is read in "
               f"memory only (nothing is saved), converted to gray and resized to {cfg.image_size} px"
               f"{' with CLAHE' if cfg.clahe else ''}, as the training images were. A research tool, not a "
               "diagnostic device.")
    if upload is None:
        return
    data = upload.getvalue()
    with st.spinner("Diagnosing and explaining the image…"):
        result = _diagnose(*_key(run), hashlib.sha256(data).hexdigest(), data, upload.name, n_samples)
    if isinstance(result, str):
        st.error(result)
        return
    image = result["image"]
    c1, c2, c3 = st.columns(3)
    with c1:
        st.plotly_chart(probability_figure(result["probabilities"]), width="stretch", key="support_upload_probs",
                        config=NO_TOOLBAR)
        st.plotly_chart(support_figure(image, title="Model input", height=320, legend=False), width="stretch",
                        key="support_upload_image", config=NO_TOOLBAR)
    with c2:
        st.plotly_chart(support_figure(image, result["gradcam"], threshold=threshold, opacity=opacity,
                                       title=f"Grad-CAM · {result['predicted']}"), width="stretch",
                        key="support_upload_gradcam", config=NO_TOOLBAR)
    with c3:
        st.plotly_chart(lime_figure(image, result["lime"], threshold=threshold, opacity=opacity,
                                    title=f"LIME · {result['predicted']}"), width="stretch",
                        key="support_upload_lime", config=NO_TOOLBAR)
    st.caption(f"Both maps explain the predicted class ({result['predicted']}); magenta line: support (heatmap > "
               f"{threshold:g}). {METHOD_NOTES['Grad-CAM']} {METHOD_NOTES['LIME']}")


st.title("Support Regions")
sel, runs = require_runs("Support Regions")
depth = depth_slider(runs, key="support_depth")
run = runs[depth]
c1, c2 = st.columns(2)
threshold = c1.slider("Support threshold", 0.05, 0.95, SUPPORT_THRESHOLD, 0.05, key="support_threshold",
                      help="Pixels whose heatmap value exceeds this form the support region.")
c1.caption(f"Default {SUPPORT_THRESHOLD:g} from Wan et al. §3.5: pixels with heatmap > 0.7 are support pixels, "
           "drawn as a magenta contour.")
opacity = c2.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="support_opacity")
c2.caption(f"Run `{run.id}`: {run.config.backbone}, depth {depth}, {run.config.image_size} px, "
           f"{len(split_rows(run, 'test'))} test images.")

tabs = st.tabs(SECTIONS, key="support_section", on_change="rerun")  # only the open tab runs
draw = {
    "Explain an image": lambda: _explain_section(run, threshold, opacity),
    "Consistency degree": lambda: _consistency_section(run, runs, threshold, opacity),
    "Wrong-reason gallery": lambda: _gallery_section(run, threshold, opacity),
    "Same image across depths": lambda: _depths_section(run, runs, threshold, opacity),
    "Diagnose a new image": lambda: _diagnose_section(run, threshold, opacity),
}
for tab, name in zip(tabs, SECTIONS):
    if tab.open:
        with tab:
            try:
                draw[name]()
            except engine.LungLensError as exc:
                st.error(f"{name} cannot be shown for this run: {exc}")
