"""The synthetic chest-phantom generator: masks, lesion placement, determinism, patients, confounder, layout."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from engine.data.phantom import (
    LESION_CLASSES,
    SOURCE_CLASSES,
    PhantomSpec,
    render_phantom,
    write_phantom_dataset,
)
from engine.data.phantom_anatomy import sample_anatomy
from engine.errors import ConfigError

MANIFEST_COLUMNS = ["file", "class", "patient_id", "split", "mask_file", "lung_mask_file", "marker", "marker_box"]


def _read_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.ndim == 2, path
    return img


def _lungs(lung_mask: np.ndarray) -> list[np.ndarray]:
    """The two largest connected components of a lung mask, found independently of the generator."""
    labels, n = ndimage.label(lung_mask)
    sizes = ndimage.sum(lung_mask, labels, range(1, n + 1))
    return [labels == i + 1 for i in np.argsort(sizes)[::-1][:2]]


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_lesion_masks_lie_in_the_lungs_and_follow_the_class(label):
    for i in range(8):
        ph = render_phantom(np.random.default_rng([i, 1]), label, 64)
        assert ph.image.shape == ph.lesion_mask.shape == ph.lung_mask.shape == (64, 64)
        assert ph.image.dtype == np.uint8 and ph.lesion_mask.dtype == bool
        assert ph.lung_mask.mean() > 0.15
        assert not (ph.lesion_mask & ~ph.lung_mask).any()
        assert ph.lesion_mask.any() == (label != "normal")
        assert ph.marker_box is None


def test_covid_lesions_are_bilateral_more_often_than_pneumonia():
    def bilateral_share(label: str) -> float:
        hits = 0
        for i in range(30):
            ph = render_phantom(np.random.default_rng([i, 2]), label, 96)
            left, right = _lungs(ph.lung_mask)
            hits += bool((ph.lesion_mask & left).any() and (ph.lesion_mask & right).any())
        return hits / 30

    covid, pneumonia = bilateral_share("covid"), bilateral_share("pneumonia")
    assert covid >= 0.6 and pneumonia <= 0.35 and covid > pneumonia


def test_lungs_are_dark_and_lesions_brighten_them():
    anatomy = sample_anatomy(np.random.default_rng(3))
    for seed in range(4):
        normal = render_phantom(np.random.default_rng(seed), "normal", 128, anatomy=anatomy)
        sick = render_phantom(np.random.default_rng(seed), "pneumonia", 128, anatomy=anatomy)
        # The same seed gives the same pose, so the two lung masks agree.
        assert (normal.lung_mask == sick.lung_mask).all()
        lungs = normal.lung_mask
        rows = np.flatnonzero(lungs.any(axis=1))
        middle = np.zeros_like(lungs)
        middle[rows[0]:rows[len(rows) // 2], 60:68] = True  # the mediastinum between the upper lungs
        middle &= ~lungs
        assert normal.image[lungs].mean() + 30 < normal.image[middle].mean()
        lesion = sick.lesion_mask
        assert sick.image[lesion].mean() > normal.image[lesion].mean() + 8


def test_cardiomegaly_shrinks_the_lungs_and_effusion_whitens_a_base():
    anatomy = sample_anatomy(np.random.default_rng(4))
    clear = render_phantom(np.random.default_rng(0), "clear", 128, anatomy=anatomy)
    big_heart = render_phantom(np.random.default_rng(0), "cardiomegaly", 128, anatomy=anatomy)
    assert big_heart.lung_mask.sum() < 0.93 * clear.lung_mask.sum()
    effusion = render_phantom(np.random.default_rng(0), "effusion", 128, anatomy=anatomy)
    rows = np.flatnonzero(clear.lung_mask.any(axis=1))
    base = clear.lung_mask.copy()
    base[: rows[0] + 3 * (rows[-1] - rows[0]) // 4] = False  # lowest quarter of the lungs
    left, right = _lungs(base)
    gain = [effusion.image[side].mean() - clear.image[side].mean() for side in (left, right)]
    assert max(gain) > 15


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    spec = PhantomSpec(n_per_class=3, image_size=48 * 2, seed=5)
    a = write_phantom_dataset(tmp_path / "a", spec)
    b = write_phantom_dataset(tmp_path / "b", spec)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    c = write_phantom_dataset(tmp_path / "c", PhantomSpec(n_per_class=3, image_size=96, seed=6))
    images_a = [f for f in files_a if f.parts[0] == "images"]
    assert any(not (c / f).exists() or (a / f).read_bytes() != (c / f).read_bytes() for f in images_a)
    first = images_a[0]
    if (c / first).exists():
        assert (a / first).read_bytes() != (c / first).read_bytes()


def test_patients_have_one_to_three_images_of_one_class(tmp_path):
    root = write_phantom_dataset(tmp_path / "d", PhantomSpec(n_per_class=20, image_size=32))
    rows = _read_manifest(root)
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    counts = [len(v) for v in by_patient.values()]
    assert set(counts) <= {1, 2, 3} and max(counts) >= 2
    assert all(len({r["class"] for r in v}) == 1 for v in by_patient.values())
    for pid, v in by_patient.items():
        assert sorted(Path(r["file"]).name for r in v) == [f"{pid}_{k}.png" for k in range(1, len(v) + 1)]
    per_class = {c: sum(r["class"] == c for r in rows) for c in LESION_CLASSES}
    assert per_class == {c: 20 for c in LESION_CLASSES}


def test_confounder_marker_is_outside_the_lungs_at_the_requested_rate(tmp_path):
    root = write_phantom_dataset(tmp_path / "m",
                                 PhantomSpec(n_per_class=60, image_size=64, confounder_class="covid",
                                             confounder_prob=0.8))
    rows = _read_manifest(root)
    for r in rows:
        if r["marker"] == "0":
            assert r["marker_box"] == ""
            continue
        x0, y0, w, h = map(int, r["marker_box"].split())
        image, lungs = _gray(root / r["file"]), _gray(root / r["lung_mask_file"])
        assert 0 <= x0 and 0 <= y0 and x0 + w <= 64 and y0 + h <= 64
        assert not lungs[y0:y0 + h, x0:x0 + w].any()
        assert image[y0:y0 + h, x0:x0 + w].mean() > image.mean() + 40
    rate = {c: np.mean([r["marker"] == "1" for r in rows if r["class"] == c]) for c in LESION_CLASSES}
    assert abs(rate["covid"] - 0.8) < 0.2
    assert abs(rate["normal"] - 0.2) < 0.2 and abs(rate["pneumonia"] - 0.2) < 0.2


def test_confounder_probability_one_is_a_perfect_shortcut(tmp_path):
    spec = PhantomSpec(n_per_class=5, image_size=64, confounder_class="normal", confounder_prob=1.0)
    rows = _read_manifest(write_phantom_dataset(tmp_path / "p", spec))
    assert all((r["marker"] == "1") == (r["class"] == "normal") for r in rows)
    no_confounder = _read_manifest(write_phantom_dataset(tmp_path / "q", PhantomSpec(n_per_class=5, image_size=32)))
    assert {r["marker"] for r in no_confounder} == {"0"}


@pytest.mark.parametrize("kwargs", [
    {"confounder_prob": 1.5, "confounder_class": "covid"},
    {"confounder_prob": -0.1, "confounder_class": "covid"},
    {"confounder_class": "cat", "confounder_prob": 0.5},
    {"confounder_class": "nodules", "confounder_prob": 0.5},
    {"confounder_prob": 0.5},
    {"task": "ct"},
    {"n_per_class": 0},
    {"image_size": 8},
    {"seed": -1},
])
def test_bad_spec_values_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        PhantomSpec(**kwargs)


def test_unknown_label_raises_config_error():
    with pytest.raises(ConfigError, match="unknown phantom label"):
        render_phantom(np.random.default_rng(0), "tuberculosis", 64)


def test_lesion_dataset_layout_and_manifest(tmp_path):
    calls = []
    root = write_phantom_dataset(tmp_path / "lay", PhantomSpec(n_per_class=4, image_size=40),
                                 progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 12) for i in range(1, 13)]
    with open(root / "manifest.csv", newline="") as fh:
        assert next(csv.reader(fh)) == MANIFEST_COLUMNS
    rows = _read_manifest(root)
    assert len(rows) == 12 and {r["split"] for r in rows} == {""}
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(LESION_CLASSES)
    for r in rows:
        name = Path(r["file"]).name
        assert r["file"] == f"images/{r['class']}/{name}"
        assert r["mask_file"] == f"masks/{r['class']}/{name}"
        assert r["lung_mask_file"] == f"lung_masks/{r['class']}/{name}"
        image, mask, lungs = (_gray(root / r[k]) for k in ("file", "mask_file", "lung_mask_file"))
        assert image.shape == mask.shape == lungs.shape == (40, 40)
        assert set(np.unique(mask)) <= {0, 255} and set(np.unique(lungs)) <= {0, 255}
        assert mask.any() == (r["class"] != "normal")
    assert [p.name for p in tmp_path.iterdir()] == ["lay"]  # no temporary folder left behind


def test_source_dataset_has_source_classes_and_no_lesion_masks(tmp_path):
    root = write_phantom_dataset(tmp_path / "src", PhantomSpec(task="source", n_per_class=2, image_size=40))
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(SOURCE_CLASSES)
    assert not (root / "masks").exists()
    rows = _read_manifest(root)
    assert {r["class"] for r in rows} == set(SOURCE_CLASSES) and len(rows) == 8
    assert all(r["mask_file"] == "" and (root / r["lung_mask_file"]).is_file() for r in rows)


def test_existing_dataset_is_returned_untouched(tmp_path):
    root = write_phantom_dataset(tmp_path / "x", PhantomSpec(n_per_class=1, image_size=32))
    before = (root / "manifest.csv").read_bytes()
    again = write_phantom_dataset(root, PhantomSpec(n_per_class=3, image_size=64, seed=9))
    assert again == root and (root / "manifest.csv").read_bytes() == before


def test_spec_to_dict_is_json_and_tells_specs_apart():
    import json

    a = PhantomSpec(seed=1).to_dict()
    assert json.loads(json.dumps(a))["seed"] == 1
    assert a != PhantomSpec(seed=2).to_dict()
    assert PhantomSpec(task="source").classes == SOURCE_CLASSES
