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
    SUPPORT_COLOR,
    Panel,
    consistency_depth_figure,
    consistency_histogram,
    filter_test_rows,
    grid_figure,
    image_label,
    probability_figure,
    unlike_message,
)
from engine.explain.upload import MAX_UPLOAD_BYTES, diagnose_upload, read_upload
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
    assert label == "img1.png · covid → normal ✗ 0.60"
    assert image_label(_rows().iloc[0].replace("img0.png", "images/covid/img0.png"), CLASSES) == \
        "img0.png · covid → covid ✓ 0.80"  # folders left out: short enough for a picker


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


def _masks64() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 64 px image, a map with one hot square, a lesion overlapping it and the lungs around both."""
    image = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    heatmap = np.zeros((64, 64), np.float32)
    heatmap[10:20, 10:20] = 1.0
    lesion = np.zeros((64, 64), bool)
    lesion[12:30, 12:30] = True
    lung = np.zeros((64, 64), bool)
    lung[5:60, 5:60] = True
    return image, heatmap, lesion, lung


def _lime64() -> dict[str, np.ndarray]:
    """Two superpixels: the left one for the class (weight 0.4), the right one against it (-0.2)."""
    segments = np.zeros((64, 64), np.int64)
    segments[:, 32:] = 1
    signed = np.where(segments == 0, 0.4, -0.2).astype(np.float32)
    return {"map": signed, "segments": segments, "heatmap": np.where(segments == 0, 1.0, 0.0).astype(np.float32)}


def test_grid_panel_layers_contour_and_outlines_on_the_shared_scale():
    image, heatmap, lesion, lung = _masks64()
    fig = grid_figure([Panel(image, heatmap, lesion=lesion, lung=lung, title="Grad-CAM")], columns=1,
                      threshold=0.6, opacity=0.3)
    gray, hot = fig.data[0], fig.data[1]
    np.testing.assert_array_equal(np.asarray(gray.z), image)
    np.testing.assert_array_equal(np.asarray(hot.z), heatmap)
    assert hot.opacity == 0.3 and hot.coloraxis == "coloraxis"
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax) == (0, 1) and list(axis.colorbar.tickvals) == [0, 0.6, 1]  # threshold labelled
    contours = _contours(fig)
    assert set(contours) == {"support (heatmap > 0.6)", "lesion mask", "lung mask"}
    support = contours["support (heatmap > 0.6)"]
    assert support.contours.start == support.contours.end == 0.6 and support.line.color == SUPPORT_COLOR
    np.testing.assert_array_equal(np.asarray(support.z), heatmap)
    np.testing.assert_array_equal(np.asarray(contours["lesion mask"].z), lesion.astype(np.float32))
    assert contours["lesion mask"].line.color == LESION_COLOR and contours["lung mask"].line.color == LUNG_COLOR
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis.scaleanchor == "x"
    assert "coloraxis2" not in fig.to_plotly_json()["layout"]  # no LIME panel: no LIME scale


def test_grid_without_support_or_masks_draws_no_outline():
    image = np.zeros((64, 64), np.uint8)
    fig = grid_figure([Panel(image, np.full((64, 64), 0.5, np.float32), lesion=np.zeros((64, 64), bool)),
                       Panel(image)], columns=2, threshold=0.7)
    assert not _contours(fig)  # nothing exceeds 0.7, and an empty lesion mask has no outline
    assert [t.type for t in fig.data] == ["heatmap", "heatmap", "heatmap"]  # image + map, then the image alone


def test_grid_has_one_scale_one_legend_and_square_panels_row_by_row():
    image, heatmap, lesion, lung = _masks64()
    panels = [Panel(image, heatmap * k / 4, lesion=lesion, lung=lung, title=f"depth {k}<br>line 2")
              for k in range(1, 6)]
    fig = grid_figure(panels, columns=3, threshold=0.2, panel_px=300)
    assert [a.text for a in fig.layout.annotations] == [p.title for p in panels]
    heat = [t for t in fig.data if t.type == "heatmap" and t.coloraxis == "coloraxis"]
    assert [t.xaxis for t in heat] == ["x", "x2", "x3", "x4", "x5"]  # row by row
    assert np.asarray(heat[4].z).max() == pytest.approx(1.25)
    assert all(t.showscale is None for t in heat)  # the one colour bar is the shared axis'
    legend = [t.name for t in fig.data if t.type == "contour" and t.showlegend]
    assert sorted(legend) == ["lesion mask", "lung mask", "support (heatmap > 0.2)"]  # each outline named once
    for k in range(1, 6):  # every panel square (its own x scale), rows downwards
        suffix = "" if k == 1 else str(k)
        assert fig.layout[f"yaxis{suffix}"].scaleanchor == f"x{suffix}"
        assert fig.layout[f"yaxis{suffix}"].autorange == "reversed"
    rows = sorted({round(fig.layout[f"yaxis{'' if k == 1 else k}"].domain[0], 3) for k in range(1, 6)})
    assert len(rows) == 2  # 5 panels in 3 columns: two rows
    assert fig.layout.height == 84 + 2 * 300 + 50 + 140  # panels about 300 px, room for titles and the scales
    assert fig.layout.margin.autoexpand is False  # the scales below do not shrink the panels


def test_grid_lime_panel_tints_for_red_against_blue_on_its_own_scale():
    image = np.full((64, 64), 128, np.uint8)
    lime = _lime64()
    fig = grid_figure([Panel(image, title="Image"), Panel(image, lime["heatmap"], lime=lime, title="LIME")],
                      columns=2, threshold=0.7, opacity=0.5)
    picture = next(t for t in fig.data if t.type == "image")
    rgb = np.asarray(picture.z).astype(int)
    assert picture.xaxis == "x2" and rgb.shape == (64, 64, 3)
    left, right = rgb[20:40, 5:25], rgb[20:40, 40:60]  # away from the superpixel boundary
    assert (left[..., 0] > left[..., 2]).all() and (right[..., 2] > right[..., 0]).all()
    weights = next(t for t in fig.data if t.type == "heatmap" and t.coloraxis == "coloraxis2")
    np.testing.assert_allclose(np.asarray(weights.z), lime["map"] / 0.4)  # scaled by the largest weight
    assert weights.opacity == 0  # only for the hover and the LIME scale
    scale = fig.layout.coloraxis2
    assert (scale.cmin, scale.cmax) == (-1, 1) and list(scale.colorbar.ticktext) == ["against", "0", "for"]
    assert "support (heatmap > 0.7)" in _contours(fig)


def _consistency_frame() -> pd.DataFrame:
    """``run_localisation``-shaped: three images with a lesion, one of them without a lung mask."""
    return pd.DataFrame({
        "consistency": [0.2, 0.6, 1.0], "lung_area_matched_baseline": [0.5, np.nan, 0.25],
        "random_baseline": [0.1, 0.3, 0.2],
    })


def test_consistency_histogram_shows_model_and_baselines_with_means():
    means = {"consistency": 0.6, "lung_area_matched_baseline": 0.375, "random_baseline": 0.2}  # by hand
    fig = consistency_histogram(_consistency_frame(), means, "Grad-CAM")
    assert [t.name for t in fig.data] == ["Grad-CAM (model)", "lungs, same area", "random smooth map"]
    assert list(fig.data[1].x) == [0.5, 0.25]  # NaN (no lung mask) left out
    assert sorted(s.x0 for s in fig.layout.shapes) == pytest.approx([0.2, 0.375, 0.6])


def test_consistency_depth_figure():
    table = pd.DataFrame({"depth": [0, 5], "consistency": [0.1, 0.6], "pointing_game": [1 / 3, 2 / 3],
                          "lung_area_matched_baseline": [0.3, 0.375], "random_baseline": [0.2, 0.2]})
    fig = consistency_depth_figure(table)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["mean consistency degree"].y) == pytest.approx([0.1, 0.6])
    assert list(by_name["baseline: lungs, same area"].y) == pytest.approx([0.3, 0.375])
    assert list(by_name["pointing-game hit rate"].y) == pytest.approx([1 / 3, 2 / 3])


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


def _check(distance: float, threshold: float = 27.32) -> dict:
    return {"distance": distance, "threshold": threshold, "unlike": distance > threshold, "percentile": 99.0,
            "method": "mahalanobis-ledoitwolf", "n_val": 144, "val_share_below": 1.0}


def test_unlike_message_warns_above_the_threshold_and_notes_below():
    level, text = unlike_message(_check(74.84))
    assert level == "warning"
    assert text.startswith("This image is unlike the training data")
    assert "is 74.8, above 27.3 (the 99th percentile of the distances of the 144 validation images)" in text
    assert text.endswith("so this prediction should not be trusted.")
    level, text = unlike_message(_check(12.04))
    assert level == "caption"
    assert text == ("Like the training data: deep-feature distance 12.0 to the training images, within 27.3 (the "
                    "99th percentile of the distances of the 144 validation images; Mahalanobis distance, "
                    "Ledoit-Wolf covariance).")


def test_diagnose_upload_adds_the_check_against_the_run(model, monkeypatch):
    import engine.explain.upload as charts
    from engine.errors import DataError

    image = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    seen = {}

    def check_unlike(run, images, *, model):
        seen.update(run=run, images=images, model=model)
        return {**_check(30.5), "distance": np.array([30.5]), "unlike": np.array([True]),
                "val_share_below": np.array([1.0])}

    monkeypatch.setattr(charts, "check_unlike", check_unlike)
    result = diagnose_upload(_png(image), "xray.png", model, CLASSES, 64, lime_samples=20, run="the run")
    assert seen["run"] == "the run" and seen["model"] is model
    np.testing.assert_array_equal(seen["images"], image)  # the preprocessed image the model saw
    assert result["unlike"] == {**_check(30.5), "unlike": True}  # one image: plain values

    def refuse(run, images, *, model):
        raise DataError("Run r has no validation images")

    monkeypatch.setattr(charts, "check_unlike", refuse)
    result = diagnose_upload(_png(image), "xray.png", model, CLASSES, 64, lime_samples=20, run="the run")
    assert result["unlike"] == ("Whether this image is like the training data cannot be checked: Run r has no "
                                "validation images")
    assert "unlike" not in diagnose_upload(_png(image), "xray.png", model, CLASSES, 64, lime_samples=20)


# --- the explanation report ----------------------------------------------------------------------------------------

from dashboard.report_charts import (  # noqa: E402
    BEST_STYLE,
    consistency_curve_figure,
    depth_score_figure,
    empty_map_message,
    format_ci,
    missing_depths,
    report_csv,
    report_table,
    sanity_figure,
    sanity_message,
    styled_report,
)
from engine.explain.report import REPORT_COLUMNS, best_per_column  # noqa: E402


def _report() -> pd.DataFrame:
    """Three hand-made report rows: Grad-CAM and HiResCAM tie on consistency; guided backprop fails the sanity check."""
    def row(method, label, consistency, deletion, sanity_pass, ssim, empty=0.0):
        r = {c: np.nan for c in REPORT_COLUMNS}
        r.update(method=method, label=label, kind="CAM", n_images=10, empty_share=empty, consistency=consistency,
                 consistency_ci=[consistency - 0.1, consistency + 0.1], lung_area_matched_baseline=0.2,
                 lung_area_matched_baseline_ci=[0.15, 0.25], random_baseline=0.05, random_baseline_ci=[0.0, 0.1],
                 beats_chance=consistency > 0.4, iou_otsu=0.3, pointing_game=0.5, relevance_mass=0.4,
                 relevance_rank=0.3, deletion_auc=deletion, deletion_auc_ci=[deletion - 0.01, deletion + 0.01],
                 insertion_auc=0.6, road=0.1, sanity_ssim=ssim, sanity_spearman=ssim, sanity_pass=sanity_pass,
                 seconds_per_image=0.0123,
                 consistency_curve={f"{t / 10:g}": consistency * (1 - t / 10) for t in range(1, 10)},
                 sanity_steps=[{"step": k, "layer": layer, "spearman": s, "ssim": s} for k, (layer, s) in
                               enumerate([("original", 1.0), ("head", 0.8 if sanity_pass else 1.0),
                                          ("block 5", 0.1 if sanity_pass else ssim)])])
        return r
    return pd.DataFrame([row("gradcam", "Grad-CAM", 0.6, 0.30, True, 0.1),
                         row("hirescam", "HiResCAM", 0.6, 0.20, True, 0.2),
                         row("guided-backprop", "Guided backpropagation", 0.3, 0.40, False, 0.93, empty=0.2)],
                        columns=list(REPORT_COLUMNS))


def test_format_ci():
    assert format_ci(0.4521, [0.401, 0.503]) == "45.2% [40.1, 50.3]"
    assert format_ci(0.4521, [0.401, 0.503], percent=False) == "0.452 [0.401, 0.503]"
    assert format_ci(0.5) == "50.0%" and format_ci(float("nan"), [0, 1]) == "n/a" and format_ci(None) == "n/a"


def test_report_table_marks_every_tied_best_and_the_lowest_deletion():
    report = _report()
    table, best = report_table(report, best_per_column(report))
    assert table["Method"].tolist() == ["Grad-CAM", "HiResCAM", "Guided backpropagation"]
    assert table["Consistency"].tolist() == ["★ 60.0% [50.0, 70.0]", "★ 60.0% [50.0, 70.0]", "30.0% [20.0, 40.0]"]
    assert best["Consistency"].tolist() == [True, True, False]  # a tie marks both
    assert best["Deletion AUC ↓"].tolist() == [False, True, False]  # lower is better
    assert table["Lung-area baseline"].tolist()[0] == "20.0% [15.0, 25.0]"
    assert table["Beats chance"].tolist() == ["yes", "yes", "no"]
    assert table["Sanity check"].tolist() == ["pass (SSIM 0.10)", "pass (SSIM 0.20)", "FAIL (SSIM 0.93)"]
    assert table["Empty maps"].tolist()[2] == "20.0%" and table["s / image"].tolist()[0] == "0.012"
    assert not best["Method"].any() and not best["Lung-area baseline"].any()
    styles = styled_report(table, best)._compute().ctx  # (row, col) -> [(property, value)]
    col = list(table.columns).index("Consistency")
    assert ("font-weight", "700") in styles[(0, col)] and ("color", "#15803d") in styles[(0, col)]
    assert BEST_STYLE.startswith("font-weight") and "red" not in BEST_STYLE and not styles.get((2, col))
    sanity = list(table.columns).index("Sanity check")
    assert ("color", "#b91c1c") in styles[(2, sanity)]


def test_report_csv_splits_intervals_and_leaves_nested_columns_out():
    csv = pd.read_csv(pd.io.common.BytesIO(report_csv(_report())))
    assert csv["method"].tolist() == ["gradcam", "hirescam", "guided-backprop"]
    assert csv["consistency_lo"].tolist() == pytest.approx([0.5, 0.5, 0.2])
    assert csv["consistency_hi"].tolist() == pytest.approx([0.7, 0.7, 0.4])
    assert "consistency_ci" not in csv and "sanity_steps" not in csv and "consistency_curve" not in csv
    assert csv["sanity_pass"].tolist() == [True, True, False]


def test_sanity_figure_one_line_per_method_in_cascade_order():
    fig = sanity_figure(_report())
    ssim = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in ssim] == ["Grad-CAM", "HiResCAM", "Guided backpropagation"]
    assert list(ssim[2].x) == ["original", "head", "block 5"] and list(ssim[2].y) == [1.0, 1.0, 0.93]
    assert fig.layout.shapes[0].y0 == 0.5  # the pass limit


def test_consistency_curve_and_depth_figures():
    fig = consistency_curve_figure(_report(), threshold=0.7)
    assert [t.name for t in fig.data] == ["Grad-CAM", "HiResCAM", "Guided backpropagation"]
    assert list(fig.data[0].x) == pytest.approx([t / 10 for t in range(1, 10)])
    assert fig.data[0].y[0] == pytest.approx(0.6 * 0.9)
    long = pd.DataFrame({"depth": [5, 0, 0, 5], "method": ["gradcam", "gradcam", "saliency", "gradcam"],
                         "label": ["Grad-CAM", "Grad-CAM", "Saliency", "Grad-CAM"],
                         "score": ["consistency", "consistency", "consistency", "road"], "value": [0.6, 0.2, 0.1, 9]})
    fig = depth_score_figure(long, "consistency")
    assert [t.name for t in fig.data] == ["Grad-CAM", "Saliency"]
    assert list(fig.data[0].x) == [0, 5] and list(fig.data[0].y) == [0.2, 0.6]
    assert missing_depths(long, [0, 3, 5], ["gradcam", "saliency"]) == {3: ["gradcam", "saliency"], 5: ["saliency"]}


def test_sanity_and_empty_map_messages():
    level, text = sanity_message("Guided backpropagation", {"sanity_pass": False, "sanity_ssim": 0.934})
    assert level == "warning" and text.startswith("Guided backpropagation fails the model-randomisation sanity check")
    assert "(SSIM 0.93)" in text and "image structure, not the model's reasoning" in text
    assert sanity_message("Grad-CAM", {"sanity_pass": True, "sanity_ssim": 0.1})[0] == "ok"
    level, text = sanity_message("LIME", None)
    assert level == "missing" and "Explanation report" in text
    assert empty_map_message("Grad-CAM", "covid", "conv5 (block 5)", np.zeros((4, 4))).startswith(
        "This map is empty (all zero): Grad-CAM found no positive evidence for covid at conv5 (block 5)")
    assert empty_map_message("Saliency", "normal", None, np.full((4, 4), 0.5)).startswith(
        "This map is constant (every pixel 0.50): Saliency")
