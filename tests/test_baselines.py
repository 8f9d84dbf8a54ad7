"""Classical baselines: the SVM (against scikit-learn's own RBF SVC), deep features, caching and the Table 1 wrapper."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from engine.config import RunConfig
from engine import baselines
from engine.baselines import (
    C_GRID,
    METHODS,
    compare_methods,
    deep_features,
    lbp_features,
    run_deep_features,
    svm_baseline,
)
from engine.errors import DataError
from engine.evaluation import METRICS, bootstrap_ci, metric_table
from engine.lbp import lbp_histograms
from engine.models.backbones import StagedNet, stage


def _blobs(n: int, seed: int, d: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return rng.normal(size=(n, d)) + 3.0 * y[:, None], y


def test_svm_separates_an_easy_problem() -> None:
    train_x, train_y = _blobs(60, seed=0)
    test_x, test_y = _blobs(40, seed=1)
    pred, proba, info = svm_baseline(train_x, train_y, test_x, seed=0)
    assert (pred == test_y).mean() > 0.9
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(pred, proba.argmax(1))
    assert info["C"] in C_GRID and info["cv_folds"] == 5 and info["cv_note"] == "" and info["n_train"] == 60


def test_svm_chooses_c_on_training_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class SpyGridSearchCV(GridSearchCV):
        def fit(self, X, y=None, **params):
            seen.append(np.asarray(X).shape)
            return super().fit(X, y, **params)

    monkeypatch.setattr(baselines, "GridSearchCV", SpyGridSearchCV)
    rng = np.random.default_rng(2)
    train_x, train_y = _blobs(50, seed=2)
    train_x[:, :5] = rng.normal(size=(50, 5))  # harder, so that C matters
    test_a, _ = _blobs(30, seed=3)
    _, _, info_a = svm_baseline(train_x, train_y, test_a, seed=0)
    _, _, info_b = svm_baseline(train_x, train_y, rng.normal(size=(7, 10)) * 100, seed=0)
    assert seen == [(50, 50), (50, 50)]  # the kernel between training rows only
    assert info_a == info_b  # the test rows change nothing about the choice


def test_svm_search_equals_sklearn_rbf_svc_on_the_same_data() -> None:
    # Precomputing the kernel is a speed-up only: scikit-learn's own RBF SVC, with gamma="scale" taken on the
    # standardised training rows, must score every C identically.
    rng = np.random.default_rng(4)
    train_x, train_y = _blobs(40, seed=4, d=6)
    train_x[:, :4] = rng.normal(size=(40, 4))
    _, _, info = svm_baseline(train_x, train_y, train_x[:3], seed=1, cv=4)
    scaled = StandardScaler().fit_transform(train_x)
    gamma = 1 / (6 * scaled.var())
    reference = GridSearchCV(
        SVC(kernel="rbf", gamma=gamma), {"C": C_GRID}, scoring="balanced_accuracy",
        cv=StratifiedKFold(4, shuffle=True, random_state=1),
    ).fit(scaled, train_y)
    assert info["gamma"] == pytest.approx(gamma)
    np.testing.assert_allclose(info["cv_scores"], reference.cv_results_["mean_test_score"])
    assert len(set(info["cv_scores"])) > 1  # C matters on this problem
    assert info["C"] == reference.best_params_["C"]
    assert info["cv_score"] == pytest.approx(reference.best_score_)


def test_svm_lowers_folds_for_small_classes_and_pads_absent_classes() -> None:
    train_x, _ = _blobs(13, seed=5)
    train_y = np.array([0] * 10 + [2] * 3)
    train_x[10:] += 5
    pred, proba, info = svm_baseline(train_x, train_y, train_x[:4], cv=5, n_classes=3)
    assert info["cv_folds"] == 3 and "class 2 has only 3 training images" in info["cv_note"]
    assert proba.shape == (4, 3) and (proba[:, 1] == 0).all()
    assert set(pred) <= {0, 2}
    with pytest.raises(DataError, match="single training image"):
        svm_baseline(train_x[:11], np.array([0] * 10 + [1]), train_x[:2])
    with pytest.raises(DataError, match="at least two classes"):
        svm_baseline(train_x[:5], np.zeros(5, dtype=int), train_x[:2])


def _tiny_alexnet() -> StagedNet:
    torch.manual_seed(0)
    return stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 2, head_width=32).eval()


def _model_input(images: np.ndarray) -> torch.Tensor:
    """The model input written out independently: gray -> RGB in [0, 1] -> ImageNet normalisation."""
    x = torch.as_tensor(images, dtype=torch.float32).div(255).unsqueeze(1).repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_deep_features_batched_equal_one_forward_pass() -> None:
    model = _tiny_alexnet()
    images = np.random.default_rng(6).integers(0, 256, size=(5, 64, 64), dtype=np.uint8)
    got = deep_features(model, images, batch_size=2)
    with torch.no_grad():
        expected = torch.flatten(model.pool(model.forward_blocks(_model_input(images))), 1).numpy()
    assert got.shape == (5, 9216) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@dataclass
class FakeRun:
    """The Run attributes the baselines use (engine/runs.py is not needed for the wrapper logic)."""

    dir: Path
    predictions: pd.DataFrame
    _images: np.ndarray
    model: StagedNet
    classes: tuple[str, ...] = ("normal", "covid")
    positive: int = 1
    config: RunConfig = field(default_factory=RunConfig)

    def artifact(self, name: str) -> Path:
        return self.dir / "artifacts" / name

    def images(self, split: str) -> np.ndarray:
        return self._images[(self.predictions["split"] == split).to_numpy()]

    def load_model(self) -> StagedNet:
        return self.model


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    rng = np.random.default_rng(7)
    n = 48
    split = np.array(["train", "test", "val", "train"] * (n // 4))  # interleaved, so the order matters
    y = np.arange(n) // 2 % 2
    images = rng.integers(0, 120, size=(n, 64, 64), dtype=np.uint8)
    images[y == 1, 16:48, 16:48] += 120  # a bright square marks the positive class
    p_covid = np.clip(0.7 * y + rng.random(n) * 0.3, 0, 1)
    df = pd.DataFrame({"file": [f"{i}.png" for i in range(n)], "split": split, "y": y,
                       "pred": (p_covid > 0.5).astype(int), "prob_normal": 1 - p_covid, "prob_covid": p_covid})
    return FakeRun(tmp_path / "run", df, images, _tiny_alexnet())


def test_run_features_are_split_in_order_and_cached(run: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_deep, real_lbp = baselines.deep_features, baselines.lbp_histograms
    monkeypatch.setattr(baselines, "deep_features", lambda *a, **k: calls.append("deep") or real_deep(*a, **k))
    monkeypatch.setattr(baselines, "lbp_histograms", lambda *a, **k: calls.append("lbp") or real_lbp(*a, **k))
    deep, lbp = run_deep_features(run), lbp_features(run)
    assert calls == ["deep", "deep", "lbp", "lbp"]  # train, then test
    split = run.predictions["split"].to_numpy()
    expected_index = np.r_[np.flatnonzero(split == "train"), np.flatnonzero(split == "test")]
    for feats in (deep, lbp):
        np.testing.assert_array_equal(feats["index"], expected_index)
    np.testing.assert_allclose(lbp["test"], lbp_histograms(run.images("test")))
    np.testing.assert_allclose(deep["train"], deep_features(run.model, run.images("train")), rtol=1e-5, atol=1e-6)
    again_deep, again_lbp = run_deep_features(run), lbp_features(run)
    assert len(calls) == 4
    for key in ("train", "test", "index"):
        np.testing.assert_array_equal(again_deep[key], deep[key])
        np.testing.assert_array_equal(again_lbp[key], lbp[key])


def test_compare_methods_same_test_split_and_cached(run: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_svm = baselines.svm_baseline
    monkeypatch.setattr(baselines, "svm_baseline", lambda *a, **k: calls.append(1) or real_svm(*a, **k))
    table = compare_methods(run, n_boot=200)
    assert list(table["method"]) == list(METHODS) and len(calls) == 2
    assert list(table.columns[1:4]) == ["ACC", "ACC_low", "ACC_high"]
    test = run.predictions[run.predictions["split"] == "test"]
    y_test, proba_cnn = test["y"].to_numpy(), test[["prob_normal", "prob_covid"]].to_numpy()
    cnn = bootstrap_ci(y_test, test["pred"].to_numpy(), proba_cnn, run.classes, 1, n_boot=200).set_index("metric")
    row = table.set_index("method").loc["Fine-tuned CNN"]
    for m in METRICS:
        expected = cnn.loc[m, ["value", "low", "high"]].tolist()
        assert row[[m, f"{m}_low", f"{m}_high"]].tolist() == pytest.approx(expected, nan_ok=True)
    # The LBP row is the SVM trained on the train split's histograms and scored on the test split's.
    feats = lbp_features(run)
    train_y = run.predictions.loc[run.predictions["split"] == "train", "y"].to_numpy()
    pred, proba, info = real_svm(feats["train"], train_y, feats["test"], n_classes=2)
    lbp_row = table.set_index("method").loc["LBP + SVM"]
    expected = list(metric_table(y_test, pred, proba, run.classes, 1).values())
    assert lbp_row[list(METRICS)].tolist() == pytest.approx(expected, nan_ok=True)
    assert lbp_row["C"] == info["C"] and np.isnan(row["C"])
    again = compare_methods(run, n_boot=200)
    assert len(calls) == 2
    pd.testing.assert_frame_equal(again, table)
