"""Ouyang et al.'s size-balanced sampling (§III-C) and dual-sampling ensemble (eq. 5), against hand values."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from engine.ensemble import DUAL_W_EXTREME, DUAL_W_MIDDLE, combine, dual_weight, fit_dual_weights
from engine.sampling import (
    LARGE_CAP_ABOVE,
    SMALL_COVID_BELOW,
    infection_ratio,
    size_balanced_indices,
    size_balanced_probabilities,
    size_groups,
)

COVID, CAP = 1, 0  # classes ("cap", "covid"), positive "covid"


def test_infection_ratio_counts_lesion_inside_the_lung():
    lung = np.zeros((2, 2, 2), bool)
    lung[0] = True  # 4 lung voxels
    lesion = np.zeros((2, 2, 2), bool)
    lesion[0, 0, 0] = lesion[1, 1, 1] = True  # one inside the lung, one outside
    assert infection_ratio(lesion, lung) == 0.25
    assert math.isnan(infection_ratio(lesion, np.zeros_like(lung)))


def test_size_groups_at_the_paper_thresholds():
    assert (SMALL_COVID_BELOW, LARGE_CAP_ABOVE) == (0.030, 0.001)
    y = np.array([COVID, COVID, COVID, CAP, CAP, CAP, CAP])
    ratios = np.array([0.029, 0.030, np.nan, 0.001, 0.0011, 0.5, np.nan])
    assert size_groups(y, ratios, COVID).tolist() == [0, 1, 1, 2, 3, 3, 2]


def test_size_groups_for_three_classes_split_each_other_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    ratios = np.array([0.0, 0.01, 0.01, 0.05, 0.0005, 0.2])
    assert size_groups(y, ratios, 1).tolist() == [2, 3, 0, 1, 4, 5]


def _groups(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_group_probabilities_follow_the_paper_formula():
    # N = [2 small covid, 3 large covid, 4 small cap, 1 large cap]: W = [3/2, 1, 1, 4/1], sum 7.5
    np.testing.assert_allclose(size_balanced_probabilities(_groups([2, 3, 4, 1])), np.array([1.5, 1, 1, 4]) / 7.5)


def test_empty_groups_get_no_draws_and_their_partner_weight_1():
    np.testing.assert_allclose(size_balanced_probabilities(_groups([0, 3, 2, 2])), [0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(size_balanced_probabilities(_groups([2, 0, 2, 0])), [0.5, 0, 0.5, 0])


def test_sampler_draws_each_group_and_item_with_the_intended_frequency():
    groups = np.array([0, 2, 1, 1, 2, 3, 2, 1, 0, 2])  # N = [2, 3, 4, 1]
    n = 20000
    idx = size_balanced_indices(groups, n, torch.Generator().manual_seed(0))
    assert idx.shape == (n,) and idx.min() >= 0 and idx.max() < len(groups)
    expected_group = np.array([1.5, 1, 1, 4]) / 7.5
    assert chisquare(np.bincount(groups[idx], minlength=4), expected_group * n).pvalue > 0.001
    per_item = expected_group[groups] / np.bincount(groups)[groups]  # uniform within the group
    assert chisquare(np.bincount(idx, minlength=len(groups)), per_item * n).pvalue > 0.001
    again = size_balanced_indices(groups, n, torch.Generator().manual_seed(0))
    assert np.array_equal(idx, again)
    assert size_balanced_indices(groups, 0, torch.Generator()).shape == (0,)


@pytest.mark.parametrize("ratio, w", [(0.0, 0.35), (0.000999, 0.35), (0.001, 0.96), (0.01, 0.96), (0.030, 0.96),
                                      (0.0301, 0.35), (float("nan"), 0.96)])
def test_dual_weight_at_the_boundaries(ratio, w):
    assert (DUAL_W_EXTREME, DUAL_W_MIDDLE) == (0.35, 0.96)
    assert dual_weight(ratio) == w


def test_combine_by_hand():
    p_us = np.array([[0.9, 0.1], [0.2, 0.8]])
    p_ss = np.array([[0.5, 0.5], [0.6, 0.4]])
    # row 0 extreme: 0.35 * 0.9 + 0.65 * 0.5 = 0.64; row 1 middle: 0.96 * 0.2 + 0.04 * 0.6 = 0.216
    np.testing.assert_allclose(combine(p_us, p_ss, np.array([0.5, 0.01])), [[0.64, 0.36], [0.216, 0.784]])
    np.testing.assert_allclose(combine(p_us, p_ss, np.array([0.5, 0.01]), 1.0, 0.0), [[0.9, 0.1], [0.6, 0.4]])


def test_fit_dual_weights_picks_the_better_member_per_size_range():
    # middle cases: US is right and SS wrong -> w_middle 1; extreme cases: SS right, US wrong -> w_extreme 0
    p_us = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    p_ss = 1 - p_us
    ratios = np.array([0.01, 0.02, 0.0, 0.2])
    y = np.array([0, 1, 1, 0])
    assert fit_dual_weights(p_us, p_ss, ratios, y) == (0.0, 1.0)
    # no extreme cases on validation: the paper's w_extreme stays
    assert fit_dual_weights(p_us[:2], p_ss[:2], ratios[:2], y[:2]) == (DUAL_W_EXTREME, 1.0)
