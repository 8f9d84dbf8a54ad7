"""Training and Performance for 3-D CT runs and Ouyang et al.'s results: the attention-loss curve (eq. 3), every
Performance tab on a 3-D run, and the Ouyang tab (Table II, per-variant ROC curves, Table III by infection size, the
support with and without attention, training the missing variants) checked against scikit-learn on the runs'
predictions."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CT_RUN, TINY_RUN, write_tiny_folder
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score
from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection
from engine.data.arrays import mask_arrays
from engine.jobs import get_job
from engine.ouyang import variant_configs
from engine.store import stable_hash
from tests.apptest_helpers import chart_spec, open_page, plotly_array

TRAINING, PERFORMANCE = "../pages/training.py", "../pages/performance.py"
OUYANG = "Ouyang: attention & sampling"


def _test_split(run: engine.Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True labels, predicted labels and positive-class probabilities of the test split, read from the CSV file."""
    df = pd.read_csv(run.dir / "predictions.csv")
    df = df[df["split"] == "test"]
    positive = run.classes[run.positive]
    return df["y"].to_numpy(), df["pred"].to_numpy(), df[f"prob_{positive}"].to_numpy()


def _scores(run: engine.Run) -> dict[str, float]:
    """Table II's criteria of the run's test split by scikit-learn."""
    y, pred, p = _test_split(run)
    pos = run.positive
    return {"AUC": roc_auc_score(y == pos, p), "ACC": accuracy_score(y, pred),
            "sensitivity": recall_score(y == pos, pred == pos), "specificity": recall_score(y != pos, pred != pos),
            "F1": f1_score(y == pos, pred == pos)}


def _ouyang_tab(app: AppTest, base: engine.RunConfig) -> AppTest:
    return open_page(app, Selection(base, (base.depth,)), PERFORMANCE, performance_section=OUYANG)


# --- Training ------------------------------------------------------------------------------------------------------

def test_training_shows_the_attention_loss_of_an_attention_run(app, ouyang_variants):
    cfg = ouyang_variants.replace(attention=True)
    run = engine.get_run(cfg)
    at = open_page(app, Selection(cfg, (cfg.depth,)), TRAINING)
    spec = chart_spec(at, "training_attention_loss")
    history = json.loads((run.dir / "history.json").read_text())
    trace = spec["data"][0]
    assert "eq. 3" in trace["name"] and "eq. 3" in spec["layout"]["yaxis"]["title"]["text"]
    assert plotly_array(trace["y"], float) == pytest.approx([h["train_attention_loss"] for h in history])
    assert any("L_ex" in c.value and "λ = 0.5" in c.value for c in at.caption)
    assert any("online attention" in c.value for c in at.caption)


def test_training_works_unchanged_for_a_plain_3d_run(app, trained_ct):
    at = open_page(app, trained_ct, TRAINING, training_depth=2)
    assert "training_attention_loss" not in {c.key for c in at.get("plotly_chart")}
    run = engine.get_run(trained_ct.config.replace(depth=2))
    y, pred, _ = _test_split(run)
    cards = {m.label: m.value for m in at.metric}
    assert cards["Test ACC"] == f"{accuracy_score(y, pred):.3f}"
    assert any("32 × 64 × 64 voxels" in c.value for c in at.caption)


# --- Performance on a 3-D run --------------------------------------------------------------------------------------

@pytest.mark.parametrize("section", ["Metric vs depth", "Calibration", "External test"])
def test_every_performance_tab_opens_on_a_3d_run(app, trained_ct, section):
    open_page(app, trained_ct, PERFORMANCE, performance_section=section)  # raises nothing (asserted inside)


def test_table_1_of_a_3d_run_says_why_lbp_is_left_out(app, trained_ct):
    at = open_page(app, trained_ct, PERFORMANCE, performance_section="Table 1: CNN vs baselines")
    assert list(at.table[0].value.index) == ["Deep features + SVM", "Fine-tuned CNN"]
    assert any("LBP" in i.value for i in at.info)
    n_test = len(_test_split(engine.get_run(trained_ct.config.replace(depth=max(trained_ct.depths))))[0])
    assert any(c.value.startswith(f"Both methods on the same {n_test} test volumes") for c in at.caption)


def test_the_confusion_matrix_of_a_3d_run_is_sklearns(app, trained_ct):
    at = open_page(app, trained_ct, PERFORMANCE, performance_section="Test split", performance_depth=2)
    run = engine.get_run(trained_ct.config.replace(depth=2))
    y, pred, _ = _test_split(run)
    z = plotly_array(chart_spec(at, "performance_confusion")["data"][0]["z"], float)
    assert z == pytest.approx(confusion_matrix(y, pred, labels=range(len(run.classes))).astype(float))


# --- The Ouyang tab ------------------------------------------------------------------------------------------------

def test_table_2_rocs_and_table_3_match_sklearn(app, ouyang_variants):
    at = _ouyang_tab(app, ouyang_variants)
    runs = {name: engine.get_run(cfg) for name, cfg in variant_configs(ouyang_variants).items()}
    table = next(d.value for d in at.dataframe if "F1" in d.value.columns)  # Table II
    assert table["variant"].tolist() == [v.name for v in engine.VARIANTS] == list(runs)
    for row in table.to_dict("records"):
        expected = _scores(runs[row["variant"]])
        for metric, value in expected.items():
            assert row[metric] == f"{value:.3f}"  # hold-out: no sd
    assert any("3-D ResNet34" in c.value and "Table II" in c.value for c in at.caption)
    # one ROC chart per variant, its AUC in the title
    for i, (name, run) in enumerate(runs.items()):
        title = chart_spec(at, f"performance_ouyang_roc_{i}")["layout"]["title"]["text"]
        assert title.startswith(f"{name}: covid vs rest") and f"AUC {_scores(run)['AUC']:.3f}" in title

    # Table III: the test split cut by infection ratio, computed here with numpy
    ds = runs["RN + US"].dataset()
    lesion, lung, _, _ = mask_arrays(ds, ouyang_variants.image_size)
    ratio = (lesion & lung).reshape(len(lung), -1).sum(1) / lung.reshape(len(lung), -1).sum(1)
    groups = np.select([ratio < 0.005, ratio < 0.030], ["< 0.005", "0.005-0.030"], "> 0.030")
    table3 = next(d.value for d in at.dataframe if "group" in d.value.columns)  # Table III
    for name, run in runs.items():
        preds = pd.read_csv(run.dir / "predictions.csv")
        test = (preds["split"] == "test").to_numpy()
        mine = table3[table3["variant"] == name].set_index("group")
        for group in sorted(set(groups[test])):
            inside = test & (groups == group)
            assert mine.loc[group, "n"] == inside.sum()
            acc = accuracy_score(preds["y"][inside], preds["pred"][inside])
            assert mine.loc[group, "ACC"] == f"{acc:.3f}"


def test_support_with_and_without_attention(app, ouyang_variants):
    at = _ouyang_tab(app, ouyang_variants)
    table = at.table[0].value if at.table else None
    assert table is not None and list(table.index) == ["plain", "attention"]
    for model, attention in (("plain", False), ("attention", True)):
        y, pred, _ = _test_split(engine.get_run(ouyang_variants.replace(attention=attention)))
        assert table.loc[model, "test ACC"] == f"{accuracy_score(y, pred):.3f}"
        cell = table.loc[model, "Consistency degree with the lesion"]
        if cell != "n/a":
            value, low, high = (float(x) for x in re.findall(r"\d\.\d+", cell))
            assert low <= value <= high
    bars = chart_spec(at, "performance_ouyang_effect_chart")["data"]
    assert [b["name"] for b in bars] == ["plain", "attention"]


def test_missing_variants_are_named_and_trained_as_a_job(app, trained_ct, monkeypatch):
    base = engine.RunConfig(**TINY_CT_RUN).replace(depth=0)  # only the plain run is trained
    calls: list[list[engine.RunConfig]] = []

    def fake_train(configs, **_kwargs):
        calls.append(list(configs))
        return []

    monkeypatch.setattr(engine, "train_missing", fake_train)
    at = _ouyang_tab(app, base)
    assert any("Not trained yet: Attention RN + US, Attention RN + SS, Attention RN + DS (3 run(s))" in i.value
               for i in at.info)
    button = at.button(key="performance_ouyang_train")
    assert button.label.startswith("Train the missing variants (3 run(s)")
    button.click().run()
    job = get_job("ouyang:" + stable_hash(base.key_dict(), 16))  # the page's job: one per experiment and depth
    assert job is not None and job.wait(60) and job.status == "done"
    assert calls == [engine.missing_configs(base)]
    assert {(c.attention, c.sampling) for c in calls[0]} == {(True, "uniform"), (True, "size-balanced"),
                                                             (True, "dual")}


def test_without_lesion_masks_the_tab_says_what_needs_them(app, tmp_path):
    root = write_tiny_folder(tmp_path / "data", per_class=8)
    shutil.rmtree(root / "masks")
    cfg = engine.RunConfig(**{**TINY_RUN, "data": str(root), "backbone": "resnet18", "epochs": 1, "head_width": None})
    engine.run_sweep([cfg.replace(depth=0)])
    at = _ouyang_tab(app, cfg.replace(depth=0))
    assert any("need lesion masks" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "performance_ouyang_train"]
