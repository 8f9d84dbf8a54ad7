"""Wan's consistency degree, its baselines, the pointing game, and the cached run-level scores and gallery."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from engine.explain import (SUPPORT_THRESHOLD, consistency_degree, gradcam, outside_share, pointing_game,
                            random_heatmap, run_heatmaps, wrong_reason_gallery)
from engine.explain.report import run_localisation
from engine.data.transforms import to_model_input
from engine.models.backbones import stage


def test_threshold_is_wans():
    assert SUPPORT_THRESHOLD == 0.7


def test_consistency_is_the_covered_share_of_the_lesion():
    heat = np.zeros((20, 20), np.float32)
    lesion = np.zeros((20, 20), bool)
    lesion[5:15, 5:15] = True  # 100 lesion pixels
    heat[5:9, 5:15] = 0.9  # 40 of them above 0.7
    heat[9, 5:15] = 0.7  # exactly 0.7 is not support (strictly greater)
    heat[0:3, :] = 1.0  # support outside the lesion does not count
    assert consistency_degree(heat, lesion) == pytest.approx(0.4)
    assert consistency_degree(heat, lesion, threshold=0.6) == pytest.approx(0.5)
    assert np.isnan(consistency_degree(heat, np.zeros_like(lesion)))
    with pytest.raises(ValueError, match="shape"):
        consistency_degree(heat, lesion[:10])


def test_random_heatmap_is_seeded_smooth_and_spans_zero_to_one():
    a, b, c = random_heatmap((64, 64), seed=1), random_heatmap((64, 64), seed=1), random_heatmap((64, 64), seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)
    white = np.random.default_rng(1).random((64, 64))
    assert np.abs(np.diff(a, axis=1)).mean() < 0.1 * np.abs(np.diff(white, axis=1)).mean()


def test_pointing_game_hand_cases():
    lesion = np.zeros((8, 8), bool)
    lesion[2:4, 2:4] = True
    heat = np.zeros((8, 8))
    heat[3, 3] = 1.0
    assert pointing_game(heat, lesion)
    heat[6, 6] = 2.0
    assert not pointing_game(heat, lesion)
    heat[2, 2] = 2.0  # a tie: one of the maximal pixels is in the lesion
    assert pointing_game(heat, lesion)
    assert not pointing_game(np.zeros((8, 8)), lesion)
    assert not pointing_game(heat, np.zeros_like(lesion))


def test_outside_share_counts_support_outside_the_region():
    region = np.zeros((10, 10), bool)
    region[:, :5] = True
    heat = np.zeros((10, 10))
    heat[0, :10] = 0.8  # 10 support pixels, 5 outside
    heat[1, :3] = 0.75  # 3 more, inside
    assert outside_share(heat, region) == pytest.approx(5 / 13)
    assert np.isnan(outside_share(np.zeros((10, 10)), region))


# --- run level -------------------------------------------------------------------------------------------------------

SIZE = 64
CLASSES = ("covid", "normal")


@dataclass
class FakeRun:
    """The parts of engine.runs.Run the explanations read."""

    dir: Path
    predictions: pd.DataFrame
    image_stack: np.ndarray
    classes: tuple[str, ...] = CLASSES
    config: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(image_size=SIZE))
    loads: int = 0

    def images(self, split: str) -> np.ndarray:
        return self.image_stack[(self.predictions["split"] == split).to_numpy()]

    def load_model(self):
        self.loads += 1
        torch.manual_seed(3)  # an untrained net whose Grad-CAM is non-zero for both classes on these images
        return stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 2, head_width=16).eval()

    def artifact(self, name: str) -> Path:
        return self.dir / "artifacts" / name


def _write_mask(path: Path, mask: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
    return str(path)


def _fake_run(tmp_path: Path) -> FakeRun:
    rng = np.random.default_rng(0)
    n = 6
    images = rng.integers(0, 256, (n, SIZE, SIZE)).astype(np.uint8)
    lesion = np.zeros((2 * SIZE, 2 * SIZE), bool)  # masks stored at twice the run's size
    lesion[20:80, 30:70] = True
    lungs = np.zeros_like(lesion)
    lungs[10:120, 10:60] = True
    y = np.array([0, 0, 0, 1, 1, 0])
    pred = np.array([0, 1, 0, 1, 0, 0])
    p_pred = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.5])
    split = np.array(["test", "test", "test", "test", "test", "train"])
    preds = pd.DataFrame({
        "file": [f"img{i}.png" for i in range(n)], "path": [f"/x/img{i}.png" for i in range(n)], "split": split,
        "y": y, "pred": pred,
        "mask": [_write_mask(tmp_path / "m" / f"{i}.png", lesion) if i in (0, 1) else "" for i in range(n)],
        "lung_mask": [_write_mask(tmp_path / "l" / f"{i}.png", lungs) if i != 2 else "" for i in range(n)],
    })
    preds["prob_covid"] = np.where(pred == 0, p_pred, 1 - p_pred)
    preds["prob_normal"] = 1 - preds["prob_covid"]
    return FakeRun(tmp_path / "run", preds, images)


def _nearest(mask: np.ndarray) -> np.ndarray:
    return mask[::2, ::2]  # halving a mask by nearest neighbour at pixel centres keeps every other pixel


def test_run_localisation_scores_each_masked_test_image_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    run = _fake_run(tmp_path)
    table = run_localisation(run)
    assert run.loads == 1
    maps = run_heatmaps(run)
    expected_maps = gradcam(run.load_model(), to_model_input(run.images("test")), run.predictions["pred"][:5].tolist())
    np.testing.assert_allclose(maps, expected_maps, atol=1e-5)

    lesion = _nearest(cv2.imread(run.predictions["mask"][0], cv2.IMREAD_GRAYSCALE) > 127)
    lungs = _nearest(cv2.imread(run.predictions["lung_mask"][0], cv2.IMREAD_GRAYSCALE) > 127)
    assert list(table["row"]) == [0, 1]
    for i in (0, 1):
        covered = ((maps[i] > 0.7) & lesion).sum() / lesion.sum()
        assert table["consistency"][i] == pytest.approx(covered)
        n_support = min(int((maps[i] > 0.7).sum()), int(lungs.sum()))  # the same support area, spread in the lungs
        assert table["lung_area_matched_baseline"][i] == pytest.approx(
            n_support / lungs.sum() * (lesion & lungs).sum() / lesion.sum())
        assert table["support_area"][i] == pytest.approx((maps[i] > 0.7).mean())
        assert 0.0 <= table["random_baseline"][i] <= 1.0
    assert table["lesion_area"][0] == pytest.approx(lesion.mean())
    assert list(table["correct"]) == [True, False]

    loads = run.loads
    pd.testing.assert_frame_equal(run_localisation(run), table)
    assert run.loads == loads  # read from the cache


def test_wrong_reason_gallery_ranks_mistakes_and_outside_support(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    run = _fake_run(tmp_path)
    maps = run_heatmaps(run)
    lesion = _nearest(cv2.imread(run.predictions["mask"][0], cv2.IMREAD_GRAYSCALE) > 127)
    lungs = _nearest(cv2.imread(run.predictions["lung_mask"][0], cv2.IMREAD_GRAYSCALE) > 127)

    def outside(i: int, region: np.ndarray) -> float:
        support = maps[i] > 0.7
        return (support & ~region).sum() / support.sum()

    expected = {}
    for i, (wrong_p, masks) in enumerate([(0, (lesion, lungs)), (0.8, (lesion, lungs)), (0, ()), (0, (lungs,)),
                                          (0.95, (lungs,))]):
        shares = [outside(i, m) for m in masks]
        flagged = max([s for s in shares if s > 0.5], default=0.0)
        if wrong_p or flagged:
            expected[i] = wrong_p + flagged
    gallery = wrong_reason_gallery(run)
    assert sorted(gallery["row"]) == sorted(expected)
    assert list(gallery["badness"]) == sorted(gallery["badness"], reverse=True)
    for _, g in gallery.iterrows():
        assert g["badness"] == pytest.approx(expected[g["row"]])
    wrong = gallery.set_index("row").loc[4]
    assert not wrong["correct"] and wrong["pred_class"] == "covid" and wrong["true_class"] == "normal"
    assert "misclassified as covid (p = 0.95)" in wrong["reason"]
    assert np.isnan(wrong["outside_lesion"])
    for _, g in gallery[gallery["correct"]].iterrows():
        assert "outside the" in g["reason"] and "misclassified" not in g["reason"]
