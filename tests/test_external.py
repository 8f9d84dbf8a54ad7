"""External validation: a run scored on another folder, every number checked against scikit-learn."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

import engine
from engine.cli import main
from engine.errors import ConfigError, DataError
from engine.external import evaluate_view, external_rows, external_view, parse_mapping
from conftest import write_tiny_folder

TINY = {"init": "scratch", "image_size": 64, "head_width": 16, "epochs": 2, "patience": 0, "batch_size": 16,
        "lr": 1e-3}
CONTRACT = {"run", "data", "n", "n_left_out", "classes", "metrics", "ci", "confusion", "calibration", "explanation"}


def same(value: float | None, ref: float) -> bool:
    """``value`` (None where undefined) equals scikit-learn's ``ref`` (NaN where undefined)."""
    return np.isnan(ref) if value is None else value == pytest.approx(ref)


def check_against_sklearn(result: dict, view) -> None:
    """Every metric, interval, confusion count and calibration number of ``result`` against scikit-learn."""
    rows = view.predictions
    y, pred = rows["y"].to_numpy(), rows["pred"].to_numpy()
    pos = view.positive
    score = rows[f"prob_{view.classes[pos]}"].to_numpy()
    t, p = y == pos, pred == pos
    m = result["metrics"]
    assert same(m["acc"], accuracy_score(y, pred))
    assert same(m["balanced_acc"], balanced_accuracy_score(y, pred))
    assert same(m["sensitivity"], recall_score(t, p, zero_division=np.nan))
    assert same(m["specificity"], recall_score(~t, ~p, zero_division=np.nan))
    assert same(m["ppv"], precision_score(t, p, zero_division=np.nan))
    assert same(m["npv"], precision_score(~t, ~p, zero_division=np.nan))
    assert same(m["f1"], f1_score(t, p, zero_division=np.nan))
    assert same(m["auc"], roc_auc_score(t, score))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(len(view.classes)),
                                                                     zero_division=np.nan)
    for i, row in enumerate(m["per_class"]):
        assert row["class"] == view.classes[i] and row["support"] == support[i]
        for key, ref in (("precision", precision[i]), ("recall", recall[i]), ("f1", f1[i])):
            assert same(row[key], ref)
    assert result["confusion"] == confusion_matrix(y, pred, labels=range(len(view.classes))).tolist()
    for key, value in m.items():
        if key != "per_class" and value is not None:
            low, high = result["ci"][key]
            assert low <= value <= high, key
    assert result["calibration"]["brier"] == pytest.approx(brier_score_loss(t, score))
    prob_true, prob_pred = calibration_curve(t, score, n_bins=10, strategy="uniform")
    assert result["calibration"]["reliability"]["prob_true"] == pytest.approx(prob_true)
    assert result["calibration"]["reliability"]["prob_pred"] == pytest.approx(prob_pred)


def test_parse_mapping():
    assert parse_mapping(["non_covid=pneumonia", " a = b "]) == {"non_covid": "pneumonia", "a": "b"}
    assert parse_mapping(None) == {}
    for bad in (["non_covid"], ["=pneumonia"], ["a=b", "a=c"]):
        with pytest.raises(ConfigError, match="SRC=DST|twice"):
            parse_mapping(bad)


@pytest.fixture(scope="module")
def tiny_run(tiny_folder):
    (run,) = [r.run for r in engine.run_sweep([engine.RunConfig(data=str(tiny_folder), depth=5, **TINY)])]
    return run


@pytest.fixture(scope="module")
def other_site(tmp_path_factory) -> Path:
    """Another 'site': new images, pneumonia renamed non_covid, and a class the run does not know."""
    base = tmp_path_factory.mktemp("site")
    root = write_tiny_folder(base / "data", per_class=6, seed=7)
    more = write_tiny_folder(base / "more", per_class=6, seed=8)
    for sub in ("images", "masks", "lung_masks"):
        (root / sub / "pneumonia").rename(root / sub / "non_covid")
        shutil.move(more / sub / "normal", root / sub / "tuberculosis")
    return root


def test_external_view_matches_classes_and_leaves_unknown_out(tiny_run, other_site):
    view = external_view(tiny_run, other_site, {"non_covid": "pneumonia"})
    assert view.left_out == {"tuberculosis": 6}
    assert len(view.predictions) == 18 and set(view.predictions["label"]) == {"covid", "normal", "pneumonia"}
    assert (view.predictions.loc[view.predictions["source_label"] == "non_covid", "label"] == "pneumonia").all()
    assert view.images("test").shape == (18, 64, 64)
    assert view.artifact("x").parent != tiny_run.artifact("x").parent
    # The model's probabilities of the images, computed independently of the view.
    from engine.data.imageio import read_image
    from engine.data.transforms import preprocess
    from engine.explain.inference import predict_proba
    images = np.stack([preprocess(read_image(p), 64) for p in view.predictions["path"]])
    assert view.proba == pytest.approx(predict_proba(tiny_run.load_model(), images), abs=1e-5)
    without_map = external_view(tiny_run, other_site)
    assert without_map.left_out == {"non_covid": 6, "tuberculosis": 6} and without_map.cache_key != view.cache_key
    with pytest.raises(ConfigError, match="does not have"):
        external_view(tiny_run, other_site, {"non_covid": "flu"})


def test_evaluate_equals_sklearn_and_is_cached(tiny_run, other_site):
    view = external_view(tiny_run, other_site, {"non_covid": "pneumonia"})
    result = evaluate_view(view)
    assert CONTRACT <= set(result)
    assert result["n"] == 18 and result["n_left_out"] == 6 and result["classes"] == list(tiny_run.classes)
    check_against_sklearn(result, view)
    assert 0 <= result["unlike_share"] <= 1 and len(result["unlike"]["flagged"]) == 18
    ex = result["explanation"]
    assert ex["method"] == "gradcam" and ex["n"] == 12  # covid and non_covid images have lesion masks
    assert 0 <= ex["consistency"] <= 1 and 0 <= ex["pointing_game"] <= 1
    cached = sorted(view.artifact("").glob("evaluation-*.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert evaluate_view(external_view(tiny_run, other_site, {"non_covid": "pneumonia"})) == result
    assert cached[0].stat().st_mtime_ns == stamp
    rows = external_rows(view, result)
    assert len(rows) == 18 and rows["unlike_training"].dtype == bool


def test_evaluate_cli_json_and_csv(tiny_run, other_site, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    code = main(["evaluate", "--run", tiny_run.id, "--data", str(other_site), "--map", "non_covid=pneumonia",
                 "--out", str(out), "--json", "--no-explanations"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert CONTRACT <= set(result) and result["explanation"] is None
    assert result["n"] == 18 and result["left_out"] == {"tuberculosis": 6}
    assert len(pd.read_csv(out)) == 18
    assert main(["evaluate", "--run", tiny_run.id, "--data", str(other_site), "--map", "non_covid"]) == 2
    assert "SRC=DST" in capsys.readouterr().err
    assert main(["evaluate", "--run", tiny_run.id, "--data", str(other_site), "--map", "non_covid=pneumonia"]) == 0
    text = capsys.readouterr().out
    assert "18 images scored" in text and "tuberculosis 6" in text and "ECE" in text


def test_external_folder_of_unknown_classes_says_how_to_map(tiny_run, tmp_path):
    root = write_tiny_folder(tmp_path / "d", per_class=2, seed=3)
    for sub in ("images", "masks", "lung_masks"):
        for name in ("covid", "normal", "pneumonia"):
            (root / sub / name).rename(root / sub / f"x_{name}")
    with pytest.raises(DataError, match="--map"):
        evaluate_view(external_view(tiny_run, root))


def _link_subset(rows: pd.DataFrame, src: Path, dst: Path) -> Path:
    for r in rows.itertuples():
        for column in ("file", "mask_file", "lung_mask_file"):
            rel = getattr(r, column)
            if rel:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst / rel).symlink_to(src / rel)
    return dst


def test_real_xrays_train_on_one_site_evaluate_on_another(shared_data, tmp_path):
    """covidqu split into two folders with no sim_group on both sides: train on one, evaluate on the other."""
    src = shared_data / "covidqu_cxr_infection"
    manifest = pd.read_csv(src / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["key"] = manifest["sim_group"].where(manifest["sim_group"] != "", manifest["file"])
    keys = manifest["key"].unique()
    side = dict(zip(keys, np.random.default_rng(0).permutation(len(keys)) % 2))
    manifest["side"] = manifest["key"].map(side)
    picked = manifest.groupby(["side", "class"]).head(20)
    a = _link_subset(picked[picked["side"] == 0], src, tmp_path / "site_a")
    b = _link_subset(picked[picked["side"] == 1], src, tmp_path / "site_b")
    assert not set(picked.loc[picked["side"] == 0, "key"]) & set(picked.loc[picked["side"] == 1, "key"])
    (run,) = [r.run for r in engine.run_sweep([engine.RunConfig(data=str(a), depth=5, **TINY)])]
    view = external_view(run, b)
    result = evaluate_view(view, explanations=False)
    assert result["n"] == 60 and result["n_left_out"] == 0
    assert not set(view.predictions["file"]) & set(run.predictions["file"])  # other images
    check_against_sklearn(result, view)
