"""Home with 3-D CT data: the built-in CT phantoms and a folder of NIfTI volumes as data choices, 3-D backbones only
(the "ct" preset when the data turn 3-D), Ouyang's attention and sampling options, the 3-D data summary (counts,
shapes and voxel sizes, the axial slice with most lesion, infection-ratio spread) and the 3-D time estimate."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_CT_RUN, TINY_RUN
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from engine import estimate
from engine.config import PRESETS, Preset
from engine.data.arrays import mask_arrays
from engine.data.volume import load_volume
from engine.train_job import SweepProgress
from engine.training import Progress
from tests.test_page_home import _home

CT_CHOICE = "Built-in CT phantoms (3-D NIfTI volumes, generated, no download)"
XRAY_CHOICE = "Built-in chest X-ray phantoms (2-D, generated, no download)"


def _selectbox(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


@pytest.fixture()
def tiny_presets(monkeypatch):
    """The "ct" and "demo" presets at the page tests' tiny sizes (cached by the session fixtures)."""
    monkeypatch.setitem(PRESETS, "ct", Preset("ct", "tiny 3-D", engine.RunConfig(**TINY_CT_RUN), (0, 2)))
    monkeypatch.setitem(PRESETS, "demo", Preset("demo", "tiny 2-D", engine.RunConfig(**TINY_RUN), (0, 5)))


def test_ct_data_offer_3d_backbones_and_ouyangs_training_options(trained_ct):
    at = _home(trained_ct)
    assert at.radio(key="home_data_choice").value == CT_CHOICE
    assert _selectbox(at, "Backbone").options == list(engine.VOLUME_BACKBONES)
    assert _selectbox(at, "Initialisation").options == ["builtin", "scratch"]
    attention = next(t for t in at.toggle if t.label.startswith("Online attention"))
    assert not attention.disabled and attention.value is False
    for cited in ("Ouyang et al. 2020", "eqs. 1-4", "α = 100", "β = 0.4", "λ = 0.5", "lesion mask", "resnet3d18"):
        assert cited in attention.help
    sampling = _selectbox(at, "Sampling (Ouyang et al.)")
    assert len(sampling.options) == 3 and sampling.options[2].startswith("dual")
    assert "§III-C" in sampling.help and "eq. 5" in sampling.help and "0.35" in sampling.help

    attention.set_value(True)
    sampling.set_value("dual").run()
    assert not at.exception
    cfg = at.session_state["selection"].config
    assert (cfg.attention, cfg.sampling, cfg.backbone) == (True, "dual", "resnet3d18")


def test_the_3d_data_summary_matches_the_files(trained_ct):
    at = _home(trained_ct)
    ds = engine.load_dataset("builtin-ct", per_class=TINY_CT_RUN["builtin_per_class"])
    table = next(d.value for d in at.dataframe if "lesion masks" in d.value.columns)
    for c in ds.classes:  # counted on disk, independently of the dataset loader
        assert table.loc[c, "volumes"] == len(list((ds.root / "images" / c).glob("*.nii.gz")))
        assert table.loc[c, "lesion masks"] == len(list((ds.root / "masks" / c).glob("*.nii.gz")))
        assert table.loc[c, "lung masks"] == len(list((ds.root / "lung_masks" / c).glob("*.nii.gz")))
    # shapes and voxel sizes from the NIfTI headers, turned from the files' RAS+ (x, y, z) into (slices, rows, columns)
    headers = [nib.load(p) for p in ds.items["path"]]
    shapes = {h.shape[::-1] for h in headers}
    zooms = np.array([h.header.get_zooms()[::-1] for h in headers], dtype=float)
    text = next(c.value for c in at.caption if "Stored volumes" in c.value)
    assert len(shapes) == 1 and f"all {' × '.join(map(str, shapes.pop()))} voxels (slices × rows × columns)" in text
    low, high = zooms.min(0), zooms.max(0)
    axes = [f"{a:.2f}" if np.isclose(a, b) else f"{a:.2f}-{b:.2f}" for a, b in zip(low, high)]
    assert f"voxels {' × '.join(axes)} mm" in text
    assert "cropped to 32 × 64 × 64 voxels (slices × rows × columns)" in text  # run size 64
    # one preview per class: the axial slice with the most lesion voxels
    captions = [caption for image in at.image for caption in image.captions]
    for c in ds.classes:
        row = ds.items[(ds.items["label"] == c) & (ds.items["mask"] != "")].iloc[0]
        _, lesion, _ = load_volume(row["path"], 128, mask=row["mask"])
        k = int(np.argmax(lesion.reshape(len(lesion), -1).sum(1)))
        assert f"{c} · axial slice {k + 1} of {len(lesion)}" in captions


def test_the_infection_spread_per_class_matches_numpy(ouyang_variants):
    at = _home(Selection(engine.RunConfig(**TINY_CT_RUN), (0, 2)))
    spread = next(d.value for d in at.dataframe if "median" in d.value.columns)
    ds = engine.load_dataset("builtin-ct", per_class=TINY_CT_RUN["builtin_per_class"])
    lesion, lung, _, _ = mask_arrays(ds, TINY_CT_RUN["image_size"])
    ratios = (lesion & lung).reshape(len(lung), -1).sum(1) / lung.reshape(len(lung), -1).sum(1)
    for c in ds.classes:
        mine = ratios[(ds.items["label"] == c).to_numpy()]
        assert spread.loc[c, "n"] == len(mine)
        assert spread.loc[c, ["min", "q1", "median", "q3", "max"]].to_numpy(float) == pytest.approx(
            np.percentile(mine, [0, 25, 50, 75, 100]))
        assert spread.loc[c, "< 0.005"] == pytest.approx(np.mean(mine < 0.005))
        assert spread.loc[c, "0.005-0.030"] == pytest.approx(np.mean((mine >= 0.005) & (mine < 0.030)))
        assert spread.loc[c, "> 0.030"] == pytest.approx(np.mean(mine >= 0.030))


def test_choosing_ct_data_starts_from_the_ct_preset_and_back(trained_selection, trained_ct, tiny_presets):
    at = _home(trained_selection)
    assert "resnet3d18" not in _selectbox(at, "Backbone").options
    at.radio(key="home_data_choice").set_value(CT_CHOICE).run()
    assert not at.exception
    sel = at.session_state["selection"]
    assert sel.config == engine.RunConfig(**TINY_CT_RUN) and sel.depths == (0, 2)
    assert _selectbox(at, "Backbone").options == list(engine.VOLUME_BACKBONES)
    assert not [t for t in at.toggle if t.label.startswith("CLAHE")]

    at.radio(key="home_data_choice").set_value(XRAY_CHOICE).run()
    assert not at.exception
    assert at.session_state["selection"].config == engine.RunConfig(**TINY_RUN)
    assert "resnet3d18" not in _selectbox(at, "Backbone").options


def test_a_folder_of_nifti_volumes_is_3d_data(trained_selection, trained_ct, tiny_presets, tmp_path):
    ds = engine.load_dataset("builtin-ct", per_class=TINY_CT_RUN["builtin_per_class"])
    for c in ds.classes:  # volumes only, no masks: Ouyang's options are off
        (tmp_path / "images" / c).mkdir(parents=True)
        for path in sorted((ds.root / "images" / c).glob("*.nii.gz"))[:5]:
            shutil.copy(path, tmp_path / "images" / c / path.name)
    at = _home(trained_selection)
    at.radio(key="home_data_choice").set_value("A folder on this machine").run()
    next(t for t in at.text_input if t.label.startswith("Folder")).set_value(str(tmp_path)).run()
    assert not at.exception
    sel = at.session_state["selection"]
    assert Path(sel.config.data) == tmp_path and sel.config.backbone == "resnet3d18"
    assert _selectbox(at, "Backbone").options == list(engine.VOLUME_BACKBONES)
    assert next(t for t in at.toggle if t.label.startswith("Online attention")).disabled
    assert _selectbox(at, "Sampling (Ouyang et al.)").options == ["uniform (every image alike)"]
    assert any("no lesion masks" in c.value for c in at.caption)
    table = next(d.value for d in at.dataframe if "lesion masks" in d.value.columns)
    assert table.loc["all classes", "volumes"] == 10 and table.loc["all classes", "lesion masks"] == 0


# --- the estimate and the job's progress for 3-D and dual-sampling runs ------------------------------------------------

def test_the_3d_estimate_scales_with_voxels_attention_and_dual_members(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "empty"))  # no timed run: the stated default rate
    cfg = engine.RunConfig(**TINY_CT_RUN).replace(depth=2)
    rate = 0.007 * 40  # the default rate times a 3-D ResNet-18's relative compute, per volume at 32 × 64 × 64
    plain = engine.estimate_training([cfg], 20)
    assert plain.run_seconds == pytest.approx([20 * 1 * (2 + 2) * rate])
    assert plain.basis.startswith("Rough: 20 volumes × up to 1 epochs × 1 run(s)")
    assert "volume-epoch and cost unit at 32 × 64 × 64 voxels" in plain.basis
    # 128: 64 × 128 × 128 voxels, 8 times as many
    assert engine.estimate_training([cfg.replace(image_size=128)], 20).seconds == pytest.approx(8 * plain.seconds)
    attention = cfg.replace(attention=True)
    assert engine.estimate_training([attention], 20).seconds == pytest.approx(1.5 * plain.seconds)
    dual = attention.replace(sampling="dual")
    assert engine.estimate_training([dual], 20).seconds == pytest.approx(2 * 1.5 * plain.seconds)
    # Ouyang's four variants: the dual run's members are the two attention variants, trained anyway
    variants = list(engine.variant_configs(cfg).values())
    assert engine.estimate_training(variants, 20).run_seconds == pytest.approx(
        [plain.seconds, 1.5 * plain.seconds, 1.5 * plain.seconds, 0.0])
    assert estimate.trained_models(dual, [attention]) == 1


def test_a_dual_sampling_run_reports_its_two_members_as_halves():
    seen: list[tuple[float, str]] = []
    cfg = engine.RunConfig(**TINY_CT_RUN).replace(depth=2, attention=True, sampling="dual")
    tracker = SweepProgress([cfg], [1.0], 0.0, lambda f, t: seen.append((f, t)))
    tracker.on(0, Progress(1, 2, 1, 2, "member 1/2:train"))  # first member a quarter done
    tracker.on(0, Progress(2, 2, 2, 2, "member 2/2:train"))  # second member done
    tracker.on(0, Progress(1, 1, 1, 1, engine.RUN_DONE))
    assert [f for f, _ in seen] == pytest.approx([0.25 / 2, 1.0, 1.0])
    assert seen[0][1] == ("0 of 1 runs trained · depth 2 (uniform member of the dual-sampling run): epoch 1 of 2, "
                          "batch 1 of 2")
    assert re.search(r"size-balanced member of the dual-sampling run\): epoch 2 of 2", seen[1][1])
    assert seen[2][1] == "1 of 1 runs trained · depth 2 trained"
