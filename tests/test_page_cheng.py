"""The Performance tab "backbones x augmentation" (Cheng et al.'s Table 1) in AppTest: which runs exist, training the
missing ones as a background job, the empty state, and the bars, change heatmap and table checked against
scikit-learn on the runs' predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score
from streamlit.testing.v1 import AppTest
from test_cheng import CHENG_DEPTH, cheng_runs  # noqa: F401 (a session fixture)

import engine
from dashboard.cheng_section import _job_key
from dashboard.state import Selection
from engine.jobs import get_job
from tests.apptest_helpers import chart_spec, open_page, plotly_array

PAGE, TAB = "../pages/performance.py", "backbones x augmentation"


def _open(app: AppTest, sel: Selection, backbones: list[str]) -> AppTest:
    return open_page(app, sel, PAGE, performance_section=TAB, performance_cheng_backbones=backbones,
                     performance_cheng_depth=CHENG_DEPTH)


def _test_split(run: engine.Run) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted classes of the run's test split, from its predictions file."""
    df = pd.read_csv(run.dir / "predictions.csv", keep_default_na=False)
    df = df[df["split"] == "test"]
    return df["y"].to_numpy(), df["pred"].to_numpy()


def _table(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_without_runs_the_tab_says_so_and_trains_them_as_a_job(app, trained_selection, monkeypatch):
    calls: list[list[engine.RunConfig]] = []

    def fake_train(configs, **_kwargs):
        calls.append(list(configs))
        return []

    monkeypatch.setattr(engine, "train_missing", fake_train)
    at = _open(app, trained_selection, ["vgg16"])
    assert any(f"No run of vgg16 at depth {CHENG_DEPTH} is trained yet" in i.value for i in at.info)
    assert _table(at, "with augmentation").values.tolist() == [["vgg16", "not trained", "not trained"]]
    assert not [c for c in at.get("plotly_chart") if c.key and c.key.startswith("performance_cheng")]
    button = at.button(key="performance_cheng_train")
    assert button.label.startswith("Train the missing backbone x augmentation (2 run(s)")
    button.click().run()
    base = trained_selection.config.replace(depth=CHENG_DEPTH)
    job = get_job(_job_key(base, ["vgg16"], CHENG_DEPTH))
    assert job is not None and job.wait(60) and job.status == "done"
    assert [(c.backbone, c.augment, c.depth, c.data, c.seed) for c in calls[0]] == [
        ("vgg16", False, CHENG_DEPTH, base.data, base.seed), ("vgg16", True, CHENG_DEPTH, base.data, base.seed)]


def test_the_tab_draws_chengs_table_from_the_runs(app, trained_selection, cheng_runs):  # noqa: F811
    runs = {(r.config.backbone, r.config.augment): r for r in cheng_runs}
    at = _open(app, trained_selection, ["alexnet", "resnet18"])
    status = _table(at, "with augmentation").set_index("backbone")
    assert status.loc["resnet18", "with augmentation"] == "not trained"
    assert status.loc["alexnet", "with augmentation"].startswith("trained in")
    assert at.button(key="performance_cheng_train").label.startswith(
        "Train the missing backbone x augmentation (1 run(s)")

    # bars: the test accuracy of each backbone without and with augmentation (none for resnet18 with)
    bars = chart_spec(at, "performance_cheng_bars")["data"]
    for trace, on in zip(bars, (False, True)):
        assert trace["x"] == ["alexnet", "resnet18"]
        expected = [accuracy_score(*_test_split(runs[(b, on)])) if (b, on) in runs else np.nan
                    for b in ("alexnet", "resnet18")]
        assert plotly_array(trace["y"], float) == pytest.approx(expected, nan_ok=True)

    # heatmap: the change with augmentation of alexnet's accuracy and every class's F1
    heat = chart_spec(at, "performance_cheng_change")["data"][0]
    classes = engine.class_order(cheng_runs[0])
    assert heat["x"] == ["accuracy", *(f"{c} F1" for c in classes)] and heat["y"] == ["alexnet"]
    (off_y, off_p), (on_y, on_p) = _test_split(runs[("alexnet", False)]), _test_split(runs[("alexnet", True)])
    labels = list(cheng_runs[0].classes)

    def f1(y, p, name):
        return f1_score(y, p, labels=[labels.index(name)], average="macro", zero_division=np.nan)

    expected = [accuracy_score(on_y, on_p) - accuracy_score(off_y, off_p),
                *(f1(on_y, on_p, c) - f1(off_y, off_p, c) for c in classes)]
    assert plotly_array(heat["z"], float).ravel() == pytest.approx(expected, nan_ok=True)

    table = _table(at, "F1")
    assert table[["backbone", "augmentation"]].values.tolist() == [
        ["alexnet", "without"], ["alexnet", "with"], ["alexnet", "change"], ["resnet18", "without"]]
    assert table.iloc[0]["accuracy"].startswith(f"{accuracy_score(off_y, off_p):.3f} [")
    assert table.iloc[2]["accuracy"].startswith(f"{expected[0]:+.3f} [")
    note = " ".join(c.value for c in at.caption)
    assert "Cheng et al.'s Table 1" in note and "7 of 10" in note and "1,412" in note


def test_picking_a_score_and_class_redraws_the_bars(app, trained_selection, cheng_runs):  # noqa: F811
    at = _open(app, trained_selection, ["alexnet"])
    at.selectbox(key="performance_cheng_figure").set_value("F1")
    at.selectbox(key="performance_cheng_class").set_value("normal").run()
    assert not at.exception
    spec = chart_spec(at, "performance_cheng_bars")
    assert spec["layout"]["title"]["text"] == "Test normal F1 with and without augmentation"
    normal = list(cheng_runs[0].classes).index("normal")
    runs = {r.config.augment: r for r in cheng_runs if r.config.backbone == "alexnet"}
    for trace, on in zip(spec["data"], (False, True)):
        y, p = _test_split(runs[on])
        value = f1_score(y, p, labels=[normal], average="macro", zero_division=np.nan)
        assert plotly_array(trace["y"], float) == pytest.approx([value], nan_ok=True)
    assert _table(at, "F1").iloc[0]["recall"] != ""
    assert (at.query_params["cheng_figure"], at.query_params["cheng_class"]) == ("F1", "normal")
