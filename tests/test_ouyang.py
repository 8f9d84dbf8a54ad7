"""Ouyang et al.'s training and results: the attention term per batch, the eq. 5 ensemble run, Tables II and III."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
from torch import nn

import engine
from engine.config import RunConfig
from engine.crossval import fold_runs
from engine.dual import dual_predictions
from engine.ouyang import SIZE_GROUPS, size_table, variant_configs, variant_table

CLASSES = ("cap", "covid")


def _paper_w(r: float) -> float:
    """Eq. 5's weight of the uniform-sampling model, as printed in Ouyang et al. §III-E."""
    return 0.35 if (r < 0.001 or r > 0.030) else 0.96


def _frame(p_covid: list[float], split: list[str]) -> pd.DataFrame:
    p = np.asarray(p_covid)
    return pd.DataFrame({"file": [f"f{i}.nii.gz" for i in range(len(p))], "split": split, "y": [0, 1, 1, 0][: len(p)],
                         "pred": (p > 0.5).astype(int), "prob_cap": 1 - p, "prob_covid": p})


def test_dual_predictions_follow_eq5_by_hand():
    split = ["train", "val", "val", "test"]
    us, ss = _frame([0.2, 0.9, 0.6, 0.4], split), _frame([0.6, 0.3, 0.8, 0.1], split)
    ratios = np.array([0.0005, 0.01, 0.05, np.nan])
    out, weights = dual_predictions(us, ss, CLASSES, ratios)
    # w = 0.35, 0.96, 0.35 and 0.96 (unknown ratio: the middle weight); P = w P_US + (1 - w) P_SS
    expected = [0.35 * 0.2 + 0.65 * 0.6, 0.96 * 0.9 + 0.04 * 0.3, 0.35 * 0.6 + 0.65 * 0.8, 0.96 * 0.4 + 0.04 * 0.1]
    np.testing.assert_allclose(out["prob_covid"], expected)
    np.testing.assert_allclose(out["prob_cap"], 1 - np.array(expected))
    assert list(out["pred"]) == [1 if e > 0.5 else 0 for e in expected]
    assert list(out["dual_w"]) == [0.35, 0.96, 0.35, 0.96]
    assert weights["extreme"] == 0.35 and weights["middle"] == 0.96 and "fitted_extreme" in weights


def test_dual_predictions_refuse_members_of_other_images():
    a = _frame([0.2, 0.9], ["train", "test"])
    b = a.assign(file=["x.nii.gz", "y.nii.gz"])
    with pytest.raises(engine.LungLensError, match="same images"):
        dual_predictions(a, b, CLASSES, np.array([0.01, 0.01]))


class _Head(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(weight)


def test_attention_term_is_eq3_on_masked_positives_over_the_batch():
    from engine.training import _attention_term

    rng = np.random.default_rng(0)
    f = rng.uniform(0, 1, (3, 2, 4, 4)).astype(np.float32)
    w = np.array([[0.5, -1.0], [1.0, 0.3]], dtype=np.float32)   # class 1 (covid) is the positive class
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    masks[2, 1:3, 1:] = True
    labels, has = np.array([1, 1, 0]), np.array([True, False, True])  # only case 0 is a masked positive
    cfg = RunConfig(backbone="resnet18", attention=True)
    got = _attention_term(cfg, _Head(torch.from_numpy(w)), torch.from_numpy(f), torch.from_numpy(masks), labels, has, 1)
    # By hand for case 0: A = ReLU(w_1 . f), min-max to [0, 1], T = sigmoid(100 (A - 0.4)), eq. 3, / batch of 3.
    a = np.maximum(np.tensordot(w[1], f[0], axes=1), 0)
    a = (a - a.min()) / (a.max() - a.min())
    t = 1 / (1 + np.exp(-100 * (a - 0.4)))
    m = masks[0].astype(np.float64)
    expected = ((t - m) ** 2).sum() / (t.sum() + m.sum()) / 3
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_attention_refuses_a_multilayer_head():
    with pytest.raises(engine.ConfigError, match="linear layer"):
        engine.RunConfig(backbone="alexnet", attention=True)


def test_attention_needs_lesion_masks(tiny_folder, tmp_path):
    import shutil

    shutil.copytree(tiny_folder / "images", tmp_path / "images")  # the images without their masks
    cfg = engine.RunConfig(data=str(tmp_path), backbone="resnet18", init="scratch", image_size=64, epochs=1,
                           attention=True)
    with pytest.raises(engine.ConfigError, match="needs lesion masks"):
        engine.train_run(cfg)


def _test_rows(run) -> pd.DataFrame:
    return run.predictions[run.predictions["split"] == "test"]


def test_variant_table_matches_sklearn(ouyang_variants):
    table = variant_table(ouyang_variants).set_index("variant")
    assert list(table.index) == ["RN + US", "Attention RN + US", "Attention RN + SS", "Attention RN + DS"]
    for name, cfg in variant_configs(ouyang_variants).items():
        run = fold_runs(cfg)[0]
        rows = _test_rows(run)
        y, pred, p = rows["y"].to_numpy(), rows["pred"].to_numpy(), rows["prob_covid"].to_numpy()
        pos = run.positive
        assert table.loc[name, "ACC"] == pytest.approx(accuracy_score(y, pred))
        assert table.loc[name, "sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=pos))
        assert table.loc[name, "specificity"] == pytest.approx(recall_score(y, pred, pos_label=1 - pos))
        assert table.loc[name, "F1"] == pytest.approx(f1_score(y, pred, pos_label=pos))
        assert table.loc[name, "AUC"] == pytest.approx(roc_auc_score(y == pos, p))
        assert table.loc[name, "folds"] == 1 and np.isnan(table.loc[name, "AUC sd"])  # one fold: no sd


def test_dual_run_is_the_eq5_ensemble_of_its_members(ouyang_variants):
    from engine.data.arrays import mask_arrays

    dual = fold_runs(variant_configs(ouyang_variants)["Attention RN + DS"])[0]
    us, ss = (engine.load_run(dual.meta["members"][k]) for k in ("uniform", "size-balanced"))
    assert us.config.sampling == "uniform" and ss.config.sampling == "size-balanced" and us.config.attention
    lesion, lung, has_lesion, has_lung = mask_arrays(dual.dataset(), dual.config.image_size)
    ratios = np.where(has_lesion & has_lung,
                      (lesion & lung).sum(axis=(1, 2, 3)) / np.maximum(lung.sum(axis=(1, 2, 3)), 1), np.nan)
    np.testing.assert_allclose(dual.predictions["infection_ratio"], ratios, equal_nan=True)
    w = np.array([_paper_w(r) if np.isfinite(r) else 0.96 for r in ratios])
    expected = w * us.predictions["prob_covid"].to_numpy() + (1 - w) * ss.predictions["prob_covid"].to_numpy()
    np.testing.assert_allclose(dual.predictions["prob_covid"], expected, rtol=1e-6)
    assert dual.load_model() is not None and dual.history.equals(us.history)


def test_size_table_splits_the_test_cases_by_infection_ratio(ouyang_variants):
    ratios = engine.infection_ratios(engine.load_dataset("builtin-ct", per_class=10), 64)
    table = size_table(ouyang_variants, ratios)
    run = fold_runs(variant_configs(ouyang_variants)["RN + US"])[0]
    test = (run.predictions["split"] == "test").to_numpy()
    rows = _test_rows(run)
    for name, lo, hi in SIZE_GROUPS:
        inside = (ratios[test] >= lo) & (ratios[test] < hi)
        got = table[(table["variant"] == "RN + US") & (table["group"] == name)]
        if not inside.any():
            assert got.empty
            continue
        assert int(got["n"].iloc[0]) == int(inside.sum())
        y, pred = rows["y"].to_numpy()[inside], rows["pred"].to_numpy()[inside]
        assert got["ACC"].iloc[0] == pytest.approx(accuracy_score(y, pred))


def test_cli_ouyang_prints_both_tables(ouyang_variants, capsys):
    from engine.cli import main

    code = main(["ouyang", "--data", "builtin-ct", "--per-class", "10", "--init", "scratch", "--epochs", "1",
                 "--patience", "0", "--weight-decay", "0", "--scheduler", "plateau", "--folds", "1", "--depths", "2",
                 "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in out["variants"]] == ["RN + US", "Attention RN + US", "Attention RN + SS",
                                                        "Attention RN + DS"]
    assert {r["group"] for r in out["infection_size"]} <= {g for g, _, _ in SIZE_GROUPS}


def test_attention_effect_scores_consistency_by_hand(ouyang_variants):
    from engine.explain.volume import split_maps, volume_masks

    table = engine.attention_effect(ouyang_variants).set_index("model")
    assert list(table.index) == ["plain", "attention"]
    for name, attention in (("plain", False), ("attention", True)):
        run = engine.get_run(ouyang_variants.replace(attention=attention, sampling="uniform"))
        maps, masks = split_maps(run, "gradcam"), volume_masks(run)
        covered = [((m > 0.7) & les).sum() / les.sum()
                   for m, les, has in zip(maps, masks["lesion"], masks["has_lesion"]) if has and les.any()]
        assert table.loc[name, "consistency"] == pytest.approx(np.mean(covered))
        assert table.loc[name, "n_lesion"] == len(covered) and np.isnan(table.loc[name, "on_marker"])


@pytest.mark.parametrize("changes, message", [
    ({"backbone": "resnet18"}, "holds 3-D volumes"),
    ({"augment": True}, "apply to 2-D images"),
    ({"data": "builtin", "builtin_per_class": 20}, "takes 3-D volumes"),
])
def test_dimension_mismatches_are_refused_before_training(trained_ct, changes, message):
    cfg = trained_ct.config.replace(**changes)
    with pytest.raises(engine.ConfigError, match=message):
        engine.train_run(cfg)
    assert engine.get_run(trained_ct.config.replace(depth=0)) is not None  # what was cached stays


def test_cli_explain_report_of_a_ct_run_scores_in_3d(trained_ct, capsys):
    from engine.cli import main
    from engine.explain.volume import volume_localisation

    run = engine.get_run(trained_ct.config.replace(depth=2))
    assert main(["explain-report", "--run", run.id, "--methods", "gradcam", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    table = volume_localisation(run, "gradcam")
    assert rows[0]["method"] == "gradcam" and rows[0]["n_images"] == len(table)
    assert rows[0]["consistency"] == pytest.approx(np.nanmean(table["consistency"]))
    assert main(["explain", "--run", run.id, "--method", "gradcam", "--image", "x.png", "--out", "y.png"]) == 2
    assert "3-D CT volumes" in capsys.readouterr().err
