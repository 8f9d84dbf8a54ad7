"""``engine.prepare`` on the tiny trained runs: every step caches what the pages read (each page then opens without
computing anything), a second prepare computes nothing, cancel stops between steps, and the ``prepare`` CLI.

Evidence that a view is served from the cache is timing-independent: every cached artifact is written through
``engine.store.atomic_write_bytes``, which the tests wrap to record each write under the runs folder.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.layers import sample_rows
from engine import prepare, store
from engine.cli import main
from engine.errors import DataError
from engine.explain import METHODS
from engine.explain.report import Cancelled, ReportSettings, cached_method_report
from engine.layers import layer_choices
from engine.prepare import PrepareSettings, Step, prepare_experiment, prepare_runs
from engine.runs import runs_root
from engine.training import Progress
from tests.apptest_helpers import open_page

# The tiny experiment comes from the trained_selection fixture: importing tests.conftest a second time (as a module
# of its own) would point LUNGLENS_HOME at a new, empty cache.

#: Every step, restricted to the pages' first views plus one more choice where a page offers several: two
#: projections, two split-level methods, two methods on the default image, the top neurons only, and the explanation
#: report with one cheap method on a few images (its defaults score LIME and occlusion on the whole test split).
LIGHT_REPORT = ReportSettings(faithfulness_images=2, road_images=1, sanity_images=1, deletion_steps=4)
LIGHT = PrepareSettings(projections=(("pca", 2), ("pca", 3)), split_methods=("gradcam", "saliency"),
                        image_methods=("gradcam", "saliency"), report_methods=("gradcam",), report=LIGHT_REPORT,
                        neuron_picks=("top",))


@contextmanager
def recorded_writes() -> Iterator[list[Path]]:
    """Every file written under the runs folder while the block runs (cached artifacts all go through this)."""
    writes: list[Path] = []
    real = store.atomic_write_bytes

    def record(path, data):
        if runs_root() in Path(path).parents:
            writes.append(Path(path))
        return real(path, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "atomic_write_bytes", record)
        yield writes


def _files() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in runs_root().rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(trained_selection) -> list[engine.Run]:
    return [engine.get_run(cfg) for cfg in trained_selection.configs()]


@pytest.fixture(scope="module")
def prepared(runs):
    """One full prepare of the tiny runs (light report), with every progress report and the files it wrote."""
    calls: list[tuple[float, str]] = []
    with recorded_writes() as writes:
        result = prepare_runs(runs, progress=lambda f, t: calls.append((f, t)), settings=LIGHT)
    return result, calls, list(writes)


def test_prepare_runs_every_step_with_monotone_progress(prepared, runs):
    result, calls, writes = prepared
    assert [s.name for s in result.steps] == list(prepare.STEP_NAMES)
    assert result.runs == tuple(r.id for r in runs)
    assert all(s.runs == 2 and s.seconds >= 0 and not s.notes for s in result.steps)
    assert result.seconds >= sum(s.seconds for s in result.steps) - 1e-6
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0]
    for step in prepare.STEPS:
        assert any(t.startswith(step.label) for _, t in calls), step.name
    assert writes  # it did compute: the tiny runs came with no artifacts


def test_the_engine_calls_of_the_pages_are_served_from_the_cache(prepared, runs):
    from engine.baselines import compare_methods
    from engine.calibration import run_calibration, run_temperature_fit
    from engine.evaluation import evaluate_run
    from engine.explain import run_heatmaps, run_image_explanation, run_masks
    from engine.explain.report import run_localisation
    from engine.layers import (
        run_activation_maps,
        run_filter_grid,
        run_guided_backprop,
        run_guided_backprop_across_layers,
    )
    from engine.ood import ood_reference
    from engine.projections import run_projection

    with recorded_writes() as writes:
        for run in runs:
            evaluate_run(run), compare_methods(run), run_calibration(run), run_temperature_fit(run)
            run_calibration(run, temperature=True), ood_reference(run)
            for method, dims in LIGHT.projections:
                run_projection(run, "lbp", method, dims), run_projection(run, "deep", method, dims)
            for view in ("before", "after", "difference"):
                run_filter_grid(run, view)
            # the Layers page's first image (first test row), middle conv layer and fig. 10 sample, chosen here the
            # page's way
            preds = run.predictions
            row = int(np.flatnonzero((preds["split"] == "test").to_numpy())[0])
            names = [n for n, _ in layer_choices(run.load_model())]
            layer = names[len(names) // 2]
            run_guided_backprop(run, row, layer, 8, "top", 0), run_activation_maps(run, row, layer)
            run_guided_backprop_across_layers(run, sample_rows(preds, "test", run.positive, 8, 0), "top", 0)
            run_masks(run, "test")
            for method in LIGHT.split_methods:
                for target in ("pred", "true"):
                    run_heatmaps(run, method, "test", target)
                    run_localisation(run, 0.7, method, target)
            for method in LIGHT.image_methods:  # the first test image, the predicted class
                run_image_explanation(run, 0, "test", method, "pred")
            for method in LIGHT.report_methods:
                assert cached_method_report(run, method, LIGHT_REPORT) is not None
    assert writes == []


def test_a_second_prepare_computes_nothing(prepared, runs):
    before = _files()
    with recorded_writes() as writes:
        result = prepare_runs(runs, settings=LIGHT)
    assert writes == []
    assert _files() == before  # no lock file, no rewrite either
    assert [s.name for s in result.steps] == list(prepare.STEP_NAMES)


@pytest.mark.parametrize("section", [None, "Consistency degree", "Same image across depths"])
def test_after_prepare_the_support_page_computes_nothing(prepared, app, trained_selection, section):
    with recorded_writes() as writes:
        at = open_page(app, trained_selection, "../pages/support_regions.py",
                       **({"support_section": section} if section else {}))
    assert not at.error
    assert writes == []


def test_after_prepare_the_other_pages_compute_nothing(prepared, app, trained_selection):
    with recorded_writes() as writes:
        for page in ("training", "performance", "features", "layers"):
            at = open_page(app, trained_selection, f"../pages/{page}.py")
            assert not at.error, page
            at.select_slider(key=f"{page}_depth").set_value(0).run()  # the other depth
            assert not at.exception and not at.error, page
    assert writes == []


def test_the_defaults_are_every_choice_the_pages_offer():
    d = prepare.DEFAULT_SETTINGS
    assert set(d.projections) == {(m, n) for m in ("pca", "kpca-linear", "kpca-rbf", "tsne") for n in (2, 3)}
    assert d.split_methods == tuple(n for n, m in METHODS.items() if m.cost == "fast") and "gradcam" in d.split_methods
    assert d.image_methods == d.report_methods == tuple(METHODS)
    assert d.report == ReportSettings() and d.threshold == 0.7  # the page's report settings and Wan's threshold
    assert d.neuron_picks == ("top", "random")
    # what the Support Regions page passes for a method: its knobs' defaults (LIME's 1,000 samples), else nothing
    assert prepare.method_defaults("lime") == {"n_samples": 1000} and prepare.method_defaults("gradcam") == {}


def test_fig10_rows_are_the_layers_pages_sample(runs):
    for run in runs:
        assert prepare.fig10_rows(run) == sample_rows(run.predictions, "test", run.positive, 8, 0)


def _fake_steps(calls: list[str], cancel_after: str | None = None, failing: str | None = None):
    def fn(name):
        def run(target, ctx):
            calls.append(f"{name}:{'all' if isinstance(target, list) else target.config.depth}")
            if name == failing and target.config.depth == 0:
                raise DataError("no validation split")
        return run
    return (Step("a", "Step A", 1.0, fn("a")), Step("b", "Step B", 3.0, fn("b")),
            Step("c", "Step C", 2.0, fn("c"), "experiment"))


def test_progress_follows_the_weights_and_cancel_stops_between_steps(runs, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(prepare, "STEPS", _fake_steps(calls))
    monkeypatch.setattr(prepare, "STEP_NAMES", ("a", "b", "c"))
    fractions: list[float] = []
    prepare_runs(runs, progress=lambda f, t: fractions.append(f))
    assert calls == ["a:0", "a:5", "b:5", "b:0", "c:all"]  # every other step backwards: it reuses the last model
    # weights 1, 3 and 2 per run on 2 runs: 12 in all; each unit starts where the previous ones end
    assert fractions == pytest.approx([0, 1 / 12, 2 / 12, 5 / 12, 8 / 12, 1.0])

    calls.clear()
    with pytest.raises(Cancelled):
        prepare_runs(runs, cancel=lambda: "b:5" in calls)
    assert calls == ["a:0", "a:5", "b:5"]


def test_a_view_that_does_not_apply_is_noted_and_the_rest_goes_on(runs, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(prepare, "STEPS", _fake_steps(calls, failing="a"))
    monkeypatch.setattr(prepare, "STEP_NAMES", ("a", "b", "c"))
    result = prepare_runs(runs, steps=["a", "c"])
    assert calls == ["a:0", "a:5", "c:all"]
    assert [s.name for s in result.steps] == ["a", "c"]
    assert result.steps[0].notes == ("depth 0: no validation split",) and result.steps[1].notes == ()


def test_unknown_steps_and_no_runs_are_clear_errors(runs):
    with pytest.raises(engine.ConfigError, match="Unknown prepare step.*'nope'.*choose from evaluation, "):
        prepare_runs(runs, steps=["nope"])
    with pytest.raises(engine.ConfigError, match="No trained run to prepare"):
        prepare_runs([])


def test_cancel_inside_the_report_stops_it(runs):
    polls = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 2  # let the step start, then stop inside the report

    with pytest.raises(Cancelled):
        prepare_runs(runs[:1], steps=["report"], cancel=cancel,
                     settings=PrepareSettings(report_methods=("hirescam",), report=LIGHT_REPORT))
    assert cached_method_report(runs[0], "hirescam", LIGHT_REPORT) is None  # nothing partial was cached


def test_cli_prepares_named_runs(prepared, runs, capsys):
    ids = [r.id for r in runs]
    assert main(["prepare", "--run", ids[0], "--run", ids[1], "--steps", "evaluation,filters"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["step", "runs", "seconds"]
    assert [line.split()[0] for line in lines[1:3]] == ["evaluation", "filters"]
    assert lines[3].startswith("total: ") and "for 2 run(s)" in lines[3]

    assert main(["prepare", "--run", ids[0], "--steps", "filters,evaluation", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] == ids[:1] and data["trained"] == 0
    assert [s["step"] for s in data["steps"]] == ["evaluation", "filters"]  # registry order


def test_cli_prepares_an_experiment_by_its_options(prepared, runs, capsys):
    # the tiny experiment (tests/conftest.py's TINY_RUN) spelled as options over the demo preset (prepare's default)
    args = ["--data", "builtin", "--per-class", "20", "--backbone", "alexnet", "--init", "scratch", "--image-size",
            "64", "--head-width", "16", "--epochs", "2", "--patience", "0", "--batch-size", "16", "--lr", "1e-3",
            "--weight-decay", "0", "--scheduler", "plateau", "--depths", "0,5"]
    assert main(["prepare", *args, "--steps", "evaluation", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] == [r.id for r in runs] and data["trained"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--steps", "evaluation,nope"], "Unknown prepare step(s) 'nope': choose from evaluation, depth-curves, "),
    (["--run", "no-such-run"], "No finished run 'no-such-run'"),
    (["--run", "x", "--depths", "0"], "--run names trained runs; --depths describe an experiment"),
])
def test_cli_errors(argv, message, capsys):
    assert main(["prepare", *argv]) == 2
    assert message in capsys.readouterr().err


def test_prepare_experiment_trains_the_missing_runs_then_prepares_the_trained(runs, monkeypatch):
    trained: list[engine.RunConfig] = []

    def fake_sweep(configs, progress, status=None):  # training itself is run_sweep's (tests/test_runs.py)
        trained.extend(configs)
        report = progress(0, configs[0])
        report(Progress(1, 2, 1, 1, "pretrain:train"))
        for epoch in (1, 2):
            report(Progress(epoch, 2, 1, 1, "train"))
        return []

    monkeypatch.setattr(prepare, "run_sweep", fake_sweep)
    config = runs[0].config
    calls: list[tuple[float, str]] = []
    result = prepare_experiment(config, (0, 3), steps=["evaluation"], progress=lambda f, t: calls.append((f, t)))
    assert [(c.depth, c.fold) for c in trained] == [(3, 0)]  # depth 0 is cached
    assert result.trained == 1 and result.runs == (runs[0].id,)  # depth 3 was not really trained here
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # one run to train (TRAIN_WEIGHT) against the evaluation step of two runs: training ends at their ratio
    share = prepare.TRAIN_WEIGHT / (prepare.TRAIN_WEIGHT + 2 * prepare.STEPS[0].weight)
    assert max(f for f, t in calls if t.startswith("Training")) == pytest.approx(share)
    assert "pretraining the built-in backbone (epoch 1 of 2)" in calls[0][1]

    with pytest.raises(Cancelled):  # a cancel is heard at the next batch of training
        prepare_experiment(config, (0, 3), cancel=lambda: True)
