"""Evaluation: metric values against scikit-learn and a hand-worked case, bootstrap CIs, curves and the run wrappers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from engine import evaluation
from engine.errors import ConfigError, DataError
from engine.evaluation import (
    METRICS,
    bootstrap_ci,
    confusion,
    depth_curve,
    evaluate_run,
    metric_table,
    per_class_report,
    pr_curves,
    resampled_metrics,
    roc_curves,
)

CLASSES3 = ("covid", "normal", "pneumonia")


def _predictions(n: int, n_classes: int, seed: int, skill: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities that favour the true class with probability ``skill``, and their argmax."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 2.0 * (rng.random(n) < skill)
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba.argmax(1), proba


def test_metric_table_matches_sklearn_one_vs_rest() -> None:
    y, pred, proba = _predictions(300, 3, seed=1)
    pos = 2
    got = metric_table(y, pred, proba, CLASSES3, pos)
    t, p = y == pos, pred == pos
    expected = {
        "ACC": accuracy_score(y, pred),
        "sensitivity": recall_score(t, p),
        "specificity": recall_score(~t, ~p),
        "PPV": precision_score(t, p),
        "NPV": precision_score(~t, ~p),
        "F1": f1_score(t, p),
        "AUC": roc_auc_score(t, proba[:, pos]),
    }
    assert list(got) == list(METRICS)
    assert got == pytest.approx(expected)


def test_metric_table_hand_worked_2x2() -> None:
    # TP=3 (0.9, 0.8, 0.7), FP=2 (0.6, 0.55), FN=1 (0.2), TN=4 (0.45, 0.4, 0.3, 0.1), positive class 1.
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.45, 0.4, 0.3, 0.1])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = (score > 0.5).astype(int)
    got = metric_table(y, pred, np.c_[1 - score, score], ("normal", "covid"), 1)
    # AUC: the three high positives beat all 6 negatives, 0.2 beats only 0.1 -> 19 of 24 pairs.
    expected = {"ACC": 7 / 10, "sensitivity": 3 / 4, "specificity": 4 / 6, "PPV": 3 / 5, "NPV": 4 / 5,
                "F1": 2 * 3 / (2 * 3 + 2 + 1), "AUC": 19 / 24}
    assert got == pytest.approx(expected)


def test_metric_table_undefined_is_nan_and_bad_shapes_raise() -> None:
    y = np.zeros(5, dtype=int)  # no positive image: sensitivity, F1 and AUC are undefined
    got = metric_table(y, y, np.c_[np.ones(5), np.zeros(5)], ("normal", "covid"), 1)
    assert np.isnan(got["sensitivity"]) and np.isnan(got["F1"]) and np.isnan(got["AUC"])
    assert got["ACC"] == 1.0 and got["specificity"] == 1.0
    with pytest.raises(DataError, match="line up"):
        metric_table(y, y[:4], np.zeros((5, 2)), ("normal", "covid"), 1)
    with pytest.raises(DataError, match="empty"):
        metric_table(y[:0], y[:0], np.zeros((0, 2)), ("normal", "covid"), 1)


def test_resampled_metrics_equal_metric_table_on_each_resample() -> None:
    y, pred, proba = _predictions(40, 3, seed=2)
    pos = 0
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 40, size=(6, 40))
    indices[0] = np.flatnonzero(y != pos)[0]  # a resample without any positive image
    dist = resampled_metrics(y, pred, proba[:, pos], pos, indices)
    for b, idx in enumerate(indices):
        expected = metric_table(y[idx], pred[idx], proba[idx], CLASSES3, pos)
        got = {name: dist[name][b] for name in METRICS}
        assert got == pytest.approx(expected, nan_ok=True)
    assert np.isnan(dist["sensitivity"][0]) and np.isnan(dist["AUC"][0])


def _fixed_accuracy(n: int, acc: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    wrong = rng.permutation(n) < round(n * (1 - acc))
    pred = np.where(wrong, 1 - y, y)
    score = np.clip(pred * 0.6 + rng.random(n) * 0.4, 0, 1)
    return y, pred, np.c_[1 - score, score]


def test_bootstrap_ci_contains_value_and_narrows_with_more_data() -> None:
    widths = {}
    for n in (50, 2000):
        y, pred, proba = _fixed_accuracy(n, 0.8, seed=n)
        ci = bootstrap_ci(y, pred, proba, ("normal", "covid"), 1, n_boot=500, seed=0)
        assert list(ci.columns) == ["metric", "value", "low", "high"]
        assert list(ci["metric"]) == list(METRICS)
        assert ((ci["low"] <= ci["value"]) & (ci["value"] <= ci["high"])).all()
        acc = ci.set_index("metric").loc["ACC"]
        assert acc["value"] == pytest.approx(0.8)
        widths[n] = acc["high"] - acc["low"]
    # Binomial standard error ratio sqrt(2000 / 50) ~ 6.3: the interval must shrink a lot, not just a little.
    assert widths[2000] < widths[50] / 4


def test_bootstrap_ci_matches_sklearn_percentiles_and_skips_undefined_resamples() -> None:
    # One positive among 12 images: about a third of resamples draw no positive and have no sensitivity.
    y = np.array([1] + [0] * 11)
    pred = np.array([1, 1] + [0] * 10)
    score = np.linspace(0.9, 0.1, 12)
    proba = np.c_[1 - score, score]
    ci = bootstrap_ci(y, pred, proba, ("normal", "covid"), 1, n_boot=300, seed=7).set_index("metric")
    # Independent reference: the same resamples scored one by one with scikit-learn.
    indices = np.random.default_rng(7).integers(0, 12, size=(300, 12))
    sens = np.array([recall_score(y[i], pred[i], zero_division=np.nan) if y[i].any() else np.nan for i in indices])
    acc = np.array([accuracy_score(y[i], pred[i]) for i in indices])
    assert np.isnan(sens).any()
    assert ci.loc["sensitivity", ["low", "high"]].tolist() == pytest.approx(np.nanpercentile(sens, [2.5, 97.5]))
    assert ci.loc["ACC", ["low", "high"]].tolist() == pytest.approx(np.percentile(acc, [2.5, 97.5]))
    with pytest.raises(ConfigError):
        bootstrap_ci(y, pred, proba, ("normal", "covid"), 1, alpha=1.5)


def test_confusion_and_per_class_report() -> None:
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2])
    counts, normalised = confusion(y, pred, 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 1, 1], [1, 0, 3]])
    np.testing.assert_allclose(normalised, [[2 / 3, 1 / 3, 0], [0, 1 / 2, 1 / 2], [1 / 4, 0, 3 / 4]])
    report = per_class_report(y, pred, CLASSES3)
    precision = np.array([2 / 3, 1 / 2, 3 / 4])
    recall = np.array([2 / 3, 1 / 2, 3 / 4])
    assert list(report["class"]) == list(CLASSES3)
    np.testing.assert_allclose(report["precision"], precision)
    np.testing.assert_allclose(report["recall"], recall)
    np.testing.assert_allclose(report["F1"], 2 * precision * recall / (precision + recall))
    np.testing.assert_array_equal(report["support"], [3, 2, 4])


def test_roc_and_pr_curves_equal_sklearn_and_skip_absent_classes() -> None:
    y, _, proba = _predictions(60, 3, seed=4)
    roc, pr = roc_curves(y, proba, CLASSES3), pr_curves(y, proba, CLASSES3)
    assert list(roc) == list(CLASSES3) == list(pr)
    for c, name in enumerate(CLASSES3):
        fpr, tpr, _ = roc_curve(y == c, proba[:, c])
        np.testing.assert_allclose(roc[name][0], fpr)
        np.testing.assert_allclose(roc[name][1], tpr)
        assert roc[name][2] == pytest.approx(roc_auc_score(y == c, proba[:, c]))
        precision, recall, _ = precision_recall_curve(y == c, proba[:, c])
        np.testing.assert_allclose(pr[name][0], precision)
        np.testing.assert_allclose(pr[name][1], recall)
        assert pr[name][2] == pytest.approx(average_precision_score(y == c, proba[:, c]))
    y_no_pneumonia = np.where(y == 2, 0, y)
    assert "pneumonia" not in roc_curves(y_no_pneumonia, proba, CLASSES3)
    assert "pneumonia" not in pr_curves(y_no_pneumonia, proba, CLASSES3)


@dataclass
class FakeRun:
    """The Run attributes evaluation uses (engine/runs.py is not needed for the wrapper logic)."""

    dir: Path
    predictions: pd.DataFrame
    classes: tuple[str, ...] = CLASSES3
    positive: int = 0
    id: str = "run"
    config: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(backbone="alexnet", depth=5))

    def artifact(self, name: str) -> Path:
        return self.dir / "artifacts" / name


def _fake_run(tmp_path: Path, seed: int, skill: float = 0.7, **kw: object) -> FakeRun:
    y, pred, proba = _predictions(90, 3, seed=seed, skill=skill)
    split = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 40)
    pred[split != "test"] = (y[split != "test"] + 1) % 3  # wrong everywhere but test: a wrapper using them fails
    df = pd.DataFrame({"file": [f"{i}.png" for i in range(90)], "split": split, "y": y, "pred": pred})
    for c, name in enumerate(CLASSES3):
        df[f"prob_{name}"] = proba[:, c]
    return FakeRun(tmp_path / f"run{seed}", df, **kw)


def test_evaluate_run_uses_test_split_is_json_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    run = _fake_run(tmp_path, seed=5)
    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate_run(run, n_boot=100)
    json.dumps(first, allow_nan=False)
    second = evaluate_run(run, n_boot=100)
    assert len(calls) == 1 and second == first
    test = run.predictions[run.predictions["split"] == "test"]
    proba = test[[f"prob_{c}" for c in CLASSES3]].to_numpy()
    expected = metric_table(test["y"].to_numpy(), test["pred"].to_numpy(), proba, CLASSES3, 0)
    assert {m["metric"]: m["value"] for m in first["metrics"]} == pytest.approx(expected)
    assert first["n_test"] == 40 and np.sum(first["confusion"]["counts"]) == 40
    fpr, tpr, _ = roc_curve(test["y"] == 1, proba[:, 1])
    np.testing.assert_allclose(first["roc"]["normal"]["fpr"], fpr)
    np.testing.assert_allclose(first["roc"]["normal"]["tpr"], tpr)
    evaluate_run(run, n_boot=50)  # another parameter is another artifact
    assert len(calls) == 2


def test_depth_curve_one_row_per_run_with_best_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    runs = [
        _fake_run(tmp_path, seed=10 + d, skill=skill, id=f"r{d}", config=SimpleNamespace(backbone="vgg16", depth=d))
        for d, skill in ((3, 0.5), (0, 0.3), (2, 0.95))
    ]
    df = depth_curve(runs, "ACC")
    assert list(df["depth"]) == [0, 2, 3]
    for row in df.itertuples():
        run = next(r for r in runs if r.id == row.run)
        test = run.predictions[run.predictions["split"] == "test"]
        assert row.value == pytest.approx(accuracy_score(test["y"], test["pred"]))
        assert row.low <= row.value <= row.high
    assert df["best"].tolist() == (df["value"] == df["value"].max()).tolist()
    assert df.loc[df["best"], "depth"].item() == 2
    with pytest.raises(ConfigError, match="Unknown metric"):
        depth_curve(runs, "accuracy")
