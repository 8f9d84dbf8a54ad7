"""Support Regions helpers: figures checked trace by trace against hand-made inputs, and the upload checks."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from dashboard.support_charts import (
    LESION_COLOR,
    LUNG_COLOR,
    MAX_UPLOAD_BYTES,
    SUPPORT_COLOR,
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
    read_upload,
    support_figure,
)
from engine.models.backbones import stage

CLASSES = ("covid", "normal", "pneumonia")


def _rows() -> pd.DataFrame:
    return pd.DataFrame({
        "file": [f"img{i}.png" for i in range(6)],
        "y": [0, 0, 1, 1, 2, 2],
        "pred": [0, 1, 1, 2, 2, 0],
        "prob_covid": [0.8, 0.3, 0.1, 0.2, 0.1, 0.6],
        "prob_normal": [0.1, 0.6, 0.7, 0.2, 0.2, 0.2],
        "prob_pneumonia": [0.1, 0.1, 0.2, 0.6, 0.7, 0.2],
    })


@pytest.mark.parametrize(("classes", "outcome", "expected"), [
    ((), "All", [0, 1, 2, 3, 4, 5]),
    ((), "Correct", [0, 2, 4]),
    ((), "Wrong", [1, 3, 5]),
    (("covid",), "All", [0, 1]),
    (("normal", "pneumonia"), "Wrong", [3, 5]),
    (("covid",), "Correct", [0]),
])
def test_filter_test_rows_by_true_class_and_outcome(classes, outcome, expected):
    assert filter_test_rows(_rows(), CLASSES, classes, outcome).index.tolist() == expected


def test_filter_rejects_an_unknown_outcome():
    with pytest.raises(ValueError, match="outcome"):
        filter_test_rows(_rows(), CLASSES, (), "Maybe")


def test_image_label_names_true_and_predicted_class():
    label = image_label(_rows().iloc[1], CLASSES)
    assert label == "img1.png · true covid · predicted normal ✗ (p = 0.60)"
    assert "✓" in image_label(_rows().iloc[0], CLASSES)


def test_probability_figure_bars_and_predicted_highlight():
    fig = probability_figure({"covid": 0.2, "normal": 0.7, "pneumonia": 0.1}, true_class="covid")
    bar = fig.data[0]
    assert list(bar.x) == [0.2, 0.7, 0.1]
    assert list(bar.y) == ["covid (true)", "normal", "pneumonia"]
    colours = list(bar.marker.color)
    assert colours[1] != colours[0] == colours[2]  # only the predicted class (normal) stands out
    assert "predicted: normal" in fig.layout.title.text


def _contours(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data if t.type == "contour"}


def test_support_figure_layers_contour_and_outlines():
    image = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    heatmap = np.zeros((64, 64), np.float32)
    heatmap[10:20, 10:20] = 1.0
    lesion = np.zeros((64, 64), bool)
    lesion[12:30, 12:30] = True
    lung = np.zeros((64, 64), bool)
    lung[5:60, 5:60] = True
    fig = support_figure(image, heatmap, threshold=0.6, opacity=0.3, lesion=lesion, lung=lung)
    gray, hot = fig.data[0], fig.data[1]
    np.testing.assert_array_equal(np.asarray(gray.z), image)
    np.testing.assert_array_equal(np.asarray(hot.z), heatmap)
    assert hot.opacity == 0.3 and (hot.zmin, hot.zmax) == (0, 1)
    assert list(hot.colorbar.tickvals) == [0, 0.6, 1]  # the threshold is labelled on the colour bar (Wan fig. 12)
    contours = _contours(fig)
    assert set(contours) == {"support (heatmap > 0.6)", "lesion mask", "lung mask"}
    support = contours["support (heatmap > 0.6)"]
    assert support.contours.start == support.contours.end == 0.6 and support.line.color == SUPPORT_COLOR
    np.testing.assert_array_equal(np.asarray(support.z), heatmap)
    np.testing.assert_array_equal(np.asarray(contours["lesion mask"].z), lesion.astype(np.float32))
    assert contours["lesion mask"].line.color == LESION_COLOR and contours["lung mask"].line.color == LUNG_COLOR
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis.scaleanchor == "x"


def test_support_figure_without_support_or_masks_draws_no_outline():
    image = np.zeros((64, 64), np.uint8)
    fig = support_figure(image, np.full((64, 64), 0.5, np.float32), threshold=0.7,
                         lesion=np.zeros((64, 64), bool))
    assert not _contours(fig)  # nothing exceeds 0.7, and an empty lesion mask has no outline
    assert [t.type for t in support_figure(image).data] == ["heatmap"]


def test_lime_figure_tints_support_red_and_opposition_blue():
    image = np.full((64, 64), 128, np.uint8)
    segments = np.zeros((64, 64), np.int64)
    segments[:, 32:] = 1
    signed = np.where(segments == 0, 0.4, -0.2).astype(np.float32)
    lime = {"map": signed, "segments": segments, "heatmap": np.where(segments == 0, 1.0, 0.0).astype(np.float32)}
    fig = lime_figure(image, lime, threshold=0.7, opacity=0.5)
    rgb = np.asarray(fig.data[0].z).astype(int)
    assert fig.data[0].type == "image" and rgb.shape == (64, 64, 3)
    left, right = rgb[20:40, 5:25], rgb[20:40, 40:60]  # away from the superpixel boundary
    assert (left[..., 0] > left[..., 2]).all() and (right[..., 2] > right[..., 0]).all()
    assert "support (heatmap > 0.7)" in _contours(fig)


def test_depth_strip_has_one_panel_per_depth_in_order():
    image = np.zeros((32, 32), np.uint8)
    maps = {5: np.full((32, 32), 0.9, np.float32), 0: np.zeros((32, 32), np.float32)}
    fig = depth_strip_figure(image, maps, {0: "depth 0", 5: "depth 5"}, threshold=0.7)
    assert [a.text for a in fig.layout.annotations] == ["depth 0", "depth 5"]
    heat = [t for t in fig.data if t.type == "heatmap" and t.zmax == 1]
    assert [t.xaxis for t in heat] == ["x", "x2"]
    assert np.asarray(heat[1].z).max() == pytest.approx(0.9)
    assert fig.layout.yaxis2.scaleanchor == "x2"


def _consistency_frame() -> pd.DataFrame:
    """Three images with a lesion and a normal one whose lesion mask is empty (no degree, no hit possible)."""
    return pd.DataFrame({
        "consistency": [0.2, 0.6, 1.0, np.nan], "lung_baseline": [1.0, np.nan, 0.5, np.nan],
        "random_baseline": [0.1, 0.3, 0.2, np.nan], "pointing_game": [True, False, True, False],
        "lesion_area": [0.01, 0.02, 0.03, 0.0], "support_area": [0.1, 0.2, 0.3, 0.5],
    })


def test_consistency_summary_hand_worked():
    s = consistency_summary(_consistency_frame())
    assert s["n"] == 3 and s["n_lung"] == 2
    assert s["consistency"] == pytest.approx(0.6) and s["median"] == pytest.approx(0.6)
    assert s["lung_baseline"] == pytest.approx(0.75)  # NaN (no lung mask) left out
    assert s["random_baseline"] == pytest.approx(0.2)
    assert s["pointing_game"] == pytest.approx(2 / 3)
    assert s["pointing_chance"] == pytest.approx(0.02) and s["support_area"] == pytest.approx(0.2)


def test_consistency_histogram_shows_model_and_baselines_with_means():
    fig = consistency_histogram(_consistency_frame(), "Grad-CAM")
    assert [t.name for t in fig.data] == ["Grad-CAM (model)", "lungs, uniform", "random smooth field"]
    assert list(fig.data[1].x) == [1.0, 0.5]
    assert sorted(s.x0 for s in fig.layout.shapes) == pytest.approx([0.2, 0.6, 0.75])


def test_consistency_depth_table_and_figure():
    frames = {5: _consistency_frame(), 0: _consistency_frame().assign(consistency=[0.0, 0.0, 0.3, np.nan])}
    table = consistency_depth_table(frames)
    assert table["depth"].tolist() == [0, 5]
    assert table["consistency"].tolist() == pytest.approx([0.1, 0.6])
    fig = consistency_depth_figure(table)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["mean consistency degree"].y) == pytest.approx([0.1, 0.6])
    assert list(by_name["pointing-game hit rate"].y) == pytest.approx([2 / 3, 2 / 3])


# --- uploads -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3, head_width=16).eval()


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _listing(*roots: Path) -> set[str]:
    return {os.path.join(d, f) for root in roots for d, _, files in os.walk(root) for f in files}


def test_read_upload_decodes_and_resizes_a_real_png():
    image = np.random.default_rng(0).integers(0, 256, (100, 80), dtype=np.uint8)
    got = read_upload(_png(image), "xray.png", 64)
    expected = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)  # what a gray PNG should become
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_diagnose_upload_of_a_real_png_writes_nothing(model, tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = _listing(tmp_path)
    image = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    result = diagnose_upload(_png(image), "xray.png", model, CLASSES, 64, lime_samples=20)
    assert _listing(tmp_path) == before
    assert isinstance(result, dict)
    x = torch.from_numpy(image).float().div(255).expand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet statistics, as the model expects
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model((x - mean) / std), 1)[0].numpy()
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=1e-5)
    assert result["predicted"] == CLASSES[int(expected.argmax())]
    assert result["gradcam"].shape == (64, 64) and result["lime"]["segments"].shape == (64, 64)


def test_diagnose_upload_refuses_a_text_file_renamed_png(model):
    message = diagnose_upload(b"patient notes, not an image\n" * 10, "notes.png", model, CLASSES, 64)
    assert isinstance(message, str)
    assert "cannot be used" in message and "notes.png is not a readable PNG, JPEG, BMP or TIFF image" in message


def test_diagnose_upload_refuses_an_empty_file(model):
    assert diagnose_upload(b"", "empty.png", model, CLASSES, 64) == \
        "empty.png is empty (0 bytes): upload the image file itself."


def test_diagnose_upload_refuses_an_image_wider_than_the_limit(model):
    message = diagnose_upload(_png(np.zeros((8, 4100), np.uint8)), "wide.png", model, CLASSES, 64)
    assert message == ("wide.png is 4100 x 8 px: uploads must be at most 20 MB and 4096 px on each side. "
                       "Downscale it first.")


def test_diagnose_upload_refuses_a_file_over_the_size_limit(model):
    message = diagnose_upload(b"\x89PNG" + bytes(MAX_UPLOAD_BYTES), "huge.png", model, CLASSES, 64)
    assert message == "huge.png is 20.0 MB: uploads must be at most 20 MB and 4096 px on each side."
