"""Wan et al.'s decision-tree surrogate: hand-worked features, fidelity and paths against scikit-learn."""
from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
from skimage.feature import local_binary_pattern
from sklearn.metrics import accuracy_score
from sklearn.tree import DecisionTreeClassifier

import engine
from engine.runs import Run
from engine.surrogate import default_depth, image_choices
from engine.surrogate_features import (
    BRIGHT_DELTA,
    ZONE_STATS,
    ZONES,
    lbp_bin_name,
    lung_zones,
    zone_feature_names,
    zone_features,
)

#: What the tests fit: the tree depths checked against scikit-learn, and the engine's default seed.
CHECK_DEPTHS = (1, 3, 8)
SEED = 0


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def _value(features: np.ndarray, name: str) -> float:
    return float(features[zone_feature_names().index(name)])


# ---- features, by hand -------------------------------------------------------------------------------------------

def _two_lungs() -> tuple[np.ndarray, np.ndarray]:
    """A 60 x 60 image with two 30 x 20 lungs (rows 6-35; columns 4-23 and 36-55), each third of each lung one gray
    level (50, 60, 70 on the image's left = the patient's right; 80, 90, 100 on its right), a 4 x 4 square of 200 in
    the left lower zone and 255 outside the lungs."""
    image = np.full((60, 60), 255, np.uint8)
    lung = np.zeros((60, 60), bool)
    for cols, levels in ((slice(4, 24), (50, 60, 70)), (slice(36, 56), (80, 90, 100))):
        lung[6:36, cols] = True
        for band, level in enumerate(levels):
            image[6 + 10 * band : 16 + 10 * band, cols] = level
    image[28:32, 40:44] = 200
    return image, lung


def test_zone_statistics_by_hand():
    image, lung = _two_lungs()
    zones, from_lung = lung_zones(lung, image.shape)
    assert from_lung
    f = zone_features(image, zones)
    levels = dict(zip(ZONES, (50, 60, 70, 80, 90, 100), strict=True))
    for zone, level in levels.items():
        if zone == "left lower":
            continue
        for stat in ("mean intensity", "median intensity", "10th percentile intensity", "90th percentile intensity"):
            assert _value(f, f"{zone} zone: {stat}") == level
        assert _value(f, f"{zone} zone: intensity std") == 0
        assert _value(f, f"{zone} zone: GLCM contrast") == 0  # one gray level: no contrast, full homogeneity
        assert _value(f, f"{zone} zone: GLCM homogeneity") == 1
        assert _value(f, f"{zone} zone: bright area share") == 0
    # Left lower zone: 200 pixels, 16 of them 200 and 184 of them 100.
    assert _value(f, "left lower zone: mean intensity") == pytest.approx((184 * 100 + 16 * 200) / 200)
    assert _value(f, "left lower zone: 90th percentile intensity") == 100  # 92% of its pixels are 100
    # The lungs' median (1,200 pixels): the mean of the 600th and 601st values, 70 and 80 -> 75; only the square
    # exceeds 75 + BRIGHT_DELTA.
    assert 75 + BRIGHT_DELTA < 200 and 100 <= 75 + BRIGHT_DELTA
    assert _value(f, "left lower zone: bright area share") == pytest.approx(16 / 200)
    assert _value(f, "lungs: bright area share") == pytest.approx(16 / 1200)
    assert _value(f, "lungs: bright blobs (count)") == 1
    assert _value(f, "lungs: largest bright blob (share of lungs)") == pytest.approx(16 / 1200)
    assert len(f) == len(ZONES) * len(ZONE_STATS) + 3


def test_fixed_zones_without_a_lung_mask():
    """No mask, or a mask too small for six zones: the image's halves split in thirds of its height."""
    image = np.zeros((60, 60), np.uint8)
    image[:20, :30] = 90  # the image's upper left sixth: the patient's right upper zone
    for lung in (None, np.pad(np.ones((2, 2), bool), 29)):
        zones, from_lung = lung_zones(lung, image.shape)
        assert not from_lung
        f = zone_features(image, zones)
        assert _value(f, "right upper zone: mean intensity") == 90
        assert [_value(f, f"{z} zone: mean intensity") for z in ZONES[1:]] == [0] * 5


def test_lbp_bin_names_follow_skimage_codes():
    """A 3 x 3 neighbourhood whose right column is brighter than the centre is skimage's code for '3 of 8 neighbours
    towards the right'; a lone bright pixel is code 0 and a flat patch the 'all neighbours' code."""
    patch = np.full((5, 5), 50, np.uint8)
    patch[2, 2] = 100
    patch[:, 3:] = 200
    code = int(local_binary_pattern(patch, 8, 1, "nri_uniform")[2, 2])
    assert lbp_bin_name(code).endswith("3 of 8 neighbours ≥ centre, towards right")
    patch[:, :] = 50
    assert lbp_bin_name(int(local_binary_pattern(patch, 8, 1, "nri_uniform")[2, 2])).startswith(
        "LBP bin 57: flat or dark spot")
    patch[2, 2] = 200
    assert lbp_bin_name(int(local_binary_pattern(patch, 8, 1, "nri_uniform")[2, 2])).startswith(
        "LBP bin 0: bright spot")


# ---- the surrogate against scikit-learn ----------------------------------------------------------------------------

def stored_predictions(run: Run) -> np.ndarray:
    """The CNN's predicted classes as the run stored them: the argmax of its class probabilities."""
    return run.predictions[[f"prob_{c}" for c in run.classes]].to_numpy().argmax(1)


def imperfect_predictions(run: Run) -> np.ndarray:
    """An imperfect CNN's predictions: the true class, but the next class for every third image. (The tiny test
    CNNs predict one class for every image, which makes every surrogate a single leaf.)"""
    y = run.predictions["y"].to_numpy()
    return np.where(np.arange(len(y)) % 3 == 0, (y + 1) % len(run.classes), y)


def shifted_predictions(run: Run) -> np.ndarray:
    """A CNN that is always wrong: the next class after the true one."""
    return (run.predictions["y"].to_numpy() + 1) % len(run.classes)


@pytest.fixture(params=["stored", "imperfect"])
def cnn_of(request, monkeypatch):
    """The CNN's predictions the surrogate reads: the run's own, or an imperfect CNN's (patched into the engine)."""
    if request.param == "stored":
        return stored_predictions
    monkeypatch.setattr("engine.surrogate.cnn_predictions", imperfect_predictions)
    return imperfect_predictions


def _data(run: Run, cnn_of, inputs: str = "handcrafted"):
    """The engine's input matrix and names, the CNN's predicted classes, the labels and the train / test rows."""
    x, names = engine.surrogate_inputs(run, inputs)
    split = run.predictions["split"].to_numpy()
    return x, names, cnn_of(run), run.predictions["y"].to_numpy(), split == "train", split == "test"


def _tree(x: np.ndarray, target: np.ndarray, depth: int, seed: int = SEED) -> DecisionTreeClassifier:
    return DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(x, target)


@pytest.mark.parametrize(("inputs", "depths"), [("handcrafted", (0, 5)), ("both", (5,))])
def test_fidelity_equals_scikit_learn(runs, cnn_of, inputs, depths):
    for run in (runs[d] for d in depths):
        x, names, cnn, y, train, test = _data(run, cnn_of, inputs)
        assert x.shape == (len(run.predictions), len(names))
        table = engine.surrogate_fidelity(run, inputs).set_index("depth")
        assert list(table.index) == list(range(1, 9))
        for depth in CHECK_DEPTHS:
            tree = _tree(x[train], cnn[train], depth)
            row = table.loc[depth]
            assert row["test_fidelity"] == accuracy_score(cnn[test], tree.predict(x[test]))
            assert row["train_fidelity"] == accuracy_score(cnn[train], tree.predict(x[train]))
            assert row["test_accuracy"] == accuracy_score(y[test], tree.predict(x[test]))
            assert row["cnn_test_accuracy"] == accuracy_score(y[test], cnn[test])
            assert row["leaves"] == tree.get_n_leaves()


def test_deep_inputs_are_train_fitted_pcs(runs):
    from sklearn.decomposition import PCA

    from engine.projections import run_features

    run = runs[5]
    x, names, _, _, train, _ = _data(run, stored_predictions, "deep")
    deep = run_features(run, "deep")
    expected = PCA(n_components=x.shape[1], random_state=SEED).fit(deep[train]).transform(deep)
    np.testing.assert_allclose(np.abs(x), np.abs(expected), rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    assert names[0].startswith("deep PC 1 (")


def test_nodes_count_the_split(runs, monkeypatch):
    """Leaves partition each split; every split node holds its children's images; counts are the CNN's classes."""
    monkeypatch.setattr("engine.surrogate.cnn_predictions", imperfect_predictions)
    run = runs[5]
    _, _, cnn, _, train, test = _data(run, imperfect_predictions)
    tree = engine.surrogate_tree(run, 3)
    nodes = tree["nodes"]
    leaves = [n for n in nodes if n["leaf"]]
    assert len(leaves) > 1
    assert sum(n["n_train"] for n in leaves) == train.sum() == tree["n_train"]
    assert sum(n["n_test"] for n in leaves) == test.sum() == tree["n_test"]
    assert np.sum([n["cnn_counts_test"] for n in leaves], axis=0).tolist() == np.bincount(
        cnn[test], minlength=len(run.classes)).tolist()
    assert nodes[0]["cnn_counts"] == np.bincount(cnn[train], minlength=len(run.classes)).tolist()
    for n in nodes:
        if not n["leaf"]:
            kids = nodes[n["left"]], nodes[n["right"]]
            assert n["n_train"] == sum(k["n_train"] for k in kids)
            assert n["cnn_counts"] == np.sum([k["cnn_counts"] for k in kids], axis=0).tolist()
            assert n["feature"]
    json.dumps(tree)  # JSON as cached


def test_path_follows_scikit_learn(runs, monkeypatch):
    monkeypatch.setattr("engine.surrogate.cnn_predictions", imperfect_predictions)
    run = runs[5]
    x, _, cnn, y, train, _ = _data(run, imperfect_predictions)
    depth = 4
    tree = _tree(x[train], cnn[train], depth)
    choices = image_choices(run)
    rows = list(choices)
    wrong = [r for r in rows if cnn[r] != y[r]]
    assert wrong and rows[: len(wrong)] == wrong and all(choices[r] for r in wrong)  # misclassified ones first
    for row in rows[:2] + rows[-2:]:
        path = engine.surrogate_path(run, depth, "handcrafted", row)
        assert len(path) > 1
        assert [s["node"] for s in path] == tree.decision_path(x[row : row + 1]).indices.tolist()
        for s, nxt in pairwise(path):
            went_left = x[row, tree.tree_.feature[s["node"]]] <= tree.tree_.threshold[s["node"]]
            assert s["went"] == ("left" if went_left else "right")
            assert nxt["node"] == (tree.tree_.children_left if went_left else tree.tree_.children_right)[s["node"]]
        leaf = path[-1]
        assert leaf["leaf"] and leaf["tree"] == tree.predict(x[row : row + 1])[0]
        assert (leaf["cnn"], leaf["truth"]) == (cnn[row], y[row])


def test_fitted_to_predictions_not_labels(runs, monkeypatch):
    """A CNN that always predicts the next class: the tree follows its predictions (fidelity as scikit-learn fitted
    to them), and agrees with the labels only where it fails to follow them."""
    monkeypatch.setattr("engine.surrogate.cnn_predictions", shifted_predictions)
    run = runs[5]
    x, _, cnn, y, train, test = _data(run, shifted_predictions)
    assert (cnn != y).all()
    table = engine.surrogate_fidelity(run, "handcrafted", (2, 8)).set_index("depth")
    for depth in (2, 8):
        tree = _tree(x[train], cnn[train], depth)
        assert table.loc[depth, "test_fidelity"] == accuracy_score(cnn[test], tree.predict(x[test]))
        assert table.loc[depth, "test_accuracy"] == accuracy_score(y[test], tree.predict(x[test]))
    assert table.loc[8, "train_fidelity"] > 0.5 > accuracy_score(y[train], tree.predict(x[train]))
    assert table.loc[8, "cnn_test_accuracy"] == 0


def test_default_depth():
    import pandas as pd

    table = pd.DataFrame({"depth": [1, 2, 3, 4], "test_fidelity": [0.5, 0.92, 0.95, 0.9]})
    assert default_depth(table) == 2
    assert default_depth(table.assign(test_fidelity=0.5)) == 3


def test_inputs_and_depths_are_checked(runs):
    with pytest.raises(engine.ConfigError, match="Unknown surrogate inputs"):
        engine.surrogate_fidelity(runs[0], "pixels")
    with pytest.raises(engine.ConfigError, match="depths must be 1 or more"):
        engine.surrogate_fidelity(runs[0], "handcrafted", (0, 1))


def test_volume_runs_get_deep_inputs_only():
    """A 3-D CT run (known by its backbone) is offered the deep-feature PCs only; handcrafted inputs are refused."""
    from types import SimpleNamespace

    from engine.surrogate import input_choices

    volume = SimpleNamespace(config=SimpleNamespace(backbone="resnet3d18"))
    assert input_choices(volume) == ("deep",)
    for inputs in ("handcrafted", "both"):
        with pytest.raises(engine.ConfigError, match="describe 2-D images"):
            engine.surrogate_fidelity(volume, inputs)


def test_progress_and_cancel(runs):
    """Progress is reported in order; a cancel stops the fit and caches nothing."""
    from engine.errors import Cancelled

    run, seed = runs[0], 3
    heard: list[float] = []
    engine.surrogate_fidelity(run, "handcrafted", (1, 2), seed, progress=lambda f, _text: heard.append(f))
    assert heard == sorted(heard) and heard[-1] < 1 and len(heard) >= 2
    with pytest.raises(Cancelled):
        engine.surrogate_fidelity(run, "handcrafted", (1, 2, 3), seed, cancel=lambda: True)
    cached = run.artifact("").glob(f"surrogate-fidelity-handcrafted-seed{seed}-*.json")
    assert [p.name.rsplit("-", 1)[1] for p in cached] == ["d1_2.json"]
