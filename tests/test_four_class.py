"""Cheng et al.'s four classes (normal, bacterial, viral, covid): a four-class folder trains and is evaluated per class
like the three-class data, the built-in four-class phantoms and their findings, and the "cheng" preset."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import classification_report, confusion_matrix

import engine
from engine.config import preset
from engine.data.folder import load_folder
from engine.data.phantom import FOUR_CLASSES, PhantomSpec, render_phantom, write_phantom_dataset
from engine.data.sources import BUILTIN_4CLASS, builtin_root
from engine.evaluation import evaluate_run
from engine.models.names import BACKBONES

#: Where each class's bright patch sits in the test folder (rows, columns of a 64-px image).
_PATCHES = {"normal": None, "bacterial": (10, 6), "viral": (10, 34), "covid": (36, 20)}


def _write_four_class_folder(root: Path, per_class: int = 10, size: int = 64) -> Path:
    """images/<class>/*.png for the four classes, each with its bright patch in a class-specific place."""
    rng = np.random.default_rng(4)
    for name, corner in _PATCHES.items():
        (root / "images" / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(20, 90, (size, size)).astype(np.uint8)
            if corner:
                y, x = corner[0] + int(rng.integers(-2, 3)), corner[1]
                img[y : y + 14, x : x + 20] = 200
            cv2.imwrite(str(root / "images" / name / f"{name}_{i:02d}.png"), img)
    return root


@pytest.fixture(scope="module")
def four_class_run(tmp_path_factory):
    """A one-epoch AlexNet (scratch, 64 px, narrow head) trained on a four-class folder in the session's cache."""
    folder = _write_four_class_folder(tmp_path_factory.mktemp("four") / "data")
    cfg = engine.RunConfig(data=str(folder), init="scratch", image_size=64, head_width=16, epochs=1, depth=1,
                           patience=0, batch_size=8, test_fraction=0.25, val_fraction=0.2)
    return engine.train_run(cfg)


def test_a_four_class_folder_trains_with_covid_as_the_positive_class(four_class_run):
    run = four_class_run
    assert run.classes == tuple(sorted(FOUR_CLASSES))
    assert run.classes[run.positive] == "covid"
    preds = run.predictions
    assert set(preds["y"]) == {0, 1, 2, 3} and preds.filter(like="prob_").shape[1] == 4


def test_per_class_scores_and_the_confusion_matrix_match_scikit_learn(four_class_run):
    run = four_class_run
    test = run.predictions[run.predictions["split"] == "test"]
    y, pred = test["y"].to_numpy(int), test["pred"].to_numpy(int)
    result = evaluate_run(run, n_boot=20)
    expected = classification_report(y, pred, labels=[0, 1, 2, 3], target_names=list(run.classes), output_dict=True,
                                     zero_division=np.nan)
    rows = {r["class"]: r for r in result["per_class"]}
    assert list(rows) == list(run.classes)
    for name in run.classes:
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("F1", "f1-score")):
            want = expected[name][theirs]
            assert (rows[name][ours] is None) if np.isnan(want) else rows[name][ours] == pytest.approx(want)
        assert rows[name]["support"] == expected[name]["support"]
    counts = np.array(result["confusion"]["counts"])
    assert counts.shape == (4, 4)
    assert np.array_equal(counts, confusion_matrix(y, pred, labels=[0, 1, 2, 3]))
    assert result["classes"][result["positive"]] == "covid"


def test_builtin_four_class_source_has_four_classes_with_lesion_and_lung_masks():
    ds = engine.load_dataset(BUILTIN_4CLASS, per_class=5, seed=2)
    assert ds.classes == tuple(sorted(FOUR_CLASSES)) and ds.has_masks and ds.has_lung_masks
    assert ds.items["label"].value_counts().to_dict() == {c: 5 for c in FOUR_CLASSES}
    root = builtin_root(PhantomSpec(task="4class", n_per_class=5, seed=2))
    assert root.name.startswith("builtin-4class-") and Path(ds.items["path"].iloc[0]).is_relative_to(root)
    for row in ds.items.itertuples():
        lesion = cv2.imread(row.mask, cv2.IMREAD_GRAYSCALE) > 127
        lung = cv2.imread(row.lung_mask, cv2.IMREAD_GRAYSCALE) > 127
        assert lung.mean() > 0.15 and not (lesion & ~lung).any()
        assert lesion.any() == (row.label != "normal")


def test_the_confounder_marker_applies_to_the_four_class_phantoms(tmp_path):
    spec = PhantomSpec(task="4class", n_per_class=30, image_size=32, seed=1, confounder_class="viral",
                       confounder_prob=0.9)
    manifest = pd.read_csv(write_phantom_dataset(tmp_path / "m", spec) / "manifest.csv")
    rate = manifest.groupby("class")["marker"].mean()
    assert rate["viral"] > 0.7 and max(rate[c] for c in ("normal", "bacterial", "covid")) < 0.3
    assert load_folder(tmp_path / "m").classes == tuple(sorted(FOUR_CLASSES))


def _lung_sides(lung: np.ndarray) -> list[np.ndarray]:
    """The two lung fields (largest components of the lung mask), image left first."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(lung.astype(np.uint8))
    big = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:2]
    return [labels == i for i in sorted(big, key=lambda i: centroids[i][0])]


def _lesion_statistics(label: str, seeds: range, size: int = 128) -> pd.DataFrame:
    """Per image: share of the lesion in its main lung, lesion share of the lungs, distance of the lesion from the
    midline of the lungs (0 medial, 1 lateral) and the lesion's brightness over the rest of the lungs."""
    rows = []
    for seed in seeds:
        ph = render_phantom(np.random.default_rng(seed), label, size)
        sides = _lung_sides(ph.lung_mask)
        per_side = np.array([(ph.lesion_mask & s).sum() for s in sides], float)
        cols = np.nonzero(ph.lung_mask)[1]
        mid, half = (cols.min() + cols.max()) / 2, (cols.max() - cols.min()) / 2
        inside = ph.image[ph.lesion_mask].astype(float).mean()
        rows.append({"main_side": per_side.max() / per_side.sum(), "both": per_side.min() / per_side.sum() > 0.2,
                     "area": ph.lesion_mask.sum() / ph.lung_mask.sum(),
                     "lateral": np.abs(np.nonzero(ph.lesion_mask)[1] - mid).mean() / half,
                     "contrast": inside - ph.image[ph.lung_mask & ~ph.lesion_mask].astype(float).mean()})
    return pd.DataFrame(rows)


def test_bacterial_is_one_sided_and_dense_viral_bilateral_diffuse_and_perihilar():
    bacterial, viral, covid = (_lesion_statistics(c, range(16)) for c in ("bacterial", "viral", "covid"))
    assert bacterial["both"].mean() < 0.35 and viral["both"].mean() > 0.85  # one lung vs both
    assert bacterial["main_side"].mean() > 0.85 > viral["main_side"].mean()
    assert viral["area"].median() > bacterial["area"].median()  # diffuse vs focal
    assert viral["lateral"].mean() < covid["lateral"].mean() - 0.1  # perihilar vs peripheral ground glass
    assert bacterial["contrast"].mean() > viral["contrast"].mean() > 0  # consolidation is denser than the haze


def test_cheng_preset_is_dpn_se_on_the_four_class_phantoms():
    p = preset("cheng")
    c = p.config
    assert c.data == BUILTIN_4CLASS and c.backbone == "dpn92se" and "dpn92se" in BACKBONES
    assert p.depths == (0, 5) and c.init == "builtin" and c.image_size == 128 and c.augment
    assert (c.optimizer, c.lr, c.weight_decay, c.scheduler) == ("adam", 1e-3, 1e-4, "cosine")
    assert (c.epochs, c.patience, c.batch_size, c.builtin_per_class) == (6, 3, 32, 40)
    assert c.positive_class == "covid" and "40 images a class" in p.description


@pytest.mark.parametrize(("classes", "expected"), [
    (("bacterial", "covid", "normal", "viral"), "covid"),
    (("COVID-19", "bacterial", "normal", "viral"), "COVID-19"),
    (("Normal", "bacterial", "covid_19"), "covid_19"),
    (("normal", "pneumonia"), "pneumonia"),  # no covid spelling: the first class that is not a negative finding
])
def test_positive_class_found_by_covid_spellings(classes, expected):
    from engine.runs import positive_index

    assert classes[positive_index(engine.RunConfig(), classes)] == expected


def test_external_mapping_suggests_four_class_names():
    from engine.external import suggest_mapping

    four = ("bacterial", "covid", "normal", "viral")
    assert suggest_mapping(["Viral_Pneumonia", "bacterial_pneumonia", "healthy", "covid"], four) == {
        "Viral_Pneumonia": "viral", "bacterial_pneumonia": "bacterial", "healthy": "normal"}
    # A three-class run scored on a four-class folder: both pneumonias become "pneumonia".
    assert suggest_mapping(list(four), ("covid", "normal", "pneumonia")) == {"bacterial": "pneumonia",
                                                                              "viral": "pneumonia"}
