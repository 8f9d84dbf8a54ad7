"""The explanation report and ``python -m engine explain-report``: values against an independent computation
(pytorch-grad-cam's GradCAM and the consistency degree by hand), the JSON contract, cancelling, the cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import engine
from engine.cli import main
from engine.data.transforms import to_model_input
from engine.explain import cam_layer, run_masks, split_rows
from engine.explain.report import (REPORT_COLUMNS, Cancelled, ReportSettings, best_per_column, cached_method_report,
                                   explanation_report, report_across_depths, report_rows)

SMALL = ReportSettings(faithfulness_images=4, road_images=2, sanity_images=2, deletion_steps=8)
#: The keys issue 8 names for every row of ``explain-report --json``.
CONTRACT = ("method", "n_images", "empty_share", "consistency", "consistency_ci", "lung_area_matched_baseline",
            "random_baseline", "iou_otsu", "pointing_game", "relevance_mass", "deletion_auc", "insertion_auc", "road",
            "sanity_ssim", "sanity_pass", "seconds_per_image")


@pytest.fixture(scope="module")
def run(trained_selection) -> engine.Run:
    return engine.get_run(trained_selection.configs()[-1])


def test_gradcam_row_equals_an_independent_computation(run):
    row = explanation_report(run, ["gradcam"], SMALL).iloc[0]
    order = report_rows(run, "test")
    masks = run_masks(run, "test")
    rows = split_rows(run, "test")
    model = run.load_model()
    x = to_model_input(run.images("test")[order])
    with GradCAM(model=model, target_layers=[cam_layer(model)[2]]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in rows["pred"].to_numpy()[order]])
    lesion_rows = [j for j, r in enumerate(order) if masks["has_lesion"][r]]
    by_hand = [((maps[j] > 0.7) & masks["lesion"][order[j]]).sum() / masks["lesion"][order[j]].sum()
               for j in lesion_rows]
    assert row["n_images"] == len(rows) and row["n_lesion_images"] == len(lesion_rows) > 0
    assert row["consistency"] == pytest.approx(np.mean(by_hand), abs=1e-4)
    assert row["consistency_ci"][0] <= row["consistency"] <= row["consistency_ci"][1]
    assert row["empty_share"] == pytest.approx(np.mean(maps.reshape(len(maps), -1).max(1) == 0))
    # the lung-area-matched baseline: min(|support|, |lung|) / |lung| * |lesion in lung| / |lesion|, averaged
    expected = []
    for j in lesion_rows:
        lesion, lung = masks["lesion"][order[j]], masks["lung"][order[j]]
        n_support = min(int((maps[j] > 0.7).sum()), int(lung.sum()))
        expected.append(n_support / lung.sum() * (lesion & lung).sum() / lesion.sum())
    assert row["lung_area_matched_baseline"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert set(row["consistency_curve"]) == {f"{t / 10:g}" for t in range(1, 10)}
    assert [s["layer"] for s in row["sanity_steps"]][:3] == ["original", "head", "block 5"]


def test_cancel_stops_before_anything_is_cached(run):
    with pytest.raises(Cancelled):
        explanation_report(run, ["saliency"], SMALL, cancel=lambda: True)
    assert cached_method_report(run, "saliency", SMALL) is None


def test_rows_are_cached_and_gathered_across_depths(trained_selection, run):
    seen = []
    explanation_report(run, ["gradcam", "layercam"], SMALL, progress=lambda f, t: seen.append(f))
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    again = explanation_report(run, ["gradcam", "layercam"], SMALL, progress=lambda f, t: pytest.fail("recomputed"))
    assert list(again.columns) == list(REPORT_COLUMNS) and list(again["method"]) == ["gradcam", "layercam"]
    best = best_per_column(again)
    assert best["consistency"] in ("gradcam", "layercam", "gradcam, layercam")
    runs = {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}
    table = report_across_depths(runs, ["gradcam", "layercam"], SMALL)
    assert set(table["depth"]) == {max(runs)}  # only the computed depth; the other is not computed here
    assert set(table["method"]) == {"gradcam", "layercam"}


def test_cli_prints_the_contract_keys_as_json(run, capsys):
    assert main(["explain-report", "--run", run.id, "--methods", "gradcam,Saliency", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["gradcam", "saliency"]
    for r in rows:
        assert set(CONTRACT) <= set(r)
        assert len(r["consistency_ci"]) == 2 and isinstance(r["sanity_pass"], bool)
    assert main(["explain-report", "--run", run.id, "--methods", "gradcam"]) == 0
    assert "consistency" in capsys.readouterr().out
    assert main(["explain-report", "--run", run.id, "--methods", "gradcam,nope"]) == 2
    assert "Unknown explanation method 'nope'" in capsys.readouterr().err
