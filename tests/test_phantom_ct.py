"""The built-in 3-D CT phantoms: anatomy in HU, findings and masks, infection sizes per class, determinism, the
NIfTI dataset folder and the in-memory source corpus."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from engine.data.folder import load_folder
from engine.data.phantom_ct import (
    CT_CLASSES,
    CT_SOURCE_TARGETS,
    CTPhantomSpec,
    ct_source_corpus,
    render_case,
    write_ct_dataset,
)
from engine.data.sources import BUILTIN_CT, load_dataset
from engine.errors import ConfigError

SMALL = CTPhantomSpec(n_per_class=30, shape=(32, 64, 64), seed=0)


@pytest.fixture(scope="module")
def cases():
    """20 phantoms per class at a small native grid."""
    return {label: [render_case(SMALL, label, i) for i in range(20)] for label in CT_CLASSES}


def test_anatomy_in_hounsfield_units(cases):
    ph = cases["cap"][0]
    w = ph.hu.shape[2]
    assert ph.hu.dtype == np.float32 and ph.hu[:, :3, :3].mean() < -900  # air around the body
    lung_hu = np.median(ph.hu[ph.lung_mask & ~ph.lesion_mask])
    assert -920 < lung_hu < -780
    assert np.percentile(ph.hu, 99.5) > 300  # bone
    # Two lungs, one each side of the mediastinum, with no lung on the midline.
    assert ph.lung_mask[..., : w // 2].sum() > 0.3 * ph.lung_mask.sum()
    assert ph.lung_mask[..., w // 2 :].sum() > 0.3 * ph.lung_mask.sum()
    assert not ph.lung_mask[..., w // 2 - 1 : w // 2 + 1].any()
    assert 0.03 < ph.lung_mask.mean() < 0.3


def test_lesions_lie_in_the_lungs_and_differ_in_density_and_laterality(cases):
    ggo, cons, bilateral = [], [], {c: [] for c in CT_CLASSES}
    for label, phantoms in cases.items():
        for ph in phantoms:
            assert ph.lesion_mask.any() and not (ph.lesion_mask & ~ph.lung_mask).any()
            (ggo if label == "covid" else cons).append(np.median(ph.hu[ph.lesion_mask]))
            w = ph.hu.shape[2]
            bilateral[label].append(ph.lesion_mask[..., : w // 2].any() and ph.lesion_mask[..., w // 2 :].any())
    assert -760 < np.median(ggo) < -250 and -150 < np.median(cons) < 100
    assert np.mean(bilateral["covid"]) > 0.7 and np.mean(bilateral["cap"]) < 0.4


def test_infection_ratios_differ_on_average_but_overlap(cases):
    ratio = {c: np.array([ph.lesion_mask.sum() / ph.lung_mask.sum() for ph in cases[c]]) for c in CT_CLASSES}
    for c in CT_CLASSES:
        assert np.allclose(ratio[c], [ph.ratio for ph in cases[c]])
    assert np.median(ratio["covid"]) > 2 * np.median(ratio["cap"])
    assert (ratio["cap"] > 0.03).any()  # large-infection CAP exists
    assert (ratio["cap"] < 0.005).mean() > 0.2 and (ratio["covid"] >= 0.005).mean() > 0.8
    assert ratio["cap"].max() > np.median(ratio["covid"]) > ratio["covid"].min()


def test_generation_is_deterministic_per_seed_and_case():
    a, b = render_case(SMALL, "covid", 3), render_case(SMALL, "covid", 3)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.lesion_mask, b.lesion_mask)
    other = render_case(CTPhantomSpec(n_per_class=30, shape=(32, 64, 64), seed=1), "covid", 3)
    assert not np.array_equal(a.hu, other.hu)
    assert not np.array_equal(a.hu, render_case(SMALL, "covid", 4).hu)


def test_dataset_folder_manifest_and_nifti(tmp_path):
    spec = CTPhantomSpec(n_per_class=5, shape=(24, 48, 48), seed=2)
    root = write_ct_dataset(tmp_path / "ct", spec)
    manifest = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    assert manifest["class"].value_counts().to_dict() == {"cap": 5, "covid": 5}
    assert manifest["patient_id"].is_unique and (manifest["infection_ratio"] > 0).all()
    row = manifest.iloc[7]
    img, lesion = nib.load(str(root / row.file)), nib.load(str(root / row.mask_file))
    assert img.shape == (48, 48, 24) and img.get_data_dtype() == np.int16  # stored RAS+: (W, H, D)
    assert np.allclose(img.affine, lesion.affine) and np.all(np.diag(img.affine)[:3] > 0)
    values = np.unique(np.asarray(lesion.dataobj))
    assert set(values) == {0, 1}
    ratio = np.asarray(lesion.dataobj).sum() / np.asarray(nib.load(str(root / row.lung_mask_file)).dataobj).sum()
    assert ratio == pytest.approx(row.infection_ratio, abs=1e-5)
    stamp = (root / "manifest.csv").stat().st_mtime_ns
    again = write_ct_dataset(tmp_path / "ct", spec)  # finished: not rewritten
    assert again == root and (root / "manifest.csv").stat().st_mtime_ns == stamp
    twin = write_ct_dataset(tmp_path / "twin", spec)
    assert all((root / f).read_bytes() == (twin / f).read_bytes() for f in manifest["file"])
    assert not list(tmp_path.glob(".*tmp-*"))


def test_builtin_ct_source_generates_once_into_the_cache():
    ds = load_dataset(BUILTIN_CT, per_class=5, seed=0)
    assert ds.ndim == 3 and ds.classes == CT_CLASSES and len(ds) == 10 and ds.has_masks
    assert load_dataset(BUILTIN_CT, per_class=5, seed=0).fingerprint == ds.fingerprint
    assert load_folder(ds.root).fingerprint == ds.fingerprint


def test_source_corpus_shapes_targets_and_determinism():
    images, targets = ct_source_corpus(12, 32, seed=4)
    assert images.shape == (12, 16, 32, 32) and images.dtype == np.uint8
    assert targets.shape == (12, len(CT_SOURCE_TARGETS)) and targets.dtype == np.float32
    assert set(np.unique(targets)) <= {0.0, 1.0} and 0 < targets.mean() < 1
    again, _ = ct_source_corpus(12, 32, seed=4)
    assert np.array_equal(images, again)
    assert not np.array_equal(images, ct_source_corpus(12, 32, seed=5)[0])


def test_spec_records_the_generator_and_bad_values_are_config_errors():
    assert CTPhantomSpec().classes == ("cap", "covid") and "generator" in CTPhantomSpec().to_dict()
    with pytest.raises(ConfigError, match="n_per_class"):
        CTPhantomSpec(n_per_class=0)
    with pytest.raises(ConfigError, match="shape"):
        CTPhantomSpec(shape=(8, 64, 64))
    with pytest.raises(ConfigError, match="label"):
        render_case(SMALL, "normal", 0)
    with pytest.raises(ConfigError, match="ct_source_corpus"):
        ct_source_corpus(0, 64, 0)
