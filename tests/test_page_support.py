"""The Support Regions page in AppTest: every section on the tiny trained runs, checked against numbers recomputed
here from the run's files (predictions.csv, the mask PNGs) and the engine's heatmaps; the no-mask and empty states."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import engine
import engine.external
from dashboard.state import Selection
from tests.apptest_helpers import chart_spec, open_page, plotly_array
from engine.explain import run_heatmaps
from engine.ood import feature_vectors
from tests.test_ood import _ledoit_wolf, _scipy_distances

PAGE = "../pages/support_regions.py"
HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


def _array(v) -> np.ndarray:
    return plotly_array(v, dtype=float)


_chart = chart_spec


def _keys(at: AppTest) -> set[str]:
    return {c.key for c in at.get("plotly_chart")}


def _open(app: AppTest, sel: Selection, section: str | None = None) -> AppTest:
    return open_page(app, sel, PAGE, **({"support_section": section} if section else {}))


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def _test_rows(run: engine.Run) -> pd.DataFrame:
    df = pd.read_csv(run.dir / "predictions.csv", keep_default_na=False)
    return df[df["split"] == "test"].reset_index(drop=True)


def _mask(path: str, size: int) -> np.ndarray:
    """A mask PNG read and resized here, independently of the engine's reader."""
    if not path:
        return np.zeros((size, size), bool)
    m = cv2.imread(path, cv2.IMREAD_GRAYSCALE) > 127
    return cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)


def _heats(spec: dict) -> dict[str, np.ndarray]:
    """Panel axis ("x", "x2", ...) -> the jet map drawn there (on the grid's shared colour scale)."""
    return {t.get("xaxis", "x"): _array(t["z"]) for t in spec["data"]
            if t["type"] == "heatmap" and t.get("coloraxis") == "coloraxis"}


def _heat(spec: dict, axis: str = "x2") -> np.ndarray:
    """The jet map of one panel of a grid (the first method's, after the image, by default)."""
    return _heats(spec)[axis]


def _titles(spec: dict) -> list[str]:
    return [a["text"] for a in spec["layout"].get("annotations", [])]


def _support_levels(spec: dict) -> list[float]:
    return [t["contours"]["start"] for t in spec["data"] if t["type"] == "contour" and t["name"].startswith("support")]


def test_explain_section_overlay_probabilities_and_threshold(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    rows = _test_rows(run)
    assert {"support_grid", "support_probabilities"} <= _keys(at)
    assert at.select_slider(key="support_threshold").value == 0.7
    assert "Wan et al. §3.5" in at.select_slider(key="support_threshold").help
    assert len(at.selectbox(key="support_image").options) == len(rows)
    assert _titles(_chart(at, "support_grid"))[0] == f"Image<br>{Path(rows.loc[0, 'file']).name}"

    at.pills(key="support_classes").set_value(["covid"]).run()
    covid = rows.index[rows["y"] == run.classes.index("covid")]
    assert len(at.selectbox(key="support_image").options) == len(covid)
    row = rows.loc[covid[0]]
    probs = _array(_chart(at, "support_probabilities")["data"][0]["x"])
    np.testing.assert_allclose(probs, [float(row[f"prob_{c}"]) for c in run.classes], rtol=1e-6)

    lesion = _mask(row["mask"], run.config.image_size)
    lung = _mask(row["lung_mask"], run.config.image_size)
    for threshold in (0.7, 0.5):
        at.select_slider(key="support_threshold").set_value(threshold).run()
        assert not at.exception
        spec = _chart(at, "support_grid")
        heat = _heat(spec)
        assert heat.shape == lesion.shape and 0 < heat.max() <= 1.0
        assert _support_levels(spec) == [threshold]
        support = heat > threshold
        scores = at.dataframe[0].value["Grad-CAM"]
        assert scores["consistency degree"] == f"{(support & lesion).sum() / lesion.sum():.1%}"
        assert scores["support area"] == f"{support.mean():.1%}"
        assert scores["support outside lungs"] == f"{(support & ~lung).sum() / support.sum():.1%}"
        peak = heat == heat.max()
        assert scores["pointing game"] == ("hit" if lesion[peak].any() else "miss")
    assert {t["name"] for t in spec["data"] if t["type"] == "contour"} >= {"lesion mask", "lung mask"}
    assert at.query_params["threshold"] == "0.5" and at.query_params["image"] == row["file"]


def test_explain_section_filters_methods_layer_and_target(app, trained_selection, runs):
    at = _open(app, trained_selection)
    run = runs[max(runs)]
    rows = _test_rows(run)
    wrong = rows.index[rows["y"] != rows["pred"]].tolist()
    at.radio(key="support_outcome").set_value("Wrong").run()
    if wrong:
        options = at.selectbox(key="support_image").options
        assert len(options) == len(wrong) and all("✗" in o for o in options)
        assert [o.split(" · ")[0] for o in options] == [Path(f).name for f in rows.loc[wrong, "file"]]
    else:
        assert "No test image matches" in at.info[0].value
    at.radio(key="support_outcome").set_value("All").run()

    default_map = _heat(_chart(at, "support_grid"))
    at.session_state["support_knob_lime_n_samples"] = 50  # few LIME samples keep the test fast
    at.pills(key="support_methods").set_value(["gradcam", "occlusion", "lime"]).run()
    assert at.select_slider(key="support_knob_lime_n_samples").value == 50  # LIME's knob, from the registry
    assert not at.exception
    grid = _chart(at, "support_grid")  # one figure: the image, then one panel per method
    assert [t.split("<br>")[0] for t in _titles(grid)] == ["Image", "Grad-CAM", "Occlusion", "LIME"]
    assert sorted(_heats(grid)) == ["x2", "x3"]  # Grad-CAM and occlusion on the shared jet scale
    lime = [t for t in grid["data"] if t.get("xaxis") == "x4"]
    assert lime[0]["type"] == "image" and lime[1]["coloraxis"] == "coloraxis2"  # red/blue superpixels, own scale
    assert grid["layout"]["coloraxis"]["colorbar"]["title"]["text"].startswith("Heatmap")  # one scale for all maps
    assert grid["layout"]["coloraxis2"]["colorbar"]["title"]["text"].startswith("LIME weight")
    names = [t["name"] for t in grid["data"] if t["type"] == "contour" and t.get("showlegend", True)]
    assert len(names) == len(set(names))  # one legend: each outline named once
    assert list(at.dataframe[0].value.columns) == ["Grad-CAM", "Occlusion", "LIME"]
    assert at.query_params["method"] == "gradcam,occlusion,lime"
    for name in ("gradcam", "occlusion", "lime"):  # no map is drawn without its sanity note or warning
        label = engine.explain.METHODS[name].label
        assert any(label in c.value and "sanity check" in c.value for c in [*at.caption, *at.warning])

    layers = at.selectbox(key="support_layer")
    assert layers.index == len(layers.options) - 1  # the last conv layer by default (Wan)
    assert layers.options[-1] == engine.explain.layer_choices(run.load_model())[-1][1]  # human labels
    layers.set_value(engine.explain.layer_choices(run.load_model())[0][0]).run()  # conv1's module name
    assert not at.exception
    assert not np.allclose(_heat(_chart(at, "support_grid")), default_map)
    assert at.query_params["layer"] == engine.explain.layer_choices(run.load_model())[0][0]

    at.radio(key="support_target").set_value("Another class").run()
    at.selectbox(key="support_target_class").set_value("pneumonia").run()
    assert not at.exception
    assert _titles(_chart(at, "support_grid"))[1] == "Grad-CAM<br>explaining pneumonia"
    assert at.query_params["target"] == "pneumonia"


def test_consistency_section_against_recomputed_scores(app, trained_selection, runs):
    at = _open(app, trained_selection, "Consistency degree")
    run = runs[max(runs)]
    rows = _test_rows(run)
    maps = run_heatmaps(run, "gradcam", "test", "pred")
    size = run.config.image_size
    degree, lung_base, hits, lesion_area = [], [], [], []
    for i, r in rows.iterrows():
        lesion = _mask(r["mask"], size)
        if not lesion.any():
            continue
        lung = _mask(r["lung_mask"], size)
        support = maps[i] > 0.7
        degree.append((support & lesion).sum() / lesion.sum())
        # support of the same area spread uniformly in the lungs covers this share of the lesion on average
        lung_base.append(min(support.sum(), lung.sum()) / lung.sum() * (lung & lesion).sum() / lesion.sum())
        hits.append(maps[i].max() > 0 and lesion[maps[i] == maps[i].max()].any())
        lesion_area.append(lesion.mean())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Mean consistency degree"] == f"{np.mean(degree):.1%}"
    assert metrics["Baseline: lungs, same area"] == f"{np.mean(lung_base):.1%}"
    assert metrics["Pointing game"] == f"{np.mean(hits):.1%}"
    assert any("60.02%" in c.value and f"{np.mean(degree):.1%} on {len(degree)} test images" in c.value
               for c in at.caption)
    assert {"support_consistency_histogram", "support_consistency_depth"} <= _keys(at)

    histogram = _chart(at, "support_consistency_histogram")
    np.testing.assert_allclose(np.sort(_array(histogram["data"][0]["x"])), np.sort(degree))
    depth_curve = next(t for t in _chart(at, "support_consistency_depth")["data"]
                       if t["name"] == "mean consistency degree")
    assert list(_array(depth_curve["x"])) == sorted(runs)
    assert _array(depth_curve["y"])[-1] == pytest.approx(np.mean(degree))
    assert len(_titles(_chart(at, "support_top_grid"))) == min(6, len(degree))


def test_gallery_lists_misclassified_and_wrong_reason_images(app, trained_selection, runs):
    at = _open(app, trained_selection, "Wrong-reason gallery")
    run = runs[max(runs)]
    rows = _test_rows(run)
    maps = run_heatmaps(run, "gradcam", "test", "pred")
    size = run.config.image_size
    wrong = int((rows["y"] != rows["pred"]).sum())
    wrong_reason = 0
    for i, r in rows[rows["y"] == rows["pred"]].iterrows():
        support = maps[i] > 0.7
        if not support.any():
            continue
        shares = [(support & ~_mask(r[c], size)).sum() / support.sum() for c in ("mask", "lung_mask") if r[c]]
        wrong_reason += any(s > 0.5 for s in shares)
    n = wrong + wrong_reason
    if n == 0:
        assert at.success
        return
    assert any(m.value.startswith(f"**{wrong}** misclassified and **{wrong_reason}** right for the wrong reason")
               for m in at.markdown)
    assert len(_titles(_chart(at, "support_gallery_grid"))) == min(12, n)
    at.slider(key="support_gallery_size").set_value(4).run()
    assert len(_titles(_chart(at, "support_gallery_grid"))) == min(4, n)
    at.radio(key="support_gallery_kind").set_value("Misclassified (Lee fig. 9)").run()
    assert not at.exception
    assert len(_titles(_chart(at, "support_gallery_grid"))) == min(4, wrong)
    reasons = at.dataframe[0].value["reason"].tolist()  # one row per panel, in the same order
    assert len(reasons) == min(4, wrong) and all("misclassified as" in r for r in reasons)
    layers = at.selectbox(key="support_gallery_layer")
    assert layers.index == len(layers.options) - 1
    # an earlier layer: the same misclassified images, other maps
    layers.set_value(engine.explain.layer_choices(run.load_model())[2][0]).run()
    assert not at.exception
    assert len(_titles(_chart(at, "support_gallery_grid"))) == min(4, wrong)


def test_same_image_across_depths(app, trained_selection, runs):
    at = _open(app, trained_selection, "Same image across depths")
    spec = _chart(at, "support_depth_strip")
    titles = _titles(spec)
    assert [t.split("<br>")[0] for t in titles] == [f"Depth {d}" for d in sorted(runs)]
    assert all(t.count("<br>") == 1 and len(t.split("<br>")[1]) <= 32 for t in titles)  # two short lines
    heat = iter([_array(t["z"]) for t in spec["data"] if t["type"] == "heatmap" and t.get("coloraxis")])
    file = _test_rows(runs[max(runs)]).loc[0, "file"]
    for d, title in zip(sorted(runs), titles):
        rows = _test_rows(runs[d])
        i = int(np.flatnonzero(rows["file"] == file)[0])  # the same file, wherever it lies in this run's split
        r = rows.loc[i]
        pred = runs[d].classes[int(r["pred"])]
        assert title.split("<br>")[1].startswith(f"{pred} {float(r[f'prob_{pred}']):.2f}")
        expected = run_heatmaps(runs[d], "gradcam", "test", "true")[i]
        if expected.max() == expected.min():  # an empty map is named in the title and said, not drawn
            assert title.endswith("· empty map")
            assert any(c.value.startswith(f"Depth {d}: This map is empty") for c in at.caption)
        else:
            np.testing.assert_allclose(next(heat), expected, atol=1e-6)
    assert next(heat, None) is None


def test_diagnose_an_uploaded_image(app, trained_selection, runs):
    at = _open(app, trained_selection, "Diagnose a new image")
    assert not _keys(at)
    assert any("At most 20 MB and 4096 px per side" in c.value for c in at.caption)
    run = runs[max(runs)]
    row = _test_rows(run).loc[0]
    png = Path(row["path"]).read_bytes()  # a test image as a user would upload it
    at.select_slider(key="support_upload_lime_samples").set_value(50).run()
    at.file_uploader(key="support_upload").set_value(("xray.png", png, "image/png")).run()
    assert not at.exception and not at.error
    assert {"support_upload_probs", "support_upload_grid"} <= _keys(at)
    assert [t.split("<br>")[0] for t in _titles(_chart(at, "support_upload_grid"))] == ["Model input", "Grad-CAM",
                                                                                          "LIME"]
    # Read and preprocessed as at training time, the upload gets the probabilities recorded for that test image.
    probs = _array(_chart(at, "support_upload_probs")["data"][0]["x"])
    np.testing.assert_allclose(probs, [float(row[f"prob_{c}"]) for c in run.classes], atol=1e-4)
    # A phantom of the run's own test split is like its training data: no warning, its distance in a caption.
    distance, threshold = _hand_distance(run, run.images("test")[:1])
    assert distance[0] <= threshold
    assert not [w for w in at.warning if "unlike the training data" in w.value]
    assert any(c.value.startswith(f"Like the training data: deep-feature distance {distance[0]:.1f}")
               and f"within {threshold:.1f} (the 99th percentile" in c.value for c in at.caption)

    at.file_uploader(key="support_upload").set_value(("notes.png", b"not an image at all", "image/png")).run()
    assert not at.exception
    shown = re.sub(r"\\(.)", r"\1", at.error[0].value)  # the message is Markdown-escaped to show as written
    assert "notes.png is not a readable PNG" in shown
    assert "support_upload_grid" not in _keys(at)


def _hand_distance(run: engine.Run, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Mahalanobis distances of ``images`` to the run's training features (Ledoit-Wolf by hand, scipy) and the 99th
    percentile of the validation images' distances."""
    model = run.load_model()
    mean, cov, _ = _ledoit_wolf(feature_vectors(model, run.images("train")))
    val = _scipy_distances(feature_vectors(model, run.images("val")), mean, cov)
    return _scipy_distances(feature_vectors(model, images), mean, cov), float(np.percentile(val, 99))


def test_diagnose_warns_that_a_real_xray_is_unlike_the_training_data(app, trained_selection, runs, shared_data):
    at = _open(app, trained_selection, "Diagnose a new image")
    run = runs[max(runs)]
    path = sorted((shared_data / "covidqu_cxr_infection" / "images" / "covid").glob("*.png"))[0]
    at.select_slider(key="support_upload_lime_samples").set_value(50).run()
    at.file_uploader(key="support_upload").set_value((path.name, path.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error
    size = run.config.image_size
    image = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_AREA)
    distance, threshold = _hand_distance(run, image[None])
    assert distance[0] > threshold
    warnings = [w.value for w in at.warning if "unlike the training data" in w.value]
    assert len(warnings) == 1
    assert f"is {distance[0]:.1f}, above {threshold:.1f} (the 99th percentile" in warnings[0]
    assert "should not be trusted" in warnings[0]
    assert "support_upload_probs" in _keys(at)  # the prediction is still shown, with the warning beside it


def test_image_sections_on_an_external_folder(app, trained_selection, runs, tiny_folder, monkeypatch):
    # AppTest's server binds every interface, so typed folders must lie under the data root.
    monkeypatch.setenv("LUNGLENS_DATA_ROOT", str(tiny_folder.parent))
    at = _open(app, trained_selection, "Consistency degree")
    at.radio(key="support_images").set_value("An external folder").run()
    assert not at.exception and "Choose an external folder" in at.info[0].value
    at.selectbox(key="support_external_folder_choice").set_value("A folder on this machine").run()
    at.text_input(key="support_external_folder_path").input(str(tiny_folder)).run()
    assert not at.exception and not at.error
    n = len(list((tiny_folder / "images").glob("*/*.png")))
    assert any(c.value.startswith(f"{n} images of {tiny_folder}") for c in at.caption)

    run = runs[max(runs)]
    view = engine.external.external_view(run, tiny_folder)
    maps = run_heatmaps(view, "gradcam", "test", "pred")
    rows = view.predictions
    assert len(rows) == n and sorted(rows["path"]) == sorted(str(p) for p in (tiny_folder / "images").glob("*/*.png"))
    degree = []
    for i, r in rows.iterrows():
        lesion = _mask(r["mask"], run.config.image_size)
        if lesion.any():
            degree.append(((maps[i] > 0.7) & lesion).sum() / lesion.sum())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Mean consistency degree"] == f"{np.mean(degree):.1%}"
    depth_curve = next(t for t in _chart(at, "support_consistency_depth")["data"]
                       if t["name"] == "mean consistency degree")
    assert list(_array(depth_curve["x"])) == sorted(runs)  # every depth scored on the external folder

    at.session_state["support_section"] = "Explain an image"
    at.run()
    assert not at.exception
    assert len(at.selectbox(key="support_image").options) == n
    first = rows.loc[0]
    assert at.selectbox(key="support_image").options[0].startswith(f"{Path(first['file']).name} · {first['label']} →")
    for section in ("Wrong-reason gallery", "Same image across depths"):
        at.session_state["support_section"] = section
        at.run()
        assert not at.exception and not at.error, section
    titles = _titles(_chart(at, "support_depth_strip"))
    assert [t.split("<br>")[0] for t in titles] == [f"Depth {d}" for d in sorted(runs)]


def test_data_without_lesion_masks(tiny_folder, tmp_path):
    root = tmp_path / "nomasks"
    shutil.copytree(tiny_folder, root, ignore=shutil.ignore_patterns("masks"))
    sel = Selection(engine.RunConfig(data=str(root), init="scratch", image_size=64, head_width=16, epochs=1,
                                     patience=0, batch_size=16), (5,))
    engine.run_sweep(sel.configs())
    at = AppTest.from_file(str(HOME), default_timeout=120)
    _open(at, sel, "Consistency degree")
    assert "no lesion masks" in at.info[0].value
    assert not _keys(at)
    at.session_state["support_section"] = "Explain an image"
    at.run()
    assert not at.exception and "support_grid" in _keys(at)


def test_a_shared_link_reopens_the_same_section_image_method_and_target(app, trained_selection, runs):
    run = runs[max(runs)]
    file = _test_rows(run).loc[2, "file"]
    app.run()
    app.session_state["selection"] = trained_selection
    for param, code in {"section": "depths", "image": file, "method": "saliency", "target": "pred",
                        "threshold": "0.5", "depth": str(max(runs))}.items():
        app.query_params[param] = code
    at = app.switch_page(PAGE).run()
    assert not at.exception
    assert at.session_state["support_section"] == "Same image across depths"
    assert at.selectbox(key="support_depth_image").value == 2
    assert at.selectbox(key="support_depth_method").value == "saliency"
    assert at.radio(key="support_depth_target").value == "Predicted"
    assert at.select_slider(key="support_threshold").value == 0.5
    spec = _chart(at, "support_depth_strip")
    support = {t["contours"]["start"] for t in spec["data"] if t["type"] == "contour" and t["name"].startswith("sup")}
    assert support <= {0.5}
    expected = run_heatmaps(run, "saliency", "test", "pred")[2]
    np.testing.assert_allclose(_heats(spec)[f"x{len(runs)}"], expected, atol=1e-6)  # the deepest run's panel


def test_a_slow_map_runs_in_the_background_with_progress_and_cancel(app, trained_selection, runs, monkeypatch):
    from dashboard.background import result_key
    from engine.explain import run_image_explanation
    from engine.jobs import get_job

    monkeypatch.setenv("LUNGLENS_JOB_WAIT", "0")  # nothing is waited for: every map not yet in memory is a job
    at = open_page(app, trained_selection, PAGE, support_methods=["lime"], support_target="True",
                   support_knob_lime_n_samples=2000)
    run = runs[max(runs)]
    key = result_key(run_image_explanation, (run, 0, "test", "lime", "true"), {"n_samples": 2000})
    job = get_job(key)
    assert job is not None
    bars = [b.proto.text for b in at.get("progress")]
    assert any(t.startswith(f"LIME of {_test_rows(run).loc[0, 'file']}") for t in bars)
    assert at.selectbox(key="support_image").value == 0  # the page is drawn around the running job
    at.button(key="support_job_lime_cancel").click().run()
    assert job.wait(60) and job.status == "cancelled"
    at.run()
    assert not at.exception
    assert any(i.value.startswith("Cancelled") for i in at.info)
    assert at.button(key="support_job_lime_again")  # it can be started again
    assert not list(run.artifact("explain").glob("image-0-lime-test-true-*.npz"))  # nothing partial was cached
