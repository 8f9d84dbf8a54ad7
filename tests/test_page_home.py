"""The Home page in AppTest: the data summary, the training estimate, training as a background job (progress, Train
disabled, cancel, the run store intact), the cross-validation folds picker, the per-(depth, fold) count of trained
runs, the sidebar following the choice, and the "Prepare every view" background job."""
from __future__ import annotations

import json
import re
import shutil
import statistics
import threading
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import engine
from conftest import TINY_RUN, write_tiny_folder
from dashboard.state import Selection
from engine import estimate, prepare
from engine.evaluation import evaluate_run
from engine.jobs import get_job
from engine.layers import FILTER_VIEWS, run_filter_grid
from engine.pretrain import SOURCE_EPOCHS, SOURCE_IMAGES
from engine.runs import runs_root
from engine.store import stable_hash
from engine.train_job import SweepProgress
from engine.training import Progress
from tests.test_crossval import FOLD_RUN, three_fold_selection  # noqa: F401 (a session fixture)

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


def _home(sel: Selection) -> AppTest:
    at = AppTest.from_file(str(HOME), default_timeout=120)
    at.session_state["selection"] = sel
    at.run()
    assert not at.exception
    return at


def _count(at: AppTest) -> tuple[int, int]:
    """The "**x of y** runs ... trained" line as (x, y)."""
    text = next(m.value for m in at.markdown if "runs of this experiment" in m.value)
    x, y = re.search(r"\*\*(\d+) of (\d+)\*\*", text).groups()
    return int(x), int(y)


def _train_label(at: AppTest) -> str:
    return next(b.label for b in at.button if b.label.startswith("Train "))


def test_choosing_folds_lists_a_run_per_depth_and_fold(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))  # nothing trained
    at = _home(Selection(engine.RunConfig(**{**FOLD_RUN, "folds": 1}), (0, 5)))
    assert _count(at) == (0, 2)
    assert _train_label(at) == "Train 2 run(s) (depths 0, 5)"
    folds = at.selectbox(key="home_folds")
    assert folds.value == 1 and "Lee et al." in folds.help and "Wan et al." in folds.help and "five" in folds.help

    folds.set_value(3).run()
    assert not at.exception
    sel = at.session_state["selection"]
    assert (sel.config.folds, sel.config.fold, sel.depths) == (3, 0, (0, 5))
    assert _count(at) == (0, 6)
    assert any("trained and cached: 2 depth(s) × 3 folds" in m.value for m in at.markdown)
    assert _train_label(at) == "Train 6 run(s) (depth 0: folds 0, 1, 2; depth 5: folds 0, 1, 2)"


def test_trained_folds_are_counted_and_only_the_missing_ones_listed(three_fold_selection):  # noqa: F811
    at = _home(three_fold_selection)
    n = 3 * len(three_fold_selection.depths)
    assert _count(at) == (n, n)
    assert not [b for b in at.button if b.label.startswith("Train ")]
    assert "Everything is trained" in at.success[0].value

    # one more depth: its three folds are the missing runs
    wider = Selection(three_fold_selection.config, (*three_fold_selection.depths, 5))
    at = _home(wider)
    assert _count(at) == (n, n + 3)
    assert _train_label(at) == "Train 3 run(s) (depth 5: folds 0, 1, 2)"


@pytest.mark.parametrize("folds", [1, 3])
def test_the_folds_choice_starts_at_the_selections(three_fold_selection, folds):  # noqa: F811
    sel = Selection(three_fold_selection.config.replace(folds=folds), three_fold_selection.depths)
    at = _home(sel)
    assert at.selectbox(key="home_folds").value == folds
    assert at.session_state["selection"] == sel  # drawing Home changes nothing


# --- 1 · Data: a summary read from the data ---------------------------------------------------------------------------

def _texts(at: AppTest) -> list[str]:
    """Every markdown, caption, info, warning and error text the page drew."""
    return [e.value for kind in ("markdown", "caption", "info", "warning", "error") for e in at.get(kind)]


def _summary_table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "lesion masks" in d.value.columns)


def _files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def test_the_data_summary_counts_what_is_on_disk_and_the_split_a_run_makes(trained_selection):
    at = _home(trained_selection)
    table = _summary_table(at)
    run = engine.get_run(trained_selection.configs()[0])
    root = Path(run.meta["data_root"])
    predictions = pd.read_csv(run.dir / "predictions.csv", keep_default_na=False)
    split = pd.crosstab(predictions["label"], predictions["split"])
    classes = sorted(p.name for p in (root / "images").iterdir())
    assert list(table.index) == [*classes, "all classes"]
    for c in classes:
        row = table.loc[c]
        assert row["images"] == _files(root / "images" / c) == TINY_RUN["builtin_per_class"]
        assert row["lesion masks"] == _files(root / "masks" / c)
        assert row["lung masks"] == _files(root / "lung_masks" / c)
        assert [row[s] for s in ("train", "val", "test")] == [split.loc[c, s] for s in ("train", "val", "test")]
    assert table.loc["all classes", "images"] == len(predictions)
    assert [caption for image in at.image for caption in image.captions] == classes  # one preview per class
    side = cv2.imread(str(next((root / "images" / classes[0]).iterdir())), cv2.IMREAD_GRAYSCALE).shape
    assert any(f"Stored images: all {side[1]} × {side[0]} px (PNG;" in t for t in _texts(at))
    assert any("pneumonia (lobar consolidation)" in t for t in _texts(at))  # the built-in data's own caption


def test_the_summary_of_a_folder_names_its_own_classes_and_masks(tmp_path):
    root = write_tiny_folder(tmp_path / "data", per_class=12)
    for sub in ("images", "masks", "lung_masks"):  # classes covid / non_covid / normal, as COVID-QU-Ex has
        (root / sub / "pneumonia").rename(root / sub / "non_covid")
    shutil.rmtree(root / "masks" / "normal")  # lesion masks for covid and non_covid only
    at = _home(Selection(engine.RunConfig(**{**TINY_RUN, "data": str(root)}), (5,)))
    texts = _texts(at)
    assert not [t for t in texts if "pneumonia" in t.lower()]
    table = _summary_table(at)
    assert list(table.index) == ["covid", "non_covid", "normal", "all classes"]
    assert list(table["images"]) == [12, 12, 12, 36]
    assert list(table["lesion masks"]) == [_files(root / "masks" / c) for c in ("covid", "non_covid")] + [0, 24]
    assert list(table["lung masks"]) == [12, 12, 12, 36]
    assert (table[["train", "val", "test"]].sum(axis=1) == table["images"]).all()
    assert any("3 classes: covid (12), non_covid (12), normal (12)" in t for t in texts)
    assert any("Lesion masks: covid 12 of 12, non_covid 12 of 12. Lung masks: covid 12 of 12, non_covid 12 of 12, "
               "normal 12 of 12." in t for t in texts)
    assert any("Stored images: all 64 × 64 px (PNG; every image)" in t for t in texts)


# --- The estimate next to Train -----------------------------------------------------------------------------------------

def _rates_from_files(backbone: str) -> list[float]:
    """Seconds per image-epoch per cost unit (2 + depth, plus a third of each frozen block recomputed) at 128 px of the
    newest 24 cached runs, read straight from their files."""
    rows = []
    for result_file in runs_root().glob("*/result.json"):
        folder = result_file.parent
        result, cfg = json.loads(result_file.read_text()), json.loads((folder / "config.json").read_text())
        if cfg["backbone"] != backbone or json.loads((folder / "meta.json").read_text())["device"] != "cpu":
            continue
        images = len(pd.read_csv(folder / "predictions.csv"))
        area = (cfg["image_size"] / 128) ** 2
        # A third of each frozen block when the frozen prefix is recomputed (augmentation on, e.g. tests/test_cheng.py)
        frozen = (5 - cfg["depth"]) / 3 if cfg["augment"] or not cfg["prefix_cache"] else 0.0
        units = 2 + cfg["depth"] + frozen
        rows.append((result["finished"], result["seconds"] / (images * result["epochs_run"] * units * area)))
    return [rate for _, rate in sorted(rows, reverse=True)[:24]]


def test_the_estimate_scales_with_images_epochs_and_depth_at_this_machines_measured_rate(trained_selection):
    configs = trained_selection.configs()  # depths 0 and 5, 64 px, scratch: no pretraining
    rate = statistics.median(_rates_from_files(configs[0].backbone))
    est = engine.estimate_training(configs, 60)
    area = (64 / 128) ** 2
    assert est.run_seconds == pytest.approx([60 * 2 * (2 + d) * area * rate for d in (0, 5)])
    assert est.pretrain_seconds == 0 and est.seconds == pytest.approx(sum(est.run_seconds)) and est.seconds > 0
    assert engine.estimate_training(configs, 120).seconds == pytest.approx(2 * est.seconds)
    assert engine.estimate_training([c.replace(epochs=4) for c in configs], 60).seconds == pytest.approx(2 * est.seconds)
    assert est.basis.startswith("Rough: 60 images × up to 2 epochs × 2 run(s)")
    assert f"measured from {len(_rates_from_files('alexnet'))} cached alexnet run(s) on this machine" in est.basis


def test_without_history_the_estimate_is_the_stated_default_plus_pretraining_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "empty"))
    cfg = engine.RunConfig(**{**TINY_RUN, "init": "builtin", "image_size": 96})
    est = engine.estimate_training([cfg.replace(depth=1)], 100)
    rate = 0.007 * 0.4  # the stated default for ResNet-18 at 128 px, times AlexNet's relative compute
    area = (96 / 128) ** 2
    assert est.run_seconds == pytest.approx([100 * 2 * (2 + 1) * area * rate])
    assert est.pretrain_seconds == pytest.approx(SOURCE_IMAGES * SOURCE_EPOCHS * area * rate * (2 + 5) * 1.5)
    assert "conservative default of 2.8 ms" in est.basis and "to pretrain the built-in alexnet backbone once" in est.basis
    assert estimate.cost_units(cfg.replace(depth=1, augment=True)) == pytest.approx(2 + 1 + 4 / 3)


def test_home_shows_the_estimate_beside_train(trained_selection):
    at = _home(Selection(trained_selection.config, (*trained_selection.depths, 3)))
    assert _train_label(at) == "Train 1 run(s) (depths 3)"
    est = engine.estimate_training([trained_selection.config.replace(depth=3)],
                                   int(_summary_table(at).loc["all classes", "images"]))
    assert f"Estimated time: **{engine.duration(est.seconds)}** (rough)" in [m.value for m in at.markdown]
    assert est.basis in [c.value for c in at.caption]


# --- 3 · Train: a background job ---------------------------------------------------------------------------------------

def test_sweep_progress_weights_the_parts_by_their_estimates_and_reports_pretraining_once():
    seen: list[tuple[float, str]] = []
    configs = [engine.RunConfig(**{**TINY_RUN, "init": "builtin"}).replace(depth=d) for d in (0, 5)]
    tracker = SweepProgress(configs, [10.0, 30.0], 20.0, lambda f, t: seen.append((f, t)))
    tracker.on(0, Progress(2, 4, 5, 10, "pretrain:pretrain"))  # pretraining 3/8 done
    tracker.on(0, Progress(1, 2, 2, 4, "train"))  # run 0 a quarter done: the pretraining is over
    tracker.on(0, Progress(1, 1, 1, 1, engine.RUN_DONE))
    tracker.say("Pretraining the built-in alexnet backbone on the phantom source corpus (once)")  # said every run
    tracker.say("Preparing images")
    tracker.on(1, Progress(2, 2, 2, 4, "train"))  # run 1 three quarters done
    assert [f for f, _ in seen] == pytest.approx([20 * 3 / 8 / 60, (20 + 2.5) / 60, 30 / 60, 30 / 60, (30 + 22.5) / 60])
    assert [t.split(" · ")[0] for _, t in seen] == ["0 of 2 runs trained"] * 2 + ["1 of 2 runs trained"] * 3
    assert seen[3][1] == "1 of 2 runs trained · preparing images"
    assert [t for _, t in seen if "pretraining" in t] == [
        "0 of 2 runs trained · pretraining the built-in alexnet backbone once: epoch 2 of 4"]
    assert seen[-1][1] == "1 of 2 runs trained · depth 5: epoch 2 of 2, batch 2 of 4"


def _train_key(sel: Selection) -> str:
    return "train:" + stable_hash(sel.config.replace(depth=0, fold=0).key_dict(), 16)


def test_training_runs_as_a_job_that_disables_train_and_cancels_leaving_the_store_intact(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))  # nothing trained
    reached, gate = threading.Event(), threading.Event()
    real = SweepProgress.on

    def on(self, i, p):  # hold the job at the first batch of the second run, after the first is stored
        real(self, i, p)
        if len(self.configs) == 2 and i == 1 and p.phase == "train":
            reached.set()
            gate.wait(30)

    monkeypatch.setattr(SweepProgress, "on", on)
    sel = Selection(engine.RunConfig(**{**TINY_RUN, "builtin_per_class": 14}), (0, 5))
    first, second = sel.configs()
    at = _home(sel)
    assert _count(at) == (0, 2)
    at.button(key="home_train").click().run()
    assert not at.exception
    job = get_job(_train_key(sel))
    assert job is not None and job.running
    try:
        assert reached.wait(60), job.error
        at.run()
        bar = at.get("progress")[0].proto.text
        assert bar.startswith("Training 2 run(s): 1 of 2 runs trained · depth 5: epoch 1 of 2, batch 1 of ")
        assert at.button(key="home_train").disabled
        assert _count(at) == (1, 2)  # the first run is stored
        other = _home(sel)  # another session: the experiment is training, so its Train is disabled too
        assert other.button(key="home_train").disabled and other.get("progress")
        at.button(key="home_train_cancel").click().run()
        assert job.cancel_requested
    finally:
        gate.set()
    assert job.wait(30) and job.status == "cancelled"
    # the store: the run finished before the cancel intact, the interrupted one neither listed nor damaged
    done = engine.get_run(first)
    assert done is not None and done.check("full") is done
    assert list(engine.list_runs()["run"]) == [done.id] and engine.damaged_runs().empty
    assert engine.get_run(second) is None
    assert [p.name for p in runs_root().glob("*/result.json")] == ["result.json"]
    at.run()
    assert not at.exception and not at.get("progress")
    assert any(i.value.startswith("Cancelled: the rest of the training was not computed") for i in at.info)
    assert _count(at) == (1, 2)
    assert _train_label(at) == "Train 1 run(s) (depths 5)" and not at.button(key="home_train").disabled

    at.button(key="home_train").click().run()  # the rest trains, resuming the interrupted run
    again = get_job(_train_key(sel))
    assert again is not job and again.wait(60) and again.status == "done", again.error
    at.run()
    assert not at.exception and _count(at) == (2, 2)
    assert [s.value for s in at.success][:2] == [
        f"Trained 1 run(s) in {again.elapsed:.0f} s.",
        "Everything is trained: open Training, Performance, Features, Layers or Support Regions."]
    assert set(at.dataframe[-1].value["run"]) == {done.id, engine.get_run(second).id}  # the cached runs table

    history = engine.get_run(second).dir / "history.json"  # damage a run: Home retrains it through the same job
    history.write_bytes(history.read_bytes() + b" ")
    at.run()
    assert "is damaged" in at.error[0].value
    at.button(key="home_retrain").click().run()
    fixed = get_job(_train_key(sel))
    assert fixed is not again and fixed.wait(60) and fixed.status == "done", fixed.error
    at.run()
    assert not at.exception and not at.error and _count(at) == (2, 2)
    assert at.success[0].value == f"Trained 1 run(s) in {fixed.elapsed:.0f} s (1 more came from the cache)."
    assert engine.get_run(second).check("full") and engine.damaged_runs().empty


def test_the_sidebar_follows_the_choice_at_once(trained_selection):
    at = _home(trained_selection)
    epochs = next(n for n in at.number_input if n.label.startswith("Epochs"))
    epochs.set_value(7).run()
    assert not at.exception
    assert any("· 7 epochs ·" in c.value for c in at.sidebar.caption)


# --- "Prepare every view": a background job with progress, time left and cancel --------------------------------------

PREPARE_LABEL = "Prepare every view (for a live demo)"


def _runs_of(sel: Selection) -> list[engine.Run]:
    return [engine.get_run(cfg) for cfg in sel.configs()]


def _prepare_job(sel: Selection):
    """The prepare job of the selection's runs (one per set of runs, whichever session started it)."""
    return get_job("prepare:" + stable_hash(sorted(r.id for r in _runs_of(sel)), 16))


def test_prepare_is_offered_only_once_every_run_is_trained(trained_selection):
    at = _home(trained_selection)
    assert at.button(key="home_prepare").label == PREPARE_LABEL and not at.button(key="home_prepare").disabled
    at = _home(Selection(trained_selection.config, (*trained_selection.depths, 3)))  # depth 3 is not trained
    assert _train_label(at) == "Train 1 run(s) (depths 3)"
    assert PREPARE_LABEL not in [b.label for b in at.button]


def test_prepare_runs_in_the_background_and_reports_how_long_it_took(trained_selection, monkeypatch):
    # two cheap real steps (tests/test_prepare.py runs them all)
    monkeypatch.setattr(prepare, "STEPS", tuple(s for s in prepare.STEPS if s.name in ("evaluation", "filters")))
    at = _home(trained_selection)
    at.button(key="home_prepare").click().run()
    assert not at.exception
    job = _prepare_job(trained_selection)
    assert job is not None and job.wait(120)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception and not at.get("progress")
    done = [s.value for s in at.success if s.value.startswith("Every view")]
    assert done == [(f"Every view of the 2 depth(s) is ready, prepared in {job.result.seconds:.0f} s: every page "
                     "now reads them from the cache.")]
    assert [s.name for s in job.result.steps] == ["evaluation", "filters"]
    from tests.test_prepare import recorded_writes  # here: that module loads the whole explanation stack

    runs = _runs_of(trained_selection)
    assert job.result.runs == tuple(r.id for r in runs)
    with recorded_writes() as writes:  # what the job computed is in the runs' caches
        for run in runs:
            evaluate_run(run)
            for view in FILTER_VIEWS:
                run_filter_grid(run, view)
    assert writes == []


def test_a_running_prepare_shows_progress_and_time_left_and_can_be_cancelled(trained_selection, monkeypatch):
    gate, calls = threading.Event(), []

    def slow(run, ctx):
        calls.append(run.config.depth)
        ctx.tick(0.5, "halfway")
        gate.wait(30)

    monkeypatch.setattr(prepare, "STEPS", (prepare.Step("slow", "Slow step", 1.0, slow),))
    at = _home(trained_selection)
    at.button(key="home_prepare").click().run()
    job = _prepare_job(trained_selection)
    deadline = time.monotonic() + 30
    while job.fraction < 0.25 and time.monotonic() < deadline:
        time.sleep(0.05)
    at.run()
    bars = at.get("progress")
    assert len(bars) == 1 and bars[0].proto.text.startswith("Prepare 2 depth(s): Slow step · depth 0 (1/2) · halfway · 25% · about ")
    assert bars[0].proto.text.endswith(" s left")
    assert at.button(key="home_prepare").disabled  # one prepare at a time
    at.button(key="home_prepare_cancel").click().run()
    assert job.cancel_requested
    gate.set()
    assert job.wait(30) and job.status == "cancelled"
    assert calls == [0]  # stopped before the next run
    at.run()
    assert not at.exception and not at.get("progress")
    assert any(i.value.startswith("Cancelled: the rest of the views was not computed") for i in at.info)
    assert not at.button(key="home_prepare").disabled
