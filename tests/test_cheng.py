"""Cheng et al.'s Table 1 (engine.cheng): the configs of a backbone x augmentation comparison, the per-class scores
against scikit-learn, the bootstrap intervals against an independent numpy bootstrap, the change augmentation makes,
wall time and parameter counts, on two tiny backbones with and without augmentation."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_RUN
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

import engine
from engine.cheng import ALL_CLASSES, backbone_configs, class_order, improved, table1_view
from engine.models.names import BACKBONES

#: The comparison the tests train, at depth 0: the tiny experiment's AlexNet with and without augmentation (without:
#: the selection's depth-0 run) and ResNet-18 without it only (a backbone with one side: no change, in no pair).
CHENG_BACKBONES, CHENG_DEPTH = ("alexnet", "resnet18"), 0
N_BOOT, SEED = 1000, 0


@pytest.fixture(scope="session")
def cheng_runs(trained_selection) -> list[engine.Run]:
    """The three runs of the tiny comparison (alexnet without and with augmentation, resnet18 without), trained once."""
    base = engine.RunConfig(**TINY_RUN)
    configs = [*backbone_configs(base, ["alexnet"], [CHENG_DEPTH]),
               *backbone_configs(base, ["resnet18"], [CHENG_DEPTH], augment=(False,))]
    return [row.run for row in engine.run_sweep(configs)]


def _test_split(run: engine.Run) -> pd.DataFrame:
    """The run's test rows, read from its predictions file."""
    df = pd.read_csv(run.dir / "predictions.csv", keep_default_na=False)
    return df[df["split"] == "test"].reset_index(drop=True)


def _numpy_bootstrap(y: np.ndarray, pred: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """Accuracy and class c's precision / recall / F1 on each resample of ``bootstrap_ci``'s draw, by plain counting."""
    idx = np.random.default_rng(SEED).integers(0, len(y), size=(N_BOOT, len(y)))
    t, p = y[idx] == c, pred[idx] == c
    tp, fp, fn = (t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"accuracy": (y[idx] == pred[idx]).mean(1), "precision": tp / (tp + fp), "recall": tp / (tp + fn),
                "F1": 2 * tp / (2 * tp + fp + fn)}


def _percentiles(draws: np.ndarray) -> np.ndarray:
    draws = draws[np.isfinite(draws)]
    return np.percentile(draws, [2.5, 97.5]) if len(draws) else np.array([np.nan, np.nan])


def test_configs_cover_every_backbone_and_augmentation_on_one_split():
    base = engine.RunConfig(**TINY_RUN)
    configs = backbone_configs(base, ["alexnet", "resnet18"], [5])
    assert [(c.backbone, c.augment, c.depth) for c in configs] == [("alexnet", False, 5), ("alexnet", True, 5),
                                                                   ("resnet18", False, 5), ("resnet18", True, 5)]
    assert [c.head_width for c in configs] == [16, 16, None, None]  # the fc6/fc7 width is AlexNet/VGG's only
    for c in configs:  # same data, seed and split: only backbone, augmentation (and the head) differ
        assert c.replace(backbone="alexnet", augment=False, head_width=16) == base.replace(depth=5)
    folds = backbone_configs(base.replace(folds=3), ["alexnet"], [0, 5], augment=(True,))
    assert [(c.depth, c.fold) for c in folds] == [(0, 0), (0, 1), (0, 2), (5, 0), (5, 1), (5, 2)]


def test_an_unknown_backbone_names_the_valid_ones():
    with pytest.raises(engine.ConfigError) as err:
        backbone_configs(engine.RunConfig(**TINY_RUN), ["alexnet", "resnet9000"], [5])
    assert "'resnet9000'" in str(err.value) and all(b in str(err.value) for b in BACKBONES)


def test_per_class_scores_are_sklearns(cheng_runs):
    table = engine.augmentation_table(cheng_runs)
    assert len(table) == len(cheng_runs) * (1 + 3 * len(cheng_runs[0].classes))
    for run in cheng_runs:
        mine = table[table["run"] == run.id]
        test = _test_split(run)
        y, pred = test["y"].to_numpy(), test["pred"].to_numpy()
        acc = mine[mine["figure"] == "accuracy"]
        assert acc["class"].tolist() == [ALL_CLASSES] and acc["value"].iloc[0] == pytest.approx(accuracy_score(y, pred))
        precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=range(len(run.classes)),
                                                                   zero_division=np.nan)
        for figure, expected in (("precision", precision), ("recall", recall), ("F1", f1)):
            rows = mine[mine["figure"] == figure].set_index("class")
            assert rows.index[0] == run.classes[run.positive] == "covid"  # Cheng's positive class first
            got = rows.loc[list(run.classes), "value"].to_numpy(dtype=float)
            np.testing.assert_allclose(got, expected, equal_nan=True)
        assert (mine["n_test"] == len(test)).all()


def test_intervals_are_an_independent_numpy_bootstrap(cheng_runs):
    table = engine.augmentation_table(cheng_runs, n_boot=N_BOOT, seed=SEED)
    for run in cheng_runs:
        test = _test_split(run)
        y, pred = test["y"].to_numpy(), test["pred"].to_numpy()
        mine = table[table["run"] == run.id].set_index(["figure", "class"])
        for c, name in enumerate(run.classes):
            draws = _numpy_bootstrap(y, pred, c)
            for figure in ("precision", "recall", "F1"):
                low, high = _percentiles(draws[figure])
                assert mine.loc[(figure, name), ["low", "high"]].to_numpy(dtype=float) == pytest.approx(
                    [low, high], nan_ok=True)
        low, high = _percentiles(_numpy_bootstrap(y, pred, 0)["accuracy"])
        assert mine.loc[("accuracy", ALL_CLASSES), ["low", "high"]].tolist() == pytest.approx([low, high])
    defined = table.dropna(subset=["value", "low", "high"])
    assert len(defined) and ((defined["low"] <= defined["value"] + 1e-12)
                             & (defined["value"] <= defined["high"] + 1e-12)).all()


def test_the_change_is_with_minus_without_with_a_paired_interval(cheng_runs):
    table = engine.augmentation_table(cheng_runs)
    effect = engine.augmentation_effect(cheng_runs)
    assert set(effect["backbone"]) == {"alexnet"}  # resnet18 has no run with augmentation
    values = table.set_index(["backbone", "augment", "figure", "class"])["value"]
    assert len(effect) == len(table) // 3
    for row in effect.to_dict("records"):
        without = values[(row["backbone"], False, row["figure"], row["class"])]
        with_ = values[(row["backbone"], True, row["figure"], row["class"])]
        assert [row["without"], row["with"]] == pytest.approx([without, with_], nan_ok=True)
        assert row["change"] == pytest.approx(with_ - without, nan_ok=True)
    # the accuracy change's interval: the same resamples of the same test images for both runs
    off, on = (next(r for r in cheng_runs if r.config.backbone == "alexnet" and r.config.augment == a)
               for a in (False, True))
    a, b = _test_split(off), _test_split(on)
    assert a["file"].tolist() == b["file"].tolist()
    diff = (_numpy_bootstrap(b["y"].to_numpy(), b["pred"].to_numpy(), 0)["accuracy"]
            - _numpy_bootstrap(a["y"].to_numpy(), a["pred"].to_numpy(), 0)["accuracy"])
    row = effect[(effect["backbone"] == "alexnet") & (effect["figure"] == "accuracy")].iloc[0]
    assert [row["low"], row["high"]] == pytest.approx(list(np.percentile(diff, [2.5, 97.5])))
    acc = effect[effect["figure"] == "accuracy"]
    assert improved(effect) == ((acc["change"] > 0).sum(), 1, pytest.approx(acc["change"].mean()))


def test_wall_time_and_parameters_come_from_the_runs(cheng_runs):
    table = engine.augmentation_table(cheng_runs)
    for run in cheng_runs:
        row = table[table["run"] == run.id].iloc[0]
        result = json.loads((run.dir / "result.json").read_text())
        assert row["seconds"] == result["seconds"] and row["epochs"] == result["epochs_run"]
        assert row["parameters"] == sum(p.numel() for p in run.load_model().parameters())
        assert (row["backbone"], row["augment"], row["depth"]) == (run.config.backbone, run.config.augment,
                                                                   CHENG_DEPTH)


def test_table1_view_shows_without_with_and_the_change(cheng_runs):
    table, effect = engine.augmentation_table(cheng_runs), engine.augmentation_effect(cheng_runs)
    view = table1_view(table, effect, "normal")
    assert view[["backbone", "augmentation"]].values.tolist() == [
        ["alexnet", "without"], ["alexnet", "with"], ["alexnet", "change"], ["resnet18", "without"]]
    alex = table[(table["backbone"] == "alexnet") & ~table["augment"]].set_index(["figure", "class"])
    cell = view.iloc[0]["recall"]
    value, low, high = alex.loc[("recall", "normal"), ["value", "low", "high"]]
    assert cell == f"{value:.3f} [{low:.3f}, {high:.3f}]"
    change = effect[(effect["backbone"] == "alexnet") & (effect["figure"] == "accuracy")].iloc[0]
    assert view.iloc[2]["accuracy"].startswith(f"{change['change']:+.3f} [")
    seconds = [json.loads((r.dir / "result.json").read_text())["seconds"] for r in cheng_runs[:2]]  # alexnet off, on
    assert view["seconds"].tolist()[:3] == pytest.approx([round(seconds[0], 1), round(seconds[1], 1),
                                                          round(seconds[1] - seconds[0], 1)])
    assert class_order(cheng_runs[0])[0] == "covid"
