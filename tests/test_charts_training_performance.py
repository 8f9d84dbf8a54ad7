"""Figure builders of the Training and Performance pages on small hand-made inputs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc, roc_curve

from dashboard import performance_charts as pc
from dashboard import training_charts as tc
import engine
from engine import RunConfig
from engine.evaluation import METRICS
from engine.runs import related_runs


def _history(n: int = 5, lr: tuple[float, ...] = (1e-3, 1e-3, 1e-4, 1e-4, 1e-5)) -> pd.DataFrame:
    epochs = np.arange(1, n + 1)
    df = pd.DataFrame({"epoch": epochs, "lr": lr[:n], "train_loss": 2.0 / epochs,
                       "val_loss": [1.0, 0.6, 0.5, 0.55, 0.7][:n], "test_loss": 1.5 / epochs})
    for i, key in enumerate(tc.CRITERIA):
        df[f"train_{key}"] = np.linspace(0.5, 0.9, n) - 0.01 * i
        df[f"val_{key}"] = np.linspace(0.4, 0.8, n) - 0.01 * i
        df[f"test_{key}"] = np.linspace(0.45, 0.85, n) - 0.01 * i
    return df


def _vlines(fig) -> dict[float, int]:
    """x position -> number of vertical lines drawn there."""
    out: dict[float, int] = {}
    for s in fig.layout.shapes:
        assert s.x0 == s.x1
        out[s.x0] = out.get(s.x0, 0) + 1
    return out


def test_lr_drops_are_the_epochs_trained_at_a_lower_rate():
    assert tc.lr_drops(_history()) == [(3, 1e-4), (5, 1e-5)]
    assert tc.lr_drops(_history(lr=(1e-3,) * 5)) == []


def test_loss_figure_draws_each_split_and_marks_best_stop_and_lr():
    h = _history()
    fig = tc.loss_figure(h, best_epoch=3, stopped_early=True)
    traces = {t.name: t for t in fig.data}
    assert list(traces) == ["train", "validation", "test"]
    np.testing.assert_allclose(traces["validation"].y, h["val_loss"])
    np.testing.assert_array_equal(traces["test"].x, h["epoch"])
    assert [traces[s].line.dash for s in ("train", "validation", "test")] == ["solid", "dot", "dash"]
    # best epoch 3 and an lr drop at 3, the lr drop at 5 and the early stop after the last epoch (5)
    assert _vlines(fig) == {3: 2, 5: 2}
    texts = [a.text for a in fig.layout.annotations]
    assert texts == ["best epoch 3", "early stop after 5", "lr → 1e-04", "lr → 1e-05"]


def test_loss_figure_without_early_stop_or_val_split():
    h = _history(lr=(1e-3,) * 5).drop(columns="val_loss")
    fig = tc.loss_figure(h, best_epoch=2, stopped_early=False)
    assert [t.name for t in fig.data] == ["train", "test"]
    assert _vlines(fig) == {2: 1}


def test_criteria_figure_has_a_panel_per_criterion_with_train_solid_and_test_dashed():
    h = _history(lr=(1e-3,) * 5)
    h["test_ppv"] = np.nan  # never defined: no trace for it
    fig = tc.criteria_figure(h, best_epoch=4, stopped_early=False)
    assert [a.text for a in fig.layout.annotations][:5] == ["ACC", "Sensitivity", "Specificity", "PPV", "NPV"]
    assert len(fig.data) == 2 * 5 - 1
    by_axis = {(t.xaxis, t.name): t for t in fig.data}
    np.testing.assert_allclose(by_axis[("x2", "train")].y, h["train_sensitivity"])
    np.testing.assert_allclose(by_axis[("x5", "test")].y, h["test_npv"])
    assert ("x4", "test") not in by_axis
    assert {t.line.dash for t in fig.data if t.name == "train"} == {"solid"}
    assert {t.line.dash for t in fig.data if t.name == "test"} == {"dash"}
    assert sum(t.showlegend for t in fig.data) == 2  # one legend entry per split
    assert _vlines(fig) == {4: 5}  # the best epoch in each of the five panels, unlabelled (the caption says it)
    assert len(fig.layout.annotations) == 5


def test_criteria_figure_macro_prefix_reads_the_macro_columns():
    h = _history()
    h["train_macro_sensitivity"] = 0.1
    fig = tc.criteria_figure(h, 1, False, splits=("train",), prefix="macro_")
    assert [t.xaxis for t in fig.data] == ["x", "x2"]  # ACC as is, then the only macro column present
    np.testing.assert_allclose(fig.data[0].y, h["train_acc"])
    assert list(fig.data[1].y) == [0.1] * 5
    empty = [a.xref for a in fig.layout.annotations if a.text == "undefined at<br>every epoch"]
    assert empty == ["x3 domain", "x4 domain", "x5 domain"]


def test_compare_figure_overlays_runs_and_stars_each_best_epoch():
    a, b = _history(), _history(4)
    b["test_loss"] = [0.9, 0.7, 0.8, 0.95]
    fig = tc.compare_figure({("alexnet", 0): a, ("alexnet", 5): b}, "loss", ["train", "test"],
                            {("alexnet", 0): 3, ("alexnet", 5): 2})
    lines = [t for t in fig.data if t.mode == "lines"]
    stars = [t for t in fig.data if t.mode == "markers"]
    # a panel per split (train left, test right), a colour and one legend entry per depth
    assert [(t.name, t.meta["run"], t.meta["split"], t.xaxis) for t in lines] == [
        (f"depth {d}", f"alexnet d{d}", s, axis) for d in (0, 5) for s, axis in (("train", "x"), ("test", "x2"))]
    assert [a.text for a in fig.layout.annotations] == ["Train", "Test"]
    assert [t.showlegend for t in lines] == [True, False] * 2
    assert lines[0].line.color == lines[1].line.color != lines[2].line.color
    assert [t.line.dash for t in lines] == ["solid", "dash"] * 2
    np.testing.assert_allclose(lines[3].y, b["test_loss"])
    assert [(list(s.x), list(s.y)) for s in stars] == [
        ([3], [2.0 / 3]), ([3], [0.5]), ([2], [1.0]), ([2], [0.7])
    ]
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0  # one row under the panels
    with pytest.raises(ValueError, match="Unknown quantity"):
        tc.compare_figure({("x", 1): a}, "f1", ["test"], {("x", 1): 1})


def test_compare_figure_has_a_row_per_backbone_and_a_legend_entry_per_depth():
    runs = {(b, d): _history() for b in ("alexnet", "vgg16", "resnet18") for d in range(6)}  # 18 runs
    fig = tc.compare_figure(runs, "acc", ["train", "val", "test"], {k: 2 for k in runs})
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 18 * 3
    assert sorted(t.name for t in lines if t.showlegend) == [f"depth {d}" for d in range(6)]  # six entries, not 18
    rows = {t.meta["run"].split()[0]: t.yaxis for t in lines if t.meta["split"] == "train"}
    assert rows == {"alexnet": "y", "vgg16": "y4", "resnet18": "y7"}  # backbone rows, train in the first column
    for depth in range(6):  # the same colour for a depth in every panel
        assert len({t.line.color for t in lines if t.name == f"depth {depth}"}) == 1
    assert len({t.line.color for t in lines}) == 6
    assert "vgg16 · validation" in [a.text for a in fig.layout.annotations]


def _fake_run(fingerprint: str = "fp", **cfg) -> SimpleNamespace:
    return SimpleNamespace(config=RunConfig(**cfg), meta={"data_fingerprint": fingerprint})


def test_related_runs_matches_the_sweep_and_other_backbones_of_the_same_experiment():
    base = _fake_run(depth=5, lr=1e-4)
    d2 = _fake_run(depth=2, lr=1e-4)
    d2_other_lr = _fake_run(depth=2, lr=1e-3)  # same backbone, another sweep
    vgg = _fake_run(backbone="vgg16", depth=2, lr=1e-5)  # optimiser settings may differ across backbones
    vgg_newer_dup = _fake_run(backbone="vgg16", depth=2, lr=1e-3)
    vgg_other_size = _fake_run(backbone="vgg16", depth=3, image_size=224)
    other_data = _fake_run("other", depth=1)
    out = related_runs(base, [base, d2, d2_other_lr, vgg, vgg_newer_dup, vgg_other_size, other_data])
    assert out == {("alexnet", 5): base, ("alexnet", 2): d2, ("vgg16", 2): vgg}


def test_format_ci():
    assert pc.format_ci(0.91234, 0.8714, 0.9466) == "0.912 [0.871, 0.947]"
    assert pc.format_ci(None, None, None) == "n/a"
    assert pc.format_ci(float("nan"), 0.1, 0.2) == "n/a"
    assert pc.format_ci(0.5, float("nan"), 0.7) == "0.500"


def _methods_table() -> pd.DataFrame:
    values = {"LBP + SVM": 0.80, "Deep features + SVM": 0.90, "Fine-tuned CNN": 0.95}
    rows = []
    for method, v in values.items():
        row = {"method": method, "C": 10.0 if "SVM" in method else np.nan, "cv_score": np.nan, "cv_note": ""}
        for m in METRICS:
            row.update({m: v, f"{m}_low": v - 0.05, f"{m}_high": v + 0.03})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.loc[0, "specificity"] = 0.97  # LBP wins one column
    df.loc[1, "NPV"] = 0.95  # a tie with the CNN
    df.loc[:, "AUC"] = np.nan  # undefined everywhere: nothing to highlight
    return df


def test_best_methods_mark_one_winner_and_leave_ties_unmarked():
    df = _methods_table()
    df.loc[1, "PPV"], df.loc[2, "PPV"] = 0.9496, 0.9504  # different values that both read 0.950: a tie as shown
    best = pc.best_methods(df)
    assert best["ACC"] == ["Fine-tuned CNN"]
    assert best["specificity"] == ["LBP + SVM"]
    assert best["NPV"] == [] and best["PPV"] == []  # ties: nobody is marked
    assert best["AUC"] == []  # undefined everywhere
    assert pc.tied_metrics(df) == ["PPV", "NPV"]
    text = pc.comparison_table(df)
    assert list(text.index) == ["LBP + SVM", "Deep features + SVM", "Fine-tuned CNN"]
    assert text.loc["Fine-tuned CNN", "ACC"] == "0.950 [0.900, 0.980]"
    assert text.loc["Deep features + SVM", "PPV"].startswith("0.950 ") and text.loc["Fine-tuned CNN", "PPV"].startswith(
        "0.950 ")
    assert text.loc["LBP + SVM", "AUC"] == "n/a"
    assert text.loc["Fine-tuned CNN", "SVM C"] == "—" and text.loc["LBP + SVM", "SVM C"] == "10"
    styler = pc.comparison_styler(df)
    styler._compute()
    highlighted = {(text.index[r], text.columns[c]) for (r, c), css in styler.ctx.items() if css}
    winners = {("Fine-tuned CNN", m) for m in ("ACC", "sensitivity", "F1")} | {("LBP + SVM", "specificity")}
    assert highlighted == winners
    css = {prop for (r, c), props in styler.ctx.items() for prop in props}
    assert css == {("background-color", "#dcfce7"), ("color", "#166534"), ("font-weight", "700")}  # green, not red
    assert pc.comparison_marks(df).sum().sum() == len(winners)


def test_table1_caption_names_the_tied_columns():
    text = pc.table1_caption(12, "covid", "alexnet", ["PPV", "NPV"])
    assert "same 12 test images" in text and "positive class (covid)" in text and "fine-tuned alexnet" in text
    assert "bold on a green tint" in text and "Tied best (PPV, NPV): " in text
    assert "Tied best" not in pc.table1_caption(12, "covid", "alexnet", [])


def test_confusion_figure_shows_counts_or_shares():
    counts = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    fig = pc.confusion_figure(counts, ["covid", "normal", "pneumonia"], normalised=False)
    np.testing.assert_array_equal(fig.data[0].z, counts)
    assert list(fig.data[0].x) == ["covid", "normal", "pneumonia"] == list(fig.data[0].y)
    assert fig.data[0].texttemplate == "%{z:.0f}"
    shares = np.asarray(counts) / np.asarray(counts).sum(1, keepdims=True)
    fig = pc.confusion_figure(shares, ["covid", "normal", "pneumonia"], normalised=True)
    assert fig.data[0].texttemplate == "%{z:.2f}" and fig.layout.coloraxis.cmax == 1


def test_roc_and_pr_figures_carry_the_scores_in_the_legend():
    y = np.array([1, 1, 0, 0, 1, 0])
    score = np.array([0.9, 0.4, 0.35, 0.1, 0.8, 0.6])
    fpr, tpr, _ = roc_curve(y, score)
    roc = {"covid": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc(fpr, tpr)},
           "normal": {"fpr": [0, 1], "tpr": [0, 1], "auc": None}}
    fig = pc.roc_figure(roc, positive="covid")
    # 8 of the 9 (positive, negative) pairs are ranked right: AUC 8/9
    assert [t.name for t in fig.data] == ["covid (AUC 0.889)", "normal (AUC n/a)", "chance"]
    np.testing.assert_allclose(fig.data[0].x, fpr)
    assert fig.data[0].line.width > fig.data[1].line.width
    pr = {"covid": {"precision": [1.0, 0.5], "recall": [0.0, 1.0], "ap": 0.75}}
    fig = pc.pr_figure(pr, positive="covid")
    assert fig.data[0].name == "covid (AP 0.750)" and list(fig.data[0].x) == [0.0, 1.0]


def test_per_class_figure_groups_three_bars_per_class():
    per_class = [{"class": "covid", "precision": 0.8, "recall": 0.5, "F1": 0.615, "support": 4},
                 {"class": "normal", "precision": None, "recall": 0.0, "F1": None, "support": 3}]
    fig = pc.per_class_figure(per_class)
    assert fig.layout.barmode == "group"
    assert [t.name for t in fig.data] == ["precision", "recall", "F1"]
    assert list(fig.data[0].x) == ["covid", "normal"]
    assert fig.data[0].y[0] == 0.8 and np.isnan(fig.data[0].y[1])


def test_depth_figure_has_a_line_per_backbone_with_ci_bars_and_the_best_starred():
    curve = pd.DataFrame({
        "run": list("abcde"), "backbone": ["alexnet"] * 3 + ["vgg16"] * 2, "depth": [0, 2, 5, 0, 2],
        "value": [0.7, 0.9, 0.8, 0.6, 0.85], "low": [0.6, 0.85, 0.7, 0.5, 0.8], "high": [0.8, 0.95, 0.9, 0.7, 0.9],
        "best": [False, True, False, False, False],
    })
    fig = pc.depth_figure(curve, "ACC")
    lines = {t.name: t for t in fig.data}
    assert set(lines) == {"alexnet", "vgg16", "best"}
    np.testing.assert_allclose(lines["alexnet"].error_y.array, [0.1, 0.05, 0.1])
    np.testing.assert_allclose(lines["alexnet"].error_y.arrayminus, [0.1, 0.05, 0.1])
    assert list(lines["vgg16"].x) == [0, 2]
    assert (list(lines["best"].x), list(lines["best"].y)) == ([2], [0.9])
    assert "alexnet depth 2" in fig.layout.annotations[0].text


# --- k-fold cross-validation views -------------------------------------------------------------------------------

def test_fold_curves_figure_draws_each_fold_thin_the_mean_thick_and_stars_best_epochs():
    curve = pd.DataFrame({"epoch": [1, 2, 3], "fold_0": [1.0, 0.8, 0.6], "fold_1": [0.9, 0.7, np.nan],
                          "fold_2": [1.1, 0.9, 0.5], "mean": [1.0, 0.8, 0.55], "sd": [0.1, 0.1, 0.0707],
                          "n": [3, 3, 2]})
    fig = tc.fold_curves_figure(curve, "Validation loss", {0: 3, 1: 2, 2: 3})
    lines = {t.name: t for t in fig.data if t.mode == "lines"}
    stars = {t.name: t for t in fig.data if t.mode == "markers"}
    assert list(lines) == ["fold 0", "fold 1", "fold 2", "mean of 3 folds"]
    np.testing.assert_allclose(lines["fold 1"].y, [0.9, 0.7, np.nan])
    np.testing.assert_allclose(lines["mean of 3 folds"].y, [1.0, 0.8, 0.55])
    assert lines["mean of 3 folds"].line.width > max(lines[f"fold {f}"].line.width for f in range(3))
    assert [(list(s.x), list(s.y)) for s in stars.values()] == [([3], [0.6]), ([2], [0.7]), ([3], [0.5])]
    assert stars["fold 1 · best epoch"].marker.color == lines["fold 1"].line.color
    assert fig.layout.yaxis.title.text == "Validation loss" and fig.layout.yaxis.range is None
    assert tuple(tc.fold_curves_figure(curve, "Test ACC", {}, bounded=True).layout.yaxis.range) == (-0.02, 1.02)


def test_fold_roc_figure_has_a_curve_per_fold_and_mean_sd_auc_in_the_title():
    roc = {"positive": "covid", "n_folds": 2, "n_test": 4, "ddof": 1,
           "folds": [{"fold": 0, "run": "a", "fpr": [0, 0, 1], "tpr": [0, 1, 1], "auc": 1.0},
                     {"fold": 1, "run": "b", "fpr": [0, 0.5, 1], "tpr": [0, 0.5, 1], "auc": 0.5}],
           "auc": {"mean": 0.75, "sd": 0.3536, "min": 0.5, "max": 1.0, "n": 2}}
    fig = pc.fold_roc_figure(roc)
    assert [t.name for t in fig.data] == ["fold 0 (AUC 1.000)", "fold 1 (AUC 0.500)", "chance"]
    assert list(fig.data[1].x) == [0, 0.5, 1]
    assert fig.layout.title.text == "covid vs rest, 2 folds: AUC 0.750 ± 0.354 (mean ± sd)"
    roc["auc"]["sd"] = float("nan")  # a single fold with a defined AUC: no sd to show
    assert pc.fold_roc_figure(roc).layout.title.text == "covid vs rest, 2 folds: AUC 0.750 (mean ± sd)"


def test_fold_table_appends_the_mean_and_sd_rows():
    per_fold = pd.DataFrame({"fold": [0, 1], "AUC": [1.0, 0.5], "ACC": [0.75, 0.5], "best_epoch": [2, 1],
                             "n_test": [4, 4], "run": ["a", "b"]})
    summary = pd.DataFrame({"AUC": [0.75, 0.3536, 0.5, 1.0, 2], "ACC": [0.625, 0.1768, 0.5, 0.75, 2]},
                           index=["mean", "sd", "min", "max", "n"])
    table = pc.fold_table(per_fold, summary)
    assert list(table.columns) == ["fold", "AUC", "ACC", "best_epoch", "run"]
    assert list(table["fold"]) == ["0", "1", "mean", "sd"]
    np.testing.assert_allclose(table["AUC"], [1.0, 0.5, 0.75, 0.3536])
    assert table["run"].tolist()[:2] == ["a", "b"] and table["run"].isna().tolist()[2:] == [True, True]


def test_depth_figure_of_fold_means_has_sd_error_bars_and_min_max_in_the_hover():
    curve = pd.DataFrame({
        "backbone": ["alexnet"] * 2, "depth": [0, 2], "folds": [3, 3], "n": [3, 3], "value": [0.7, 0.8],
        "sd": [0.05, 0.1], "min": [0.65, 0.7], "max": [0.75, 0.9], "low": [0.65, 0.7], "high": [0.75, 0.9],
        "values": [[0.65, 0.7, 0.75], [0.7, 0.8, 0.9]], "runs": [["a", "b", "c"], ["d", "e", "f"]],
        "best": [False, True],
    })
    fig = pc.depth_figure(curve, "AUC")
    line = next(t for t in fig.data if t.name == "alexnet")
    np.testing.assert_allclose(line.error_y.array, [0.05, 0.1])
    np.testing.assert_allclose(line.error_y.arrayminus, [0.05, 0.1])
    np.testing.assert_allclose(np.asarray(line.customdata), [[0.05, 0.65, 0.75, 3], [0.1, 0.7, 0.9, 3]])
    assert "mean" in line.hovertemplate and "min" in line.hovertemplate and "folds" in line.hovertemplate
    assert fig.layout.yaxis.title.text == "Test AUC (mean over folds)"
    assert fig.layout.annotations[0].text == "best: alexnet depth 2 (mean 0.800)"


def test_related_runs_without_candidates_queries_the_cache(trained_selection):
    runs = {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}
    base = runs[max(runs)]
    out = related_runs(base)  # every cached run, newest first
    backbone = base.config.backbone
    assert {(backbone, d): r.id for d, r in runs.items()}.items() <= {k: r.id for k, r in out.items()}.items()
    same = base.config.key_dict() | {"depth": 0}
    assert all(r.config.key_dict() | {"depth": 0} == same for (b, _), r in out.items() if b == backbone)
