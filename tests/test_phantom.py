"""The built-in phantom generator: anatomy-consistent masks, determinism, patients, the shortcut marker, the layout."""
import cv2
import numpy as np
import pandas as pd
import pytest

from engine.data.folder import load_folder
from engine.data.phantom import LESION_CLASSES, SOURCE_CLASSES, PhantomSpec, render_phantom, write_phantom_dataset
from engine.errors import ConfigError


def _render(label, seed, size=96, **kw):
    return render_phantom(np.random.default_rng(seed), label, size, **kw)


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_lesion_masks_lie_inside_the_lungs_and_are_empty_for_normal(label):
    for seed in range(8):
        ph = _render(label, seed)
        assert ph.image.dtype == np.uint8 and ph.image.shape == (96, 96)
        assert not (ph.lesion_mask & ~ph.lung_mask).any()
        assert ph.lung_mask.mean() > 0.1
        if label == "normal":
            assert not ph.lesion_mask.any()
        else:
            assert ph.lesion_mask.any()


def test_covid_is_bilateral_more_often_than_pneumonia():
    def bilateral(label, seed):
        m = _render(label, seed, size=128).lesion_mask
        return m[:, :64].any() and m[:, 64:].any()

    covid = np.mean([bilateral("covid", s) for s in range(30)])
    pneumonia = np.mean([bilateral("pneumonia", s) for s in range(30)])
    assert covid > 0.8 and pneumonia < 0.5


def test_lesions_darken_nothing_and_brighten_the_lesion():
    base = _render("covid", 3, size=128)
    assert base.image[base.lesion_mask].mean() > base.image[base.lung_mask & ~base.lesion_mask].mean()


def test_generation_is_deterministic_per_seed(tmp_path):
    spec = PhantomSpec(n_per_class=4, image_size=64, seed=5)
    a = write_phantom_dataset(tmp_path / "a", spec)
    b = write_phantom_dataset(tmp_path / "b", spec)
    c = write_phantom_dataset(tmp_path / "c", PhantomSpec(n_per_class=4, image_size=64, seed=6))
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


def test_layout_manifest_and_patients(tmp_path):
    root = write_phantom_dataset(tmp_path / "d", PhantomSpec(n_per_class=30, image_size=64, seed=0))
    manifest = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    assert {"file", "class", "patient_id", "split", "mask_file", "lung_mask_file", "marker", "marker_box"} <= set(manifest)
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
        assert ph.image[y : y + h, x : x + w].mean() > 150
        box = np.zeros_like(ph.lung_mask)
        box[y : y + h, x : x + w] = True
        assert not (box & ph.lung_mask).any()
    spec = PhantomSpec(n_per_class=60, image_size=32, seed=1, confounder_class="covid", confounder_prob=0.9)
    manifest = pd.read_csv(write_phantom_dataset(tmp_path / "m", spec) / "manifest.csv")
    rate = manifest.groupby("class")["marker"].mean()
    assert rate["covid"] > 0.75 and rate["normal"] < 0.25 and rate["pneumonia"] < 0.25
    plain = pd.read_csv(write_phantom_dataset(tmp_path / "p", PhantomSpec(n_per_class=10, image_size=32)) / "manifest.csv")
    assert plain["marker"].sum() == 0


def test_source_corpus_has_its_own_classes(tmp_path):
    root = write_phantom_dataset(tmp_path / "s", PhantomSpec(task="source", n_per_class=3, image_size=32))
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(SOURCE_CLASSES)
    assert not (root / "masks").exists()


@pytest.mark.parametrize("kw,match", [
    ({"task": "other"}, "task"),
    ({"n_per_class": 0}, "n_per_class"),
    ({"confounder_prob": 1.5}, "confounder_prob"),
    ({"confounder_class": "flu", "confounder_prob": 0.5}, "confounder_class"),
])
def test_bad_spec_values_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        PhantomSpec(**kw)
