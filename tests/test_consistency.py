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


# --- what the Support Regions page shows (engine.explain.support) ---------------------------------------------------

def test_target_index_and_row_masks_by_hand():
    from engine.explain.support import row_masks, target_index

    row = {"y": 1, "pred": 0}
    assert (target_index(row, "pred"), target_index(row, "true"), target_index(row, 2)) == (0, 1, 2)
    lesion = np.zeros((2, 4, 4), bool)
    lesion[0, 1, 1] = True
    lung = np.ones((2, 4, 4), bool)
    masks = {"lesion": lesion, "lung": lung, "has_lesion": np.array([True, True]),
             "has_lung": np.array([False, True])}
    first, no_lung = row_masks(masks, 0)
    np.testing.assert_array_equal(first, lesion[0])
    assert no_lung is None  # has_lung False: no lung mask
    empty, lungs = row_masks(masks, 1)
    assert empty is None and lungs.all()  # an empty lesion mask counts as none


def test_image_scores_against_hand_counts():
    from engine.explain.support import image_scores

    heat = np.zeros((10, 10), np.float32)
    heat[0:4, 0:5] = 0.9  # 20 support pixels
    heat[0, 0] = 1.0  # the peak
    lesion = np.zeros((10, 10), bool)
    lesion[2:6, 0:5] = True  # 20 pixels, 10 of them covered
    lung = np.zeros((10, 10), bool)
    lung[1:10, :] = True  # 90 pixels; 15 support pixels inside, the lesion wholly inside
    s = image_scores(heat, lesion, lung, 0.7, seed=3)
    assert s["consistency degree"] == pytest.approx(10 / 20)
    assert s["support area"] == pytest.approx(20 / 100)
    assert s["support outside lesion"] == pytest.approx(10 / 20)
    assert s["support outside lungs"] == pytest.approx(5 / 20)
    assert s["pointing game"] == 0.0  # the peak (0, 0) lies outside the lesion
    assert s["baseline: lungs, same area"] == pytest.approx(20 / 90 * 20 / 20)
    assert s["relevance mass"] == pytest.approx(heat[lesion].sum() / heat.sum())
    rand = random_heatmap((10, 10), 3)
    assert s["baseline: random map"] == pytest.approx(((rand > 0.7) & lesion).sum() / 20)
    none = image_scores(heat, None, None, 0.7)
    assert np.isnan(none["consistency degree"]) and np.isnan(none["pointing game"])
    assert np.isnan(none["support outside lungs"]) and none["support area"] == pytest.approx(0.2)


def _shuffled(run: FakeRun, tmp_path: Path, order: list[int]) -> FakeRun:
    """Another depth's run of the same data: its test rows in ``order`` (a file may be missing), its own cache."""
    test = run.predictions[run.predictions["split"] == "test"].iloc[order]
    preds = pd.concat([test, run.predictions[run.predictions["split"] != "test"]], ignore_index=True)
    images = np.concatenate([run.images("test")[order], run.images("train")])
    return FakeRun(tmp_path / f"run{len(order)}", preds, images)


def test_same_image_across_depths_finds_the_file_in_each_run(tmp_path, monkeypatch):
    from engine.explain.support import same_image_across_depths

    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    base = _fake_run(tmp_path)
    other, without = _shuffled(base, tmp_path, [3, 1, 0, 2, 4]), _shuffled(base, tmp_path, [2, 3, 4])
    runs = {0: other, 3: without, 5: base}
    heard = []
    table, maps = same_image_across_depths(runs, "img1.png", "gradcam", "true", 0.7,
                                           progress=lambda f, t: heard.append(f))
    assert table["depth"].tolist() == [0, 5] and sorted(maps) == [0, 5]  # depth 3's test split lacks img1.png
    assert table["row"].tolist() == [1, 1]
    lesion = _nearest(cv2.imread(base.predictions["mask"][1], cv2.IMREAD_GRAYSCALE) > 127)
    model = base.load_model()
    expected = gradcam(model, to_model_input(base.images("test")[1:2]), [0])[0]  # img1's true class: covid
    for depth in (0, 5):
        np.testing.assert_allclose(maps[depth], expected, atol=1e-5)
    r = table.set_index("depth").loc[5]
    assert (r["predicted"], r["explained"]) == ("normal", "covid")  # img1 is misclassified
    assert r["probability"] == pytest.approx(0.8)
    assert r["consistency"] == pytest.approx(((expected > 0.7) & lesion).sum() / lesion.sum())
    assert heard and heard[-1] == 1.0 and heard == sorted(heard)


def test_localisation_by_depth_summarises_each_depth(tmp_path, monkeypatch):
    from engine.explain.support import localisation_by_depth

    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    base = _fake_run(tmp_path)
    no_lesion = _shuffled(base, tmp_path, [2, 3, 4])  # no image with a lesion mask: no point
    table = localisation_by_depth({5: base, 1: no_lesion}, 0.7, "gradcam", "pred")
    assert table["depth"].tolist() == [5]
    maps = gradcam(base.load_model(), to_model_input(base.images("test")), base.predictions["pred"][:5].tolist())
    lesion = _nearest(cv2.imread(base.predictions["mask"][0], cv2.IMREAD_GRAYSCALE) > 127)
    degrees = [((maps[i] > 0.7) & lesion).sum() / lesion.sum() for i in (0, 1)]
    assert table.loc[0, "n"] == 2 and table.loc[0, "consistency"] == pytest.approx(np.mean(degrees), abs=1e-6)
    assert table.loc[0, "pointing_chance"] == pytest.approx(lesion.mean())


def test_a_cancelled_split_stops_between_chunks_and_caches_nothing(tmp_path, monkeypatch):
    from engine.errors import Cancelled

    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    run = _fake_run(tmp_path)
    heard: list[str] = []
    with pytest.raises(Cancelled):  # occlusion: chunks of 4 images, so the cancel comes before the second one
        run_heatmaps(run, "occlusion", progress=lambda f, t: heard.append(t), cancel=lambda: len(heard) > 0)
    assert heard == ["Occlusion: 0 of 5 images"]
    assert not list(run.artifact("explain").glob("heatmaps-*.npz"))
