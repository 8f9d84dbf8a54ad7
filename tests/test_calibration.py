"""Calibration and operating points: values against scikit-learn, hand-worked cases and a tempered softmax."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, confusion_matrix

import engine
from engine.calibration import (
    THRESHOLD_PRESETS,
    apply_temperature,
    calibration_summary,
    fit_temperature,
    operating_point,
    predictive_values,
    run_calibration,
    run_operating_point,
    run_temperature,
    run_temperature_fit,
    threshold_preset,
)
from engine.errors import ConfigError, DataError

CLASSES = ("covid", "normal", "pneumonia")


def _binary(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    return np.stack([1 - s, s], axis=1)


# --- calibration_summary -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_summary_equals_sklearn_on_random_predictions(seed, n_bins):
    rng = np.random.default_rng(seed)
    proba = softmax(rng.normal(0, 2, (300, 3)), axis=1)
    y = rng.integers(0, 3, 300)
    positive = seed % 3
    out = calibration_summary(y, proba, positive, n_bins=n_bins)
    prob_true, prob_pred = calibration_curve(y == positive, proba[:, positive], n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(out["reliability"]["prob_true"], prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["reliability"]["prob_pred"], prob_pred, rtol=0, atol=1e-12)
    assert out["brier"] == pytest.approx(brier_score_loss(y == positive, proba[:, positive]), abs=1e-12)
    assert sum(out["reliability"]["count"]) == 300 and out["n_bins"] == n_bins


def test_summary_on_bin_edges_equals_sklearn_and_a_hand_count():
    # Scores exactly on the edges 0, 0.1, 0.5 and 1: sklearn puts an edge into the bin below it (bins (lo, hi]).
    scores = np.array([0.0, 0.1, 0.1, 0.15, 0.5, 0.5, 0.55, 1.0, 1.0, 0.95])
    y = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 0])
    out = calibration_summary(y, _binary(scores), 1, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, scores, n_bins=10)
    np.testing.assert_allclose(out["reliability"]["prob_true"], prob_true)
    np.testing.assert_allclose(out["reliability"]["prob_pred"], prob_pred)
    # By hand: [0, 0.1] holds 0, 0.1, 0.1; (0.1, 0.2] holds 0.15; (0.4, 0.5] the two 0.5s; (0.5, 0.6] 0.55;
    # (0.9, 1] holds 1, 1, 0.95.
    assert out["reliability"]["count"] == [3, 1, 2, 1, 3]
    assert out["brier"] == pytest.approx(brier_score_loss(y, scores))


def test_ece_and_brier_on_a_hand_worked_case():
    # Two bins [0, 0.5] and (0.5, 1]. Bin 1: scores 0.2, 0.4 (mean 0.3), one positive of two (0.5): gap 0.2.
    # Bin 2: scores 0.6, 0.9 (mean 0.75), both positive (1.0): gap 0.25. ECE = 0.5 * 0.2 + 0.5 * 0.25 = 0.225.
    # Brier = (0.2^2 + 0.6^2 + 0.4^2 + 0.1^2) / 4 = (0.04 + 0.36 + 0.16 + 0.01) / 4 = 0.1425.
    out = calibration_summary(np.array([0, 1, 1, 1]), _binary([0.2, 0.4, 0.6, 0.9]), 1, n_bins=2)
    assert out["ece"] == pytest.approx(0.225)
    assert out["brier"] == pytest.approx(0.1425)
    assert out["reliability"] == {"prob_pred": pytest.approx([0.3, 0.75]), "prob_true": [0.5, 1.0], "count": [2, 2]}


def test_summary_rejects_what_does_not_line_up():
    with pytest.raises(DataError, match="line up"):
        calibration_summary(np.array([0, 1]), _binary([0.2, 0.4, 0.6]), 1)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        calibration_summary(np.array([0, 1]), _binary([0.2, 1.4]), 1)
    with pytest.raises(ConfigError, match="out of range"):
        calibration_summary(np.array([0, 1]), _binary([0.2, 0.4]), 2)


# --- temperature scaling -------------------------------------------------------------------------------------------

def _tempered(true_t: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits z, model probabilities softmax(z) and labels drawn from softmax(z / true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, 3))
    p_label = softmax(z / true_t, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p_label, axis=1)).sum(1)
    return z, softmax(z, axis=1), y


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_recovers_the_temperature_of_the_labels(true_t):
    z, proba, y = _tempered(true_t)
    t = fit_temperature(y, proba)
    assert t == pytest.approx(true_t, rel=0.1)

    def nll(temp: float) -> float:  # by hand, from the logits
        return -np.log(softmax(z / temp, axis=1)[np.arange(len(y)), y]).mean()

    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03))
    # softmax(log p / T) is softmax(z / T): log p and z differ by a per-row constant.
    np.testing.assert_allclose(apply_temperature(proba, t), softmax(z / t, axis=1), atol=1e-12)


def test_temperature_one_leaves_probabilities_unchanged():
    _, proba, _ = _tempered(1.0, n=200)
    np.testing.assert_allclose(apply_temperature(proba, 1.0), proba, atol=1e-12)
    with pytest.raises(ConfigError, match="above 0"):
        apply_temperature(proba, 0.0)


@dataclass
class FakeRun:
    """What the calibration functions read of a run: predictions, classes, positive, id and an artifact folder."""

    predictions: pd.DataFrame
    root: Path
    classes: tuple[str, ...] = CLASSES
    positive: int = 0
    id: str = "fake"

    def artifact(self, name: str) -> Path:
        return self.root / name


def _fake_predictions(seed: int = 0, splits=("train", "val", "test"), n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n * len(splits), 3))
    proba = softmax(z, axis=1)
    y = (rng.random(len(z))[:, None] > np.cumsum(softmax(z / 2.0, axis=1), axis=1)).sum(1)
    df = pd.DataFrame({"split": np.repeat(splits, n), "y": y, "pred": proba.argmax(1)})
    for i, c in enumerate(CLASSES):
        df[f"prob_{c}"] = proba[:, i]
    return df


def test_run_temperature_uses_only_the_validation_rows(tmp_path):
    df = _fake_predictions()
    t = run_temperature(FakeRun(df, tmp_path / "a"))
    val = df[df["split"] == "val"]
    by_hand = fit_temperature(val["y"].to_numpy(), val[[f"prob_{c}" for c in CLASSES]].to_numpy())
    assert t == by_hand
    stored = json.loads((tmp_path / "a").joinpath(next(p.name for p in (tmp_path / "a").glob("temperature*.json")))
                        .read_text())
    assert stored["temperature"] == t and stored["n"] == len(val) and stored["nll_after"] <= stored["nll_before"]

    changed = df.copy()
    test, train = (changed["split"] == "test").to_numpy(), (changed["split"] == "train").to_numpy()
    changed.loc[test, "y"] = (changed.loc[test, "y"] + 1) % 3  # every test label wrong now
    changed.loc[train, "y"] = changed.loc[train, "pred"]  # and every train one right
    assert run_temperature(FakeRun(changed, tmp_path / "b")) == t
    changed.loc[changed["split"] == "val", "y"] = changed.loc[changed["split"] == "val", "pred"]
    assert run_temperature(FakeRun(changed, tmp_path / "c")) < t  # a perfect validation split sharpens


def test_run_without_validation_images_says_so(tmp_path):
    run = FakeRun(_fake_predictions(splits=("train", "test")), tmp_path)
    with pytest.raises(DataError, match="no images in its validation split"):
        run_temperature(run)
    with pytest.raises(DataError, match="val split"):
        run_operating_point(run, "youden")
    assert run_operating_point(run, 0.5)["chosen_on_metrics"] is None  # a threshold set by hand still works
    assert set(run_calibration(run)["splits"]) == {"train", "test"}


# --- operating points ----------------------------------------------------------------------------------------------

def test_operating_point_counts_equal_sklearn():
    rng = np.random.default_rng(1)
    y, score = rng.random(200) < 0.3, rng.random(200)
    out = operating_point(y, score, 0.4)
    tn, fp, fn, tp = confusion_matrix(y, score >= 0.4).ravel()
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (tp, fp, tn, fn)
    assert out["sensitivity"] == tp / (tp + fn) and out["specificity"] == tn / (tn + fp)
    assert out["ppv"] == tp / (tp + fp) and out["npv"] == tn / (tn + fn) and out["prevalence"] == y.mean()
    assert np.isnan(operating_point(y, score, 1.5)["ppv"])  # nothing called positive: PPV undefined


def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    # 20 positives scored 0.31, 0.34, ..., 0.88 and 20 negatives scored 0.02, 0.05, ..., 0.59 (overlapping, no ties).
    pos = 0.31 + 0.03 * np.arange(20)
    neg = 0.02 + 0.03 * np.arange(20)
    return np.r_[np.ones(20, bool), np.zeros(20, bool)], np.round(np.r_[pos, neg], 10)


def test_screening_preset_is_the_highest_threshold_reaching_95_percent():
    y, score = _hand_made()
    t = threshold_preset("sensitivity95", y, score)
    # 95% of 20 positives is 19: the threshold is the second-lowest positive score, 0.34.
    assert t == pytest.approx(0.34)
    assert (score[y] >= t).mean() >= 0.95
    higher = np.unique(score[score > t])
    assert all((score[y] >= h).mean() < 0.95 for h in higher)


def test_screening_preset_with_tied_scores():
    y = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    score = np.array([0.9, 0.6, 0.6, 0.2, 0.7, 0.3, 0.1])
    assert threshold_preset("sensitivity95", y, score) == 0.2  # all four positives are needed: the lowest, 0.2


def test_youden_preset_is_the_argmax_of_tpr_minus_fpr_by_hand():
    for y, score in (_hand_made(), (np.array([1, 0, 1, 1, 0, 0, 1, 0], bool),
                                     np.array([0.8, 0.75, 0.7, 0.4, 0.35, 0.3, 0.2, 0.1]))):
        best, best_j = None, -np.inf
        for t in sorted(set(score), reverse=True):
            j = (score[y] >= t).mean() - (score[~y] >= t).mean()
            if j > best_j:
                best, best_j = t, j
        assert threshold_preset("youden", y, score) == best
    # The hand-made case: at 0.61 every negative is below and 10 of 20 positives above, J = 0.5; each lower score
    # adds a negative for every positive it adds, so J never exceeds 0.5, and ties go to the highest threshold.
    assert threshold_preset("youden", *_hand_made()) == pytest.approx(0.61)


def test_presets_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="sensitivity95, youden"):
        threshold_preset("f1", np.array([True, False]), np.array([0.6, 0.4]))
    with pytest.raises(DataError, match="both positive and negative"):
        threshold_preset("youden", np.array([True, True]), np.array([0.6, 0.4]))
    with pytest.raises(DataError, match="at least one positive"):
        threshold_preset("sensitivity95", np.array([False, False]), np.array([0.6, 0.4]))
    assert set(THRESHOLD_PRESETS) == {"sensitivity95", "youden"}


def test_predictive_values_by_bayes_on_a_hand_worked_case():
    # Sensitivity 0.9, specificity 0.8, prevalence 0.1 in 1,000 people: 90 TP, 10 FN, 180 FP, 720 TN.
    ppv, npv = predictive_values(0.9, 0.8, np.array([0.1, 0.0, 1.0]))
    assert ppv[0] == pytest.approx(90 / 270) and npv[0] == pytest.approx(720 / 730)
    assert ppv[1] == 0 and npv[1] == 1 and ppv[2] == 1 and npv[2] == 0
    # At a sample's own prevalence Bayes gives the sample's PPV and NPV.
    y, score = _hand_made()
    point = operating_point(y, score, 0.5)
    ppv, npv = predictive_values(point["sensitivity"], point["specificity"], np.array([point["prevalence"]]))
    assert ppv[0] == pytest.approx(point["ppv"]) and npv[0] == pytest.approx(point["npv"])


# --- on a trained run ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(trained_selection) -> engine.Run:
    return engine.get_run(trained_selection.configs()[-1])


def _rows(run: engine.Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = run.predictions[run.predictions["split"] == split]
    return rows["y"].to_numpy(), rows[[f"prob_{c}" for c in run.classes]].to_numpy(dtype=float)


def test_run_calibration_equals_sklearn_per_split(run):
    out = run_calibration(run)
    assert set(out["splits"]) == {"train", "val", "test"} and out["temperature"] is None
    for split, summary in out["splits"].items():
        y, proba = _rows(run, split)
        is_pos, score = y == run.positive, proba[:, run.positive]
        prob_true, prob_pred = calibration_curve(is_pos, score, n_bins=10)
        np.testing.assert_allclose(summary["reliability"]["prob_true"], prob_true, atol=1e-12)
        np.testing.assert_allclose(summary["reliability"]["prob_pred"], prob_pred, atol=1e-12)
        assert summary["brier"] == pytest.approx(brier_score_loss(is_pos, score), abs=1e-12)

    scaled = run_calibration(run, temperature=True)
    t = scaled["temperature"]
    assert t == run_temperature(run) == run_temperature_fit(run)["temperature"]
    y, proba = _rows(run, "test")
    by_hand = softmax(np.log(np.maximum(proba, 1e-30)) / t, axis=1)[:, run.positive]
    assert scaled["splits"]["test"]["brier"] == pytest.approx(brier_score_loss(y == run.positive, by_hand), abs=1e-9)


def test_run_operating_point_chooses_on_val_and_applies_to_test(run):
    out = run_operating_point(run, "youden")
    y_val, p_val = _rows(run, "val")
    val_pos, val_score = y_val == run.positive, p_val[:, run.positive]
    j = {t: (val_score[val_pos] >= t).mean() - (val_score[~val_pos] >= t).mean() for t in np.unique(val_score)}
    best = max(j.values())
    assert out["threshold"] == max(t for t, v in j.items() if v == best)
    assert out["preset"] == "youden" and out["chosen_on"] == "val" and out["split"] == "test"
    assert "chosen on the val split" in out["note"] and "applied to the test split" in out["note"]

    y, proba = _rows(run, "test")
    called, is_pos = proba[:, run.positive] >= out["threshold"], y == run.positive
    tn, fp, fn, tp = confusion_matrix(is_pos, called, labels=[False, True]).ravel()
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (tp, fp, tn, fn)
    assert out["chosen_on_metrics"]["tp"] == int((val_pos & (val_score >= out["threshold"])).sum())

    screening = run_operating_point(run, "sensitivity95")
    assert screening["chosen_on_metrics"]["sensitivity"] >= 0.95
    hand = run_operating_point(run, 0.25)
    assert hand["preset"] is None and hand["label"] == "Custom" and hand["threshold"] == 0.25
