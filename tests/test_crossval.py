"""k-fold cross-validation across runs (engine.crossval) against scikit-learn and numpy on the runs' own predictions.

The ``three_fold_selection`` fixture (3 folds at depths 0 and 1 of tiny built-in data) is shared with the page tests.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import trained
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score, roc_curve

import engine
from engine.crossval import (
    MissingFoldsError,
    fold_depth_curve,
    fold_epoch_curve,
    fold_metric_summary,
    fold_metrics,
    fold_roc,
    fold_runs,
    fold_spread,
    require_folds,
)

#: A tiny 3-fold experiment: 14 phantoms per class leave 3 test images per class and at least 3 patient groups per
#: class in each fold; 2 epochs at 64 px from scratch train the 6 runs in well under a minute on 2 cores.
FOLD_RUN = dict(data="builtin", builtin_per_class=14, init="scratch", image_size=64, head_width=16, epochs=2,
                patience=0, batch_size=16, lr=1e-3, folds=3)
FOLD_DEPTHS = (0, 1)


@pytest.fixture(scope="session")
def three_fold_selection():
    """A Selection of 3 folds at depths 0 and 1 whose 6 runs are trained in the session's cache."""
    return trained(FOLD_RUN, FOLD_DEPTHS)


@pytest.fixture(scope="module")
def folds(three_fold_selection) -> dict[int, list[engine.Run]]:
    """depth -> the runs of its 3 folds, looked up one by one with get_run."""
    out: dict[int, list[engine.Run]] = {}
    for cfg in three_fold_selection.configs():
        out.setdefault(cfg.depth, []).append(engine.get_run(cfg))
    return out


def _test_rows(run: engine.Run) -> pd.DataFrame:
    """The run's test rows, read straight from its predictions file."""
    df = pd.read_csv(run.dir / "predictions.csv", keep_default_na=False)
    return df[df["split"] == "test"]


def _positive_scores(run: engine.Run) -> tuple[np.ndarray, np.ndarray]:
    rows = _test_rows(run)
    positive = run.classes[run.positive]
    return (rows["y"] == run.positive).to_numpy(), rows[f"prob_{positive}"].to_numpy(dtype=float)


def test_selection_makes_a_config_per_depth_and_fold():
    from dashboard.state import Selection

    sel = Selection(engine.RunConfig(**FOLD_RUN), (0, 2, 5))
    assert sel.folds == 3
    assert [(c.depth, c.fold, c.folds) for c in sel.configs()] == [(d, f, 3) for d in (0, 2, 5) for f in range(3)]
    holdout = Selection(engine.RunConfig(**{**FOLD_RUN, "folds": 1}), (0, 5))
    assert [(c.depth, c.fold, c.folds) for c in holdout.configs()] == [(0, 0, 1), (5, 0, 1)]


def test_fold_runs_finds_every_fold_and_the_test_split_is_shared(three_fold_selection, folds):
    for depth, runs in folds.items():
        found = fold_runs(three_fold_selection.config.replace(depth=depth, fold=2))
        assert [r.id for r in found] == [r.id for r in runs]
        assert [r.config.fold for r in found] == [0, 1, 2]
        assert [r.id for r in fold_runs(runs[1])] == [r.id for r in runs]
        files = [_test_rows(r)["file"].tolist() for r in runs]
        assert files[0] == files[1] == files[2] and len(files[0]) == 9
        val = [set(r.predictions.loc[r.predictions["split"] == "val", "file"]) for r in runs]
        assert not (val[0] & val[1]) and not (val[1] & val[2]) and not (val[0] & val[2])  # the folds are disjoint


def test_fold_roc_equals_sklearn_per_fold_and_numpy_over_folds(folds):
    runs = folds[0]
    roc = fold_roc(runs)
    aucs = []
    for run, fold in zip(runs, roc["folds"]):
        y, score = _positive_scores(run)
        fpr, tpr, _ = roc_curve(y, score)
        np.testing.assert_allclose(fold["fpr"], fpr)
        np.testing.assert_allclose(fold["tpr"], tpr)
        assert fold["auc"] == pytest.approx(roc_auc_score(y, score))
        assert (fold["fold"], fold["run"]) == (run.config.fold, run.id)
        aucs.append(roc_auc_score(y, score))
    assert roc["positive"] == "covid" and roc["n_folds"] == 3 and roc["n_test"] == 9 and roc["ddof"] == 1
    assert roc["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert roc["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert (roc["auc"]["min"], roc["auc"]["max"], roc["auc"]["n"]) == (pytest.approx(min(aucs)),
                                                                       pytest.approx(max(aucs)), 3)


def test_fold_metrics_and_their_summary(folds):
    runs = folds[1]
    table = fold_metrics(runs)
    assert list(table["fold"]) == [0, 1, 2] and list(table["run"]) == [r.id for r in runs]
    for run, row in zip(runs, table.to_dict("records")):
        rows = _test_rows(run)
        y, pred = rows["y"].to_numpy(), rows["pred"].to_numpy()
        is_pos, score = _positive_scores(run)
        assert row["AUC"] == pytest.approx(roc_auc_score(is_pos, score))
        assert row["ACC"] == pytest.approx(accuracy_score(y, pred))
        assert row["sensitivity"] == pytest.approx(recall_score(is_pos, pred == run.positive))
        assert row["specificity"] == pytest.approx(recall_score(~is_pos, pred != run.positive))
        assert row["F1"] == pytest.approx(f1_score(is_pos, pred == run.positive, zero_division=0))
        assert row["n_test"] == len(y) and row["best_epoch"] == run.result["best_epoch"]
    summary = fold_metric_summary(table)
    assert list(summary.index) == ["mean", "sd", "min", "max", "n"]
    for metric in summary.columns:
        values = table[metric].to_numpy(dtype=float)
        defined = values[np.isfinite(values)]
        assert summary.loc["n", metric] == len(defined)
        if len(defined) >= 2:
            assert summary.loc["mean", metric] == pytest.approx(np.mean(defined))
            assert summary.loc["sd", metric] == pytest.approx(np.std(defined, ddof=1))
            assert summary.loc["max", metric] == pytest.approx(np.max(defined))


def test_fold_depth_curve_is_the_fold_mean_with_its_spread(folds):
    curve = fold_depth_curve([folds[d] for d in (1, 0)], "AUC")  # rows come out sorted by depth
    assert list(curve["depth"]) == [0, 1] and list(curve["folds"]) == [3, 3]
    means = []
    for depth, row in zip((0, 1), curve.to_dict("records")):
        aucs = [roc_auc_score(*_positive_scores(r)) for r in folds[depth]]
        np.testing.assert_allclose(row["values"], aucs)
        assert row["value"] == pytest.approx(np.mean(aucs))
        assert row["sd"] == pytest.approx(np.std(aucs, ddof=1))
        assert (row["min"], row["max"]) == (pytest.approx(min(aucs)), pytest.approx(max(aucs)))
        assert (row["low"], row["high"]) == (pytest.approx(np.mean(aucs) - np.std(aucs, ddof=1)),
                                             pytest.approx(np.mean(aucs) + np.std(aucs, ddof=1)))
        assert row["runs"] == [r.id for r in folds[depth]]
        means.append(np.mean(aucs))
    assert list(curve["best"]) == [means[0] >= means[1], means[0] < means[1]]
    acc = fold_depth_curve([folds[0]], "ACC")
    accs = [accuracy_score(_test_rows(r)["y"], _test_rows(r)["pred"]) for r in folds[0]]
    assert acc.loc[0, "value"] == pytest.approx(np.mean(accs))
    with pytest.raises(engine.ConfigError, match="Unknown metric"):
        fold_depth_curve([folds[0]], "Dice")


def test_missing_or_mixed_folds_are_refused_with_what_to_do(folds):
    a, b, c = folds[0]
    with pytest.raises(MissingFoldsError, match=r"fold 1 \(numbered from 0\) is not trained yet.*Home"):
        require_folds([a, None, c])
    with pytest.raises(MissingFoldsError, match=r"folds 0, 2 .*--folds 3 --depths 0"):
        fold_roc([None, b, None])
    with pytest.raises(MissingFoldsError, match="None of the 3 folds"):
        fold_metrics([None, None, None])
    with pytest.raises(engine.ConfigError, match="given as fold 1"):
        require_folds([a, c, b])
    with pytest.raises(engine.ConfigError, match="pass one per fold"):
        require_folds([a, b])
    with pytest.raises(engine.ConfigError, match="not a fold of the same experiment"):
        require_folds([a, folds[1][1], c])
    with pytest.raises(MissingFoldsError):
        fold_depth_curve([folds[1], [a, b, None]], "AUC")
    assert require_folds([a, b, c]) == [a, b, c]


def test_fold_spread_by_hand():
    s = fold_spread([0.8, 0.9, float("nan"), 1.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.9) and s["sd"] == pytest.approx(0.1)  # sqrt(0.02 / 2)
    assert (s["min"], s["max"]) == (0.8, 1.0)
    one = fold_spread([0.5, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.5 and np.isnan(one["sd"])
    none = fold_spread([])
    assert none["n"] == 0 and all(np.isnan(none[k]) for k in ("mean", "sd", "min", "max"))


def _fake_fold(fold: int, history: dict | None = None, files=("a.png", "b.png", "c.png", "d.png"),
               score=(0.9, 0.2, 0.6, 0.4)) -> SimpleNamespace:
    """A stand-in run of fold ``fold`` of a 3-fold experiment, with two classes and four test images."""
    predictions = pd.DataFrame({"file": list(files), "split": "test", "y": [1, 0, 1, 0], "pred": [1, 0, 1, 1],
                                "prob_normal": 1 - np.asarray(score), "prob_covid": list(score)})
    return SimpleNamespace(id=f"run{fold}", config=engine.RunConfig(folds=3, fold=fold),
                           meta={"data_fingerprint": "fp"}, classes=("normal", "covid"), positive=1,
                           predictions=predictions, history=pd.DataFrame(history or {"epoch": [1]}),
                           result={"best_epoch": 1})


def test_fold_epoch_curve_averages_over_the_folds_still_training():
    runs = [_fake_fold(0, {"epoch": [1, 2, 3], "val_loss": [1.0, 0.8, 0.6]}),
            _fake_fold(1, {"epoch": [1, 2], "val_loss": [0.9, 0.7]}),  # stopped early after epoch 2
            _fake_fold(2, {"epoch": [1, 2, 3], "val_loss": [1.1, 0.9, 0.5]})]
    curve = fold_epoch_curve(runs, "val_loss")
    assert list(curve.columns) == ["epoch", "fold_0", "fold_1", "fold_2", "mean", "sd", "n"]
    np.testing.assert_allclose(curve["mean"], [1.0, 0.8, 0.55])
    np.testing.assert_allclose(curve["sd"], [0.1, 0.1, np.sqrt(0.005)])  # sd of (0.6, 0.5), ddof 1
    assert list(curve["n"]) == [3, 3, 2] and np.isnan(curve.loc[2, "fold_1"])
    with pytest.raises(engine.ConfigError, match="No history column 'val_f1'"):
        fold_epoch_curve(runs, "val_f1")


def test_fold_roc_by_hand_and_a_test_split_that_differs():
    runs = [_fake_fold(0), _fake_fold(1, score=(0.9, 0.7, 0.6, 0.4)), _fake_fold(2, score=(0.3, 0.2, 0.6, 0.7))]
    roc = fold_roc(runs)
    # covid (y = 1) is images a and c, the negatives b and d: fold 0 ranks both positives above both negatives
    # (AUC 1); fold 1 gets one of the four pairs wrong (b at 0.7 above c at 0.6: AUC 3/4); fold 2 two (d above both).
    assert [f["auc"] for f in roc["folds"]] == pytest.approx([1.0, 0.75, 0.5])
    assert roc["auc"]["mean"] == pytest.approx(0.75) and roc["auc"]["sd"] == pytest.approx(0.25)
    moved = [_fake_fold(0), _fake_fold(1, files=("a.png", "b.png", "c.png", "e.png")), _fake_fold(2)]
    with pytest.raises(engine.DataError, match="tested on different images"):
        fold_roc(moved)
