"""Localisation scores against independent computations: Quantus, scikit-learn, SciPy and hand-worked masks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, jaccard_score

from engine.explain.consistency import consistency_degree, pointing_game, random_heatmap
from engine.explain.localisation import (THRESHOLDS, beats_chance, consistency_curve, iou_dice, localisation_scores,
                                         lung_matched_consistency, lung_matched_pointing, pointing_hit_rate,
                                         lung_matched_relevance_mass, mean_ci, otsu_threshold, relevance_mass,
                                         relevance_rank, smooth_random_map)


def _masks(size: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Lung: rows 2-7 x cols 1-8 (48 px); lesion: rows 0-3 x cols 2-4 (12 px, 6 of them in the lung)."""
    lung = np.zeros((size, size), bool)
    lung[2:8, 1:9] = True
    lesion = np.zeros((size, size), bool)
    lesion[0:4, 2:5] = True
    return lesion, lung


def _maps_and_masks(n: int = 6, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Continuous random maps (no ties) and rectangular lesions, one of them empty."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = True
    maps[0, masks[0]] += 1.0  # one map whose largest values are its lesion
    return maps / maps.max(axis=(1, 2), keepdims=True), masks


def test_thresholds_are_the_tenths():
    assert THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def test_consistency_curve_is_wan_degree_at_each_threshold():
    maps, masks = _maps_and_masks()
    for h, m in zip(maps, masks):
        curve = consistency_curve(h, m)
        expected = [consistency_degree(h, m, t) for t in THRESHOLDS]
        np.testing.assert_allclose(curve, expected, equal_nan=True)
        if m.any():
            assert np.all(np.diff(curve) <= 0)  # a higher threshold never covers more of the lesion
    assert np.isnan(consistency_curve(maps[-1], masks[-1])).all()  # empty lesion


def test_consistency_curve_hand_worked():
    h = np.array([[0.05, 0.35], [0.75, 0.95]], np.float32)
    m = np.array([[True, True], [True, False]])
    # lesion values 0.05, 0.35, 0.75: above 0.1..0.3 -> 2/3; 0.4..0.7 -> 1/3; 0.8, 0.9 -> 0
    np.testing.assert_allclose(consistency_curve(h, m), [2 / 3] * 3 + [1 / 3] * 4 + [0, 0])


def test_otsu_threshold_separates_two_levels_and_is_nan_when_constant():
    h = np.full((8, 8), 0.2, np.float32)
    h[:3] = 0.8
    t = otsu_threshold(h)
    assert 0.2 <= t < 0.8
    assert ((h > t) == (h == np.float32(0.8))).all()
    assert np.isnan(otsu_threshold(np.zeros((8, 8), np.float32)))
    assert np.isnan(otsu_threshold(np.ones((8, 8), np.float32)))


def test_iou_dice_equal_sklearn():
    maps, masks = _maps_and_masks()
    for h, m in zip(maps[:-1], masks[:-1]):
        for t in (0.3, 0.7, otsu_threshold(h)):
            iou, dice = iou_dice(h, m, t)
            pred = (h > t).ravel()
            assert iou == pytest.approx(jaccard_score(m.ravel(), pred))
            assert dice == pytest.approx(f1_score(m.ravel(), pred))
    assert all(np.isnan(iou_dice(maps[-1], masks[-1], 0.5)))  # empty lesion: undefined
    assert iou_dice(np.zeros((4, 4)), np.eye(4, dtype=bool), float("nan")) == (0.0, 0.0)  # constant map: no support


def _quantus(metric_cls, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A Quantus localisation metric on given maps and masks, without its max-normalisation or abs."""
    metric = metric_cls(abs=False, normalise=False, disable_warnings=True)
    a, s = maps[:, None].astype(np.float32), masks[:, None]
    out = metric(model=None, x_batch=np.zeros_like(a), y_batch=np.zeros(len(a), int), a_batch=a, s_batch=s)
    return np.asarray(out, dtype=np.float64)


@pytest.mark.filterwarnings("ignore:Return np.nan:UserWarning", "ignore:invalid value:RuntimeWarning")
def test_relevance_mass_and_rank_equal_quantus():
    import quantus

    maps, masks = _maps_and_masks(n=8)
    mass = [relevance_mass(h, m) for h, m in zip(maps, masks)]
    rank = [relevance_rank(h, m) for h, m in zip(maps, masks)]
    np.testing.assert_allclose(mass, _quantus(quantus.RelevanceMassAccuracy, maps, masks), rtol=1e-5,
                               equal_nan=True)
    np.testing.assert_allclose(rank, _quantus(quantus.RelevanceRankAccuracy, maps, masks), equal_nan=True)
    assert np.isnan(mass[-1]) and np.isnan(rank[-1])  # empty lesion
    assert rank[0] == 1.0 and mass[0] > 1.5 * masks[0].mean()  # above the area share a flat map would get


def test_relevance_rank_and_mass_hand_worked_with_ties_and_zero_map():
    h = np.array([[1.0, 0.5, 0.5, 0.5], [0, 0, 0, 0]], np.float32)
    m = np.array([[False, True, False, False], [True, False, False, False]])
    # top-2 places: the 1.0 pixel (miss), then one of three tied 0.5 pixels, one of which is in the lesion: 1/3
    assert relevance_rank(h, m) == pytest.approx((0 + 1 / 3) / 2)
    assert relevance_mass(h, m) == pytest.approx(0.5 / 2.5)
    assert np.isnan(relevance_mass(np.zeros((2, 4)), m))
    assert np.isnan(relevance_rank(np.zeros((2, 4)), m))


def test_lung_baselines_hand_worked():
    lesion, lung = _masks()
    assert lung_matched_consistency(12, lesion, lung) == pytest.approx(12 / 48 * 6 / 12)
    assert lung_matched_consistency(0, lesion, lung) == 0.0
    assert lung_matched_consistency(100, lesion, lung) == pytest.approx(0.5)  # the whole lung: half the lesion
    assert lung_matched_pointing(lesion, lung) == pytest.approx(6 / 48)
    assert lung_matched_relevance_mass(lesion, lung) == pytest.approx(6 / 48)
    empty = np.zeros_like(lesion)
    assert np.isnan(lung_matched_consistency(5, empty, lung)) and np.isnan(lung_matched_pointing(lesion, empty))


def test_lung_pointing_and_mass_baselines_equal_their_definitions():
    lesion, lung = _masks()
    # every lung pixel as the single peak, each equally likely: the exact hit rate
    hits = []
    for y, x in zip(*np.nonzero(lung)):
        h = np.zeros(lung.shape, np.float32)
        h[y, x] = 1
        hits.append(pointing_game(h, lesion))
    assert lung_matched_pointing(lesion, lung) == pytest.approx(np.mean(hits))
    assert lung_matched_relevance_mass(lesion, lung) == pytest.approx(relevance_mass(lung.astype(np.float32), lesion))


def test_lung_matched_consistency_equals_monte_carlo_mean():
    lesion, lung = _masks(size=16)
    lung[2:14, 1:15] = True  # 168 px
    lesion[10:14, 6:12] = True  # a second lesion part inside the lungs: 30 of the lesion's 36 px are in them
    rng = np.random.default_rng(0)
    cells = np.flatnonzero(lung)
    for n_support in (5, 40, len(cells) + 10):
        trials = []
        for _ in range(4000):
            h = np.zeros(lung.size, np.float32)
            h[rng.choice(cells, size=min(n_support, len(cells)), replace=False)] = 1.0
            trials.append(consistency_degree(h.reshape(lung.shape), lesion))
        expected = lung_matched_consistency(n_support, lesion, lung)
        assert np.mean(trials) == pytest.approx(expected, abs=4 * np.std(trials) / np.sqrt(len(trials)) + 1e-12)


def test_smooth_random_map_is_the_seeded_random_heatmap():
    a = smooth_random_map((32, 32), seed=3)
    np.testing.assert_array_equal(a, random_heatmap((32, 32), 3))
    assert a.min() == 0 and a.max() == 1 and not np.array_equal(a, smooth_random_map((32, 32), seed=4))


def test_localisation_scores_combine_the_scores_and_baselines():
    lesion, lung = _masks()
    h = np.zeros(lesion.shape, np.float32)
    h[1:4, 2:5] = 0.9  # 9 support pixels, all in the lesion
    h[5, 5] = 0.3
    s = localisation_scores(h, lesion, lung, threshold=0.7, seed=1)
    assert s["consistency"] == pytest.approx(9 / 12)
    assert s["consistency_curve"] == pytest.approx(list(consistency_curve(h, lesion)))
    assert s["support_area"] == pytest.approx(9 / 100)
    assert (s["iou"], s["dice"]) == pytest.approx((9 / 12, 18 / 21))
    assert (s["iou_otsu"], s["dice_otsu"]) == pytest.approx(iou_dice(h, lesion, otsu_threshold(h)))
    assert s["pointing_game"] == 1.0
    assert s["relevance_mass"] == pytest.approx(8.1 / 8.4)
    # top 12: the 9 lesion pixels, the 0.3 pixel, and 2 of the 90 tied zeros, 3 of which lie in the lesion
    assert s["relevance_rank"] == pytest.approx((9 + 2 * 3 / 90) / 12)
    assert s["lung_area_matched_baseline"] == pytest.approx(9 / 48 * 6 / 12)
    assert s["lung_pointing_baseline"] == s["lung_relevance_mass_baseline"] == pytest.approx(6 / 48)
    rand = smooth_random_map(h.shape, 1)
    assert s["random_baseline"] == pytest.approx(consistency_degree(rand, lesion, 0.7))
    assert s["random_relevance_mass"] == pytest.approx(relevance_mass(rand, lesion))
    assert s["random_relevance_rank"] == pytest.approx(relevance_rank(rand, lesion))
    assert s["random_pointing_game"] == float(pointing_game(rand, lesion))  # a smooth field has a unique peak

    assert s["random_iou_otsu"] == pytest.approx(iou_dice(rand, lesion, otsu_threshold(rand))[0])
    no_lung = localisation_scores(h, lesion, None, threshold=0.7, seed=1)
    assert all(np.isnan(no_lung[k]) for k in ("lung_area_matched_baseline", "lung_pointing_baseline",
                                               "lung_relevance_mass_baseline"))
    normal = localisation_scores(h, np.zeros_like(lesion), lung, threshold=0.7, seed=1)
    assert np.isnan(normal["consistency"]) and np.isnan(normal["pointing_game"])
    blank = localisation_scores(np.zeros_like(h), lesion, lung, threshold=0.7, seed=1)
    assert (blank["consistency"], blank["pointing_game"], blank["iou_otsu"]) == (0.0, 0.0, 0.0)


def test_mean_ci_matches_scipy_percentile_bootstrap():
    v = np.random.default_rng(0).gamma(2.0, 0.1, 80)
    mean, lo, hi = mean_ci(np.concatenate([v, [np.nan, np.nan]]), n_boot=4000)
    ref = stats.bootstrap((v,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(1)).confidence_interval
    assert mean == pytest.approx(v.mean())
    half = (ref.high - ref.low) / 2
    assert lo == pytest.approx(ref.low, abs=0.1 * half) and hi == pytest.approx(ref.high, abs=0.1 * half)
    assert all(np.isnan(mean_ci([np.nan, np.nan])))
    assert mean_ci([0.25]) == (0.25, 0.25, 0.25)


def test_beats_chance():
    rng = np.random.default_rng(0)
    method = rng.normal(0.6, 0.1, 60)
    low, close = rng.normal(0.2, 0.1, 60), method + rng.normal(0, 0.05, 60)
    assert beats_chance(method, [low, low + 0.05])
    assert not beats_chance(method, [low, close])
    assert not beats_chance(low, [method])
    assert beats_chance(method, [low, np.full(60, np.nan)])  # an undefined baseline is skipped
    assert not beats_chance(method, [np.full(60, np.nan)])
    with_nan = method.copy()
    with_nan[:10] = np.nan
    assert beats_chance(with_nan, [low])


def test_pointing_game_breaks_ties_at_random():
    lesion = np.zeros((10, 10), bool)
    lesion[:5] = True
    flat = np.zeros((10, 10), np.float32)
    flat[4:6, 0] = 1.0  # two tied peaks, one in the lesion: a random tie-break hits half the time
    assert pointing_hit_rate(flat, lesion) == 0.5 and pointing_game(flat, lesion)  # the old rule: a hit
    assert pointing_hit_rate(np.zeros((10, 10)), lesion) == 0.0
    assert np.isnan(pointing_hit_rate(flat, np.zeros((10, 10), bool)))
