"""The Layers page's section on Wan et al.'s decision-tree surrogate (sec. 4, future work): how faithfully a tree on
named features follows the CNN, the tree itself, example images per leaf, and one image's route through it."""
from __future__ import annotations

from pathlib import PurePath
from typing import Any

import streamlit as st

import engine
from dashboard.background import background, cached
from dashboard.exports import export_name
from dashboard.features_charts import image_labels
from dashboard.layers_charts import gray_as_rgb, image_grid_figure
from dashboard.surrogate_charts import BOX_DEPTH, fidelity_figure, tree_figure
from dashboard.url_state import url_set, url_widget
from dashboard.widgets import caption, figure, run_images
from engine.layers import case_slice
from engine.surrogate import FIDELITY_TARGET, default_depth, image_choices, input_choices
from engine.surrogate_features import BRIGHT_DELTA, DEEP_PCS, VOLUME_REASON

TITLE = "Decision-tree surrogate (Wan et al. §4)"
INPUT_LABELS = {"handcrafted": "Interpretable features", "deep": f"Deep-feature PCs ({DEEP_PCS})", "both": "Both"}
#: Columns of the leaf's example thumbnails.
EXAMPLE_COLS = 4
WRONG_MARK = "✗ "


def _name(file: str) -> str:
    return PurePath(file).name


def _image_picker(run: engine.Run, where: Any) -> int:
    """A test image to trace (CNN-misclassified first, marked), kept in the URL as ``tree_image``; returns its row."""
    wrong = cached(image_choices, run)
    rows = list(wrong)
    preds = run.predictions
    labels = image_labels(preds, run.classes)
    return url_widget(where.selectbox, "Trace a test image", rows, key="surrogate_image", param="tree_image",
                      default=rows[0], encode=lambda r: str(preds["file"].iloc[r]),
                      format_func=lambda r: (WRONG_MARK if wrong[r] else "") + labels[r],
                      help=f"{WRONG_MARK.strip()}: the CNN misclassified it (listed first). Each option: file · true "
                           "class (→ the CNN's class when it is wrong).")


def _leaf_picker(tree: dict[str, Any], leaf_of_image: int, context: str, where: Any) -> int:
    """A leaf of the tree (default: the traced image's), kept in the URL as ``tree_leaf``; returns its node id.
    ``context`` names the tree and traced image: when it changes, the leaf starts again from the image's."""
    if st.session_state.get("surrogate_leaf_context", context) != context:
        url_set("tree_leaf", None)  # a leaf of another tree, or another image's: not what the new view opens on
    st.session_state["surrogate_leaf_context"] = context
    classes = tree["classes"]
    leaves = {n["id"]: n for n in tree["nodes"] if n["leaf"]}

    def label(i: int) -> str:
        n = leaves[i]
        mark = " · the traced image's leaf" if i == leaf_of_image else ""
        return (f"leaf {i}: tree says {classes[n['predicted']]} · {n['n_train']} train / {n['n_test']} test images, "
                f"{n['n_test_cnn_wrong']} misclassified by the CNN{mark}")

    return url_widget(where.selectbox, "Leaf", list(leaves), key=f"surrogate_leaf_{context}", param="tree_leaf",
                      default=leaf_of_image, format_func=label)


def _path_words(path: list[dict[str, Any]], classes: tuple[str, ...]) -> None:
    """The traced image's decisions in words, then the leaf's verdict (warning when the tree or the CNN is wrong)."""
    lines = [f"{i}. **{s['feature']}** = {s['value']:.4g}, {'≤' if s['went'] == 'left' else '>'} "
             f"{s['threshold']:.4g} → {s['went']} (node {s['node']} → {s['next']})" for i, s in enumerate(path[:-1], 1)]
    st.markdown("\n".join(lines) if lines else "The tree is a single leaf: every image ends there.")
    leaf = path[-1]
    text = leaf["text"][0].upper() + leaf["text"][1:] + "."
    if leaf["tree"] == leaf["cnn"] == leaf["truth"]:
        st.success(text)
    elif leaf["cnn"] != leaf["truth"]:
        st.warning(f"The CNN misclassified this image. {text}")
    else:
        st.info(text)


def _leaf_examples(run: engine.Run, tree: dict[str, Any], leaf: int) -> None:
    """The chosen leaf's example test images (CNN-misclassified first) as thumbnails."""
    node = tree["nodes"][leaf]
    examples, classes = node["examples"], tree["classes"]
    if not examples:
        st.info(f"No test image reaches leaf {leaf}; {node['n_train']} train images do.")
        return
    rows = [e["row"] for e in examples]
    images = run_images(run)[rows]
    if images.ndim == 4:  # CT volumes: each by its axial slice with the most lesion (as the Layers page shows them)
        images = images[range(len(rows)), [cached(case_slice, run, r) for r in rows]]
    tiles = gray_as_rgb(images) / 255.0
    titles = [f"{_name(e['file'])}<br>true {classes[e['truth']]}<br>CNN {classes[e['cnn']]}" for e in examples]
    fig = image_grid_figure(tiles, cols=EXAMPLE_COLS, titles=titles, row_height=170)
    figure(fig, export_name(run, f"surrogate-leaf{leaf}"), key="surrogate_leaf")
    caption(f"Up to {len(examples)} of the {node['n_test']} test images that reach leaf {leaf}, those the CNN "
            "misclassified first, then those where the tree disagrees with the CNN.")


def surrogate_section(run: engine.Run, runs: dict[int, engine.Run]) -> None:
    """Wan et al.'s decision-tree surrogate of ``run`` (the run at the page's depth; ``runs``, the selection's runs by
    depth, are not needed: the surrogate explains one CNN)."""
    del runs
    st.subheader(TITLE)
    choices = cached(input_choices, run)
    if len(choices) == 1:
        st.info(VOLUME_REASON)
    inputs = url_widget(st.radio, "Surrogate inputs", choices, key="surrogate_inputs", param="tree_inputs",
                        default=choices[0], format_func=INPUT_LABELS.get, horizontal=True,
                        help="Interpretable: Wan's 59 LBP bins, intensity and texture statistics of six lung zones, "
                             "bright (lesion-like) areas. Deep-feature PCs: the first principal components of the "
                             "CNN's deep features (fitted on the train split): faithful but not readable.")
    table = background(engine.surrogate_fidelity, run, inputs, reports=True,
                       label=f"Decision-tree surrogates on {INPUT_LABELS[inputs].lower()}", name="surrogate_job")
    if table is None:
        return
    c1, c2 = st.columns([1, 2])
    depths = [int(d) for d in table["depth"]]
    depth = url_widget(c1.select_slider, "Tree depth", depths, key="surrogate_depth", param="tree_depth",
                       default=default_depth(table),
                       help=f"Opens at the shallowest depth whose test fidelity reaches {FIDELITY_TARGET:.0%}.")
    row = _image_picker(run, c2)
    figure(fidelity_figure(table, depth, FIDELITY_TARGET), export_name(run, f"surrogate-fidelity-{inputs}"),
           key="surrogate_fidelity")
    caption(
        "Wan et al. (§4) proposed a decision tree approximating the CNN. Here a scikit-learn tree is fitted on the "
        f"train split ({table.attrs['n_train']} images, {table.attrs['n_features']} inputs) to the CNN's "
        "predictions, not to the true labels. **Fidelity is agreement with the CNN's predictions, not accuracy**: "
        f"the share of the {table.attrs['n_test']} test images on which the tree predicts the CNN's class, "
        "whether the CNN is right or wrong. The dotted line is the tree's own accuracy against the true labels; "
        "a deeper tree follows the CNN more closely but is harder to read."
    )
    tree = cached(engine.surrogate_tree, run, depth, inputs)
    path = cached(engine.surrogate_path, run, depth, inputs, row)
    leaf = _leaf_picker(tree, path[-1]["node"], f"{inputs}-{depth}-{row}", st)
    figure(tree_figure(tree, [s["node"] for s in path], leaf), export_name(run, f"surrogate-tree-{inputs}-d{depth}"),
           key="surrogate_tree")
    if len(tree["nodes"]) == 1:
        st.info(f"The CNN predicts {run.classes[tree['nodes'][0]['predicted']]} for every train image, so the tree "
                "has nothing to split: at every depth it is a single leaf.")
    zones = ("" if inputs == "deep" else
             " Zones are the patient's right / left lung (the image's left / right) in thirds of its height; bright "
             f"= more than {BRIGHT_DELTA} gray levels above the lungs' median; an LBP bin is the share of pixels "
             "whose 8 neighbours form that pattern (each neighbour ≥ the centre or not).")
    caption(
        f"The tree of depth {depth} (test fidelity {tree['test_fidelity']:.1%}): each split sends an image left when "
        "its value is ≤ the threshold; n = train images at the node, with the CNN's majority class there and its "
        f"share; colour = the class the tree predicts. Nodes below level {BOX_DEPTH} show their split on hover. "
        "Black: the traced image's route; yellow: the chosen leaf." + zones
    )
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Route of {_name(run.predictions['file'].iloc[row])}**")
        _path_words(path, run.classes)
    with right:
        _leaf_examples(run, tree, leaf)
