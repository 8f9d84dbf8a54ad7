"""The built-in phantom generator: anatomy-consistent masks, determinism, patients, the shortcut marker, the layout,
and the multi-label source corpus."""
import cv2
import numpy as np
import pandas as pd
import pytest

from engine.data import phantom as ph_module
from engine.data.folder import load_folder
from engine.data.phantom import (
    LESION_CLASSES,
    SOURCE_CLASSES,
    SOURCE_TARGETS,
    PhantomSpec,
    random_anatomy,
    render_phantom,
    source_corpus,
    write_phantom_dataset,
)
from engine.errors import ConfigError


def _render(label, seed, size=96, **kw):
    return render_phantom(np.random.default_rng(seed), label, size, **kw)


@pytest.mark.parametrize("label", LESION_CLASSES + SOURCE_CLASSES)
def test_lesion_masks_lie_inside_the_lungs_and_are_empty_for_normal(label):
    for seed in range(6):
        ph = _render(label, seed)
        assert ph.image.dtype == np.uint8 and ph.image.shape == (96, 96)
        assert ph.lesion_mask.dtype == bool and ph.lung_mask.dtype == bool
        assert not (ph.lesion_mask & ~ph.lung_mask).any()
        assert 0.15 < ph.lung_mask.mean() < 0.6  # two lung fields, not the whole film
        if label in ("normal", "clear", "cardiomegaly"):
            assert not ph.lesion_mask.any()
        else:
            assert ph.lesion_mask.any()


def test_two_lungs_one_each_side_of_the_mediastinum():
    for seed in range(5):
        lung = _render("normal", seed, size=128).lung_mask.astype(np.uint8)
        n, _, stats, centroids = cv2.connectedComponentsWithStats(lung)
        big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] > 200]
        assert len(big) == 2
        xs = sorted(centroids[i][0] for i in big)
        assert xs[0] < 64 < xs[1]
        columns = np.flatnonzero(lung[:, int(xs[0]) : int(xs[1])].any(0) == 0)
        assert columns.size >= 5  # a mediastinum with no lung in it between the two


def test_covid_is_bilateral_more_often_than_pneumonia():
    def bilateral(label, seed):
        m = _render(label, seed, size=128).lesion_mask
        return m[:, :64].any() and m[:, 64:].any()

    covid = np.mean([bilateral("covid", s) for s in range(30)])
    pneumonia = np.mean([bilateral("pneumonia", s) for s in range(30)])
    assert covid > 0.8 and pneumonia < 0.5


def test_covid_opacities_are_basal_and_pneumonia_is_denser():
    covid_rows, lung_rows, contrast = [], [], {"covid": [], "pneumonia": []}
    for seed in range(12):
        for label in ("covid", "pneumonia"):
            ph = _render(label, seed, size=128)
            inside = ph.image[ph.lesion_mask].astype(float).mean()
            rest = ph.image[ph.lung_mask & ~ph.lesion_mask].astype(float).mean()
            contrast[label].append(inside - rest)
            if label == "covid":
                covid_rows.append(np.nonzero(ph.lesion_mask)[0].mean())
                lung_rows.append(np.nonzero(ph.lung_mask)[0].mean())
    assert np.mean(covid_rows) > np.mean(lung_rows)  # lower zones more than the lungs as a whole
    assert min(contrast["covid"]) > 0 and min(contrast["pneumonia"]) > 0  # findings brighten the lung
    assert np.mean(contrast["pneumonia"]) > np.mean(contrast["covid"])


def test_cardiomegaly_takes_lung_area_from_the_left_lung():
    rng = np.random.default_rng(3)
    anatomy = random_anatomy(rng)
    film = ph_module._random_film(rng, ap=False, rotated=False)
    plain, _ = ph_module._render(np.random.default_rng(9), 128, anatomy, film, (), False)
    big, _ = ph_module._render(np.random.default_rng(9), 128, anatomy, film, ("cardiomegaly",), False)
    # The heart sits on the image right (the patient's left); the film's shift and tilt are the same for both.
    left_loss = int(plain.lung_mask[:, 64:].sum()) - int(big.lung_mask[:, 64:].sum())
    right_loss = int(plain.lung_mask[:, :64].sum()) - int(big.lung_mask[:, :64].sum())
    assert left_loss > 0.07 * plain.lung_mask[:, 64:].sum()
    assert left_loss > 1.3 * right_loss >= 0  # most of the heart lies left of the midline


def test_generation_is_deterministic_per_seed(tmp_path):
    spec = PhantomSpec(n_per_class=4, image_size=64, seed=5)
    a = write_phantom_dataset(tmp_path / "a", spec)
    b = write_phantom_dataset(tmp_path / "b", spec)
    c = write_phantom_dataset(tmp_path / "c", PhantomSpec(n_per_class=4, image_size=64, seed=6))
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())
    assert np.array_equal(_render("covid", 11).image, _render("covid", 11).image)
    assert not np.array_equal(_render("covid", 11).image, _render("covid", 12).image)


def test_layout_manifest_and_patients(tmp_path):
    root = write_phantom_dataset(tmp_path / "d", PhantomSpec(n_per_class=30, image_size=64, seed=0))
    manifest = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    columns = {"file", "class", "patient_id", "split", "mask_file", "lung_mask_file", "marker", "marker_box"}
    assert columns <= set(manifest)
    assert manifest["class"].value_counts().to_dict() == {c: 30 for c in LESION_CLASSES}
    per_patient = manifest.groupby("patient_id")
    assert per_patient.size().max() in (2, 3) and (per_patient.size() > 1).sum() >= 3
    assert (per_patient["class"].nunique() == 1).all()
    for row in manifest.head(5).itertuples():
        img = cv2.imread(str(root / row.file), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(root / row.mask_file), cv2.IMREAD_UNCHANGED)
        assert img.shape == mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    ds = load_folder(root)  # the same loader as a user's folder
    assert ds.classes == tuple(sorted(LESION_CLASSES)) and ds.has_masks and ds.has_lung_masks
    assert ds.items.groupby("group")["label"].nunique().max() == 1


def test_shortcut_marker_sits_outside_the_lungs_with_the_chosen_frequency(tmp_path):
    for seed in range(5):
        ph = _render("normal", seed, size=128, marker=True)
        x, y, w, h = ph.marker_box
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert ph.image[y : y + h, x : x + w].mean() > 150
        box = np.zeros_like(ph.lung_mask)
        box[y : y + h, x : x + w] = True
        assert not (box & ph.lung_mask).any()
        assert _render("normal", seed, size=128).marker_box is None
    spec = PhantomSpec(n_per_class=60, image_size=32, seed=1, confounder_class="covid", confounder_prob=0.9)
    manifest = pd.read_csv(write_phantom_dataset(tmp_path / "m", spec) / "manifest.csv")
    rate = manifest.groupby("class")["marker"].mean()
    assert rate["covid"] > 0.75 and rate["normal"] < 0.25 and rate["pneumonia"] < 0.25
    plain_root = write_phantom_dataset(tmp_path / "p", PhantomSpec(n_per_class=10, image_size=32))
    plain = pd.read_csv(plain_root / "manifest.csv")
    assert plain["marker"].sum() == 0


def test_source_task_folder_has_its_classes_and_multilabel_columns(tmp_path):
    root = write_phantom_dataset(tmp_path / "s", PhantomSpec(task="source", n_per_class=4, image_size=32))
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(SOURCE_CLASSES)
    assert not (root / "masks").exists()
    manifest = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    assert {f"target_{t}" for t in SOURCE_TARGETS} <= set(manifest)
    primary = {"nodules": "target_nodule", "effusion": "target_effusion", "cardiomegaly": "target_cardiomegaly"}
    for cls, column in primary.items():
        assert (manifest.loc[manifest["class"] == cls, column] == 1).all()
        assert (manifest.loc[manifest["class"] != cls, column] == 0).all()
    clear = manifest[manifest["class"] == "clear"]
    assert (clear[[f"target_{t}" for t in ph_module.SOURCE_FINDINGS]] == 0).all().all()


def test_source_corpus_shapes_prevalences_and_determinism():
    n = 240
    images, targets = source_corpus(n, 48, seed=7)
    assert images.shape == (n, 48, 48) and images.dtype == np.uint8
    assert targets.shape == (n, len(SOURCE_TARGETS)) and targets.dtype == np.float32
    assert set(np.unique(targets)) <= {0.0, 1.0}
    prevalence = dict(zip(SOURCE_TARGETS, targets.mean(0), strict=True))
    for name in ph_module.SOURCE_FINDINGS:  # binomial(240, 0.2): mean 48, sd 6.2
        assert 0.1 < prevalence[name] < 0.3, (name, prevalence[name])
    assert 0.25 < prevalence["ap_view"] < 0.45 and 0.35 < prevalence["female"] < 0.65
    assert all(0.03 < v < 0.97 for v in prevalence.values())  # every target is learnable: both values occur
    clear = (targets[:, : len(ph_module.SOURCE_FINDINGS)].sum(1) == 0).mean()
    assert 0.15 < clear < 0.4  # 0.8 ** 6 = 0.26
    again_images, again_targets = source_corpus(20, 48, seed=7)
    assert np.array_equal(again_images, images[:20]) and np.array_equal(again_targets, targets[:20])
    other, _ = source_corpus(20, 48, seed=8)
    assert not np.array_equal(other, images[:20])
    assert images.std(axis=(1, 2)).min() > 10  # radiographs, not blank frames


def test_source_corpus_progress_is_reported():
    calls = []
    source_corpus(3, 32, seed=0, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_spec_records_the_generator_version():
    assert PhantomSpec().to_dict()["generator"] == 3


@pytest.mark.parametrize("kw,match", [
    ({"task": "other"}, "task"),
    ({"n_per_class": 0}, "n_per_class"),
    ({"confounder_prob": 1.5}, "confounder_prob"),
    ({"confounder_class": "flu", "confounder_prob": 0.5}, "confounder_class"),
])
def test_bad_spec_values_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        PhantomSpec(**kw)


def test_bad_label_and_corpus_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="label"):
        _render("flu", 0)
    with pytest.raises(ConfigError, match="image_size"):
        source_corpus(4, 8, seed=0)


def test_the_four_class_task_leaves_the_three_class_cache_key_alone():
    assert PhantomSpec().to_dict() == {"task": "lesions", "n_per_class": 300, "image_size": 256, "seed": 0,
                                       "confounder_class": None, "confounder_prob": 0.0, "generator": 3}
    four = PhantomSpec(task="4class").to_dict()
    assert four["task"] == "4class" and four["generator_4class"] == ph_module.FOUR_CLASS_VERSION
    assert PhantomSpec(task="4class").classes == ("normal", "bacterial", "viral", "covid")


def test_four_class_lesions_lie_inside_the_lungs():
    for label in ph_module.FOUR_CLASSES:
        for seed in range(4):
            ph = _render(label, seed)
            assert not (ph.lesion_mask & ~ph.lung_mask).any()
            assert ph.lesion_mask.any() == (label != "normal")
