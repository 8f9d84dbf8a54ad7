"""Sweeps on Ray: the runs in-process gives, a killed worker retried and resumed, the shared-store check, CLI, Home."""
from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray

import engine
import engine.runs
from engine.jobs import running_jobs
from engine.cli import main
from engine.ray_executor import STORE_CHECK, RayExecutor, SharedStoreError, machine_resources, train_task
from engine.sweep import RUN_DONE, executor_from_env

# The tasks below are defined here, in a module Ray workers cannot import by name: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: A tiny experiment: AlexNet with a 32-unit head at 64 px on 16 built-in images per class, from scratch.
TINY = dict(data="builtin", builtin_per_class=16, init="scratch", backbone="alexnet", head_width=32, image_size=64,
            epochs=1, patience=0, batch_size=8, lr=1e-3)
CRASH_MARKER = "crash-once"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance, sized to the machine, for the module's tests (which train on the CPU, one core a run)."""
    ex = RayExecutor(cpus_per_run=1, gpus_per_run=0)
    ex.connect()
    assert ex.started and ray.is_initialized()
    yield ex
    ex.close()
    assert not ray.is_initialized()


def _sweep(home: Path, monkeypatch, configs, executor=None, status=None):
    """Run a sweep with ``home`` as the run store; the rows and every progress report, per run index."""
    monkeypatch.setenv("LUNGLENS_HOME", str(home))
    reports: dict[int, list[engine.Progress]] = {}
    rows = engine.run_sweep(configs, lambda i, cfg: reports.setdefault(i, []).append, status=status, executor=executor)
    return rows, reports


def _same_run(a: engine.Run, b: engine.Run) -> None:
    """Two runs trained from the same config and data agree exactly: history, test criteria, predictions."""
    assert a.id == b.id
    pd.testing.assert_frame_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"))
    assert a.result["test"] == b.result["test"] and a.result["best_epoch"] == b.result["best_epoch"]
    same = [c for c in a.predictions.columns if c not in ("path", "mask", "lung_mask")]  # those name each store's copy
    pd.testing.assert_frame_equal(a.predictions[same], b.predictions[same])
    assert a.predictions["prob_covid"].nunique() > 1  # a model that learnt something, not a constant


def test_two_runs_on_ray_match_in_process(local_ray, tmp_path, monkeypatch):
    configs = engine.sweep_configs(engine.RunConfig(**TINY), [2, 5])
    local, _ = _sweep(tmp_path / "local", monkeypatch, configs)
    local_runs = [engine.Run(r.run.dir) for r in local]  # read back before the store switches

    messages: list[str] = []
    rows, reports = _sweep(tmp_path / "ray", monkeypatch, configs, local_ray, messages.append)
    assert [r.run.config.depth for r in rows] == [2, 5] and not any(r.cached for r in rows)
    assert all(r.run.dir.parent == tmp_path / "ray" / "runs" for r in rows)
    for mine, theirs in zip(rows, local_runs):
        _same_run(mine.run, theirs)
    # Progress came back from the workers: batches and the epoch end of each run, then the sweep's final report.
    for i in (0, 1):
        phases = [p.phase for p in reports[i]]
        assert {"train", "epoch"} <= set(phases) and phases[-1] == RUN_DONE and reports[i][-1].fraction == 1.0
    assert any("Training alexnet at depth 5" in m for m in messages)
    assert not list((tmp_path / "ray" / STORE_CHECK).iterdir())  # the driver's token is removed at the end

    again, reports = _sweep(tmp_path / "ray", monkeypatch, configs, local_ray)
    assert all(r.cached for r in again) and not reports  # cached runs are skipped by the driver: no task ran
    assert [r.run.id for r in again] == [r.run.id for r in rows]


def crash_once_task(*args, **kwargs):
    """``train_task`` whose worker process dies right after the first epoch's checkpoint while the marker exists."""
    marker = Path(os.environ["LUNGLENS_HOME"]) / CRASH_MARKER
    real = engine.runs.train

    def train(*a, **k):
        bound = inspect.signature(real).bind(*a, **k)
        progress = bound.arguments.get("progress")

        def dying(p):
            if progress is not None:
                progress(p)
            if p.phase == "epoch" and marker.exists():
                marker.unlink()
                os._exit(1)  # as if the node lost the worker: no exception, no cleanup

        bound.arguments["progress"] = dying
        return real(*bound.args, **bound.kwargs)

    engine.runs.train = train
    try:
        return train_task(*args, **kwargs)
    finally:
        engine.runs.train = real


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(local_ray, tmp_path, monkeypatch):
    cfg = engine.RunConfig(**{**TINY, "epochs": 2, "depth": 3})
    (local,), _ = _sweep(tmp_path / "local", monkeypatch, [cfg])
    local_run = engine.Run(local.run.dir)

    home = tmp_path / "ray"
    home.mkdir()
    (home / CRASH_MARKER).write_text("die once")
    messages: list[str] = []
    crashing = RayExecutor(cpus_per_run=1, gpus_per_run=0, max_retries=1, task=crash_once_task)
    (row,), reports = _sweep(home, monkeypatch, [cfg], crashing, messages.append)
    assert not (home / CRASH_MARKER).exists()  # the first attempt died after epoch 1
    assert any("resuming from the checkpoint" in m for m in messages)  # the retry found epoch 1's checkpoint
    assert not row.cached and row.run.result["epochs_run"] == 2
    assert not (row.run.dir / "checkpoint.pt").exists()
    _same_run(row.run, local_run)  # the resumed run is the one an uninterrupted training gives
    # The retry trained epoch 2 only (epoch 1's report, sent just before the worker died, may be lost with it).
    assert [p.epoch for p in reports[0] if p.phase == "epoch"] in ([1, 2], [2])


def dying_task(*args, **kwargs):
    """A task whose worker process dies at once, every time."""
    os._exit(1)


def test_a_worker_killed_every_time_fails_with_a_clear_error(local_ray, tmp_path, monkeypatch):
    never = RayExecutor(cpus_per_run=1, gpus_per_run=0, max_retries=1, task=dying_task)
    with pytest.raises(engine.LungLensError, match=r"1 of 1 run\(s\) failed on Ray.*worker died 2 time"):
        _sweep(tmp_path, monkeypatch, [engine.RunConfig(**TINY)], never)


def elsewhere_task(*args, **kwargs):
    """``train_task`` on a worker whose LUNGLENS_HOME is another folder (a node that does not mount the store)."""
    os.environ["LUNGLENS_HOME"] = os.environ["LUNGLENS_HOME"] + "-not-shared"
    return train_task(*args, **kwargs)


def test_a_worker_that_cannot_see_the_store_says_so(local_ray, tmp_path, monkeypatch):
    blind = RayExecutor(cpus_per_run=1, gpus_per_run=0, max_retries=0, task=elsewhere_task)
    with pytest.raises(engine.LungLensError) as err:
        _sweep(tmp_path / "ray", monkeypatch, [engine.RunConfig(**TINY)], blind)
    text = str(err.value)
    assert "LUNGLENS_HOME" in text and "shared filesystem" in text and "-not-shared" in text
    assert not (tmp_path / "ray" / "runs").exists() or not list((tmp_path / "ray" / "runs").glob("*/result.json"))
    assert issubclass(SharedStoreError, engine.LungLensError)


def test_resources_default_and_infeasible(local_ray):
    cpus, gpus = machine_resources()
    # By default a run takes one GPU and its share of the cores, or all the cores where there is no GPU.
    assert RayExecutor().resources() == ((float(max(1, cpus // gpus)), 1.0) if gpus else (float(cpus), 0.0))
    assert RayExecutor(cpus_per_run=1, gpus_per_run=0).resources() == (1.0, 0.0)
    with pytest.raises(engine.ConfigError, match=f"No Ray node has 1 CPUs and {gpus + 1} GPUs"):
        RayExecutor(cpus_per_run=1, gpus_per_run=gpus + 1).resources()
    with pytest.raises(engine.ConfigError, match=f"No Ray node has {cpus + 1} CPUs"):
        RayExecutor(cpus_per_run=cpus + 1, gpus_per_run=0).resources()
    with pytest.raises(engine.ConfigError, match="--cpus-per-run must be more than 0"):
        RayExecutor(cpus_per_run=0)


def test_cli_sweep_on_ray(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    args = ["sweep", "--data", "builtin", "--per-class", "16", "--init", "scratch", "--backbone", "alexnet",
            "--head-width", "32", "--image-size", "64", "--epochs", "1", "--patience", "0", "--batch-size", "8",
            "--lr", "1e-3", "--depths", "4", "--json"]
    assert main([*args, "--executor", "ray", "--cpus-per-run", "1", "--gpus-per-run", "0"]) == 0
    out = capsys.readouterr()
    (row,) = json.loads(out.out)
    assert row["depth"] == 4 and row["cached"] is False
    assert "[1/1] alexnet depth 4" in out.err and "Submitting 1 run(s) to Ray (1 CPUs, 0 GPUs each)" in out.err
    assert main([*args, "--executor", "ray", "--cpus-per-run", "1", "--gpus-per-run", "0"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["cached"] is True
    assert ray.is_initialized()  # the CLI leaves a Ray instance it did not start running

    assert main([*args, "--cpus-per-run", "1"]) == 2
    assert "apply to --executor ray only" in capsys.readouterr().err


def test_executor_from_env(monkeypatch):
    monkeypatch.delenv("LUNGLENS_RAY_ADDRESS", raising=False)
    assert executor_from_env() is None
    monkeypatch.setenv("LUNGLENS_RAY_ADDRESS", "local")
    monkeypatch.setenv("LUNGLENS_RAY_CPUS_PER_RUN", "1")
    ex = executor_from_env()
    assert isinstance(ex, RayExecutor) and ex.address is None and ex.cpus_per_run == 1.0 and ex.gpus_per_run is None
    monkeypatch.setenv("LUNGLENS_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("LUNGLENS_RAY_GPUS_PER_RUN", "half")
    with pytest.raises(engine.ConfigError, match="LUNGLENS_RAY_GPUS_PER_RUN='half' is not a number"):
        executor_from_env()


def test_home_trains_through_ray_when_the_dashboard_has_an_address(local_ray, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboard.state import Selection

    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path))
    monkeypatch.setenv("LUNGLENS_RAY_ADDRESS", "local")
    monkeypatch.setenv("LUNGLENS_RAY_CPUS_PER_RUN", "1")
    monkeypatch.setenv("LUNGLENS_RAY_GPUS_PER_RUN", "0")
    submitted: list[list[int]] = []
    real = RayExecutor.train

    def spy(self, jobs, *args):
        submitted.append([job.config.depth for job in jobs])
        yield from real(self, jobs, *args)

    monkeypatch.setattr(RayExecutor, "train", spy)
    sel = Selection(engine.RunConfig(**TINY), (1,))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"), default_timeout=300)
    at.session_state["selection"] = sel
    at.run()
    (button,) = [b for b in at.button if b.label.startswith("Train 1 run(s)")]
    button.click().run()
    assert not at.exception
    for job in running_jobs():  # Home trains in a background job: wait for it before Ray shuts down
        assert job.wait(300) and job.status == "done", job.error
    at.run()
    assert submitted == [[1]]
    assert any("Everything is trained" in s.value for s in at.success)
    (run,) = [engine.get_run(cfg) for cfg in sel.configs()]
    assert run is not None and run.result["epochs_run"] == 1


def test_without_ray_the_cli_says_how_to_install_it(tmp_path):
    import subprocess

    code = ("import sys; sys.modules['ray'] = None; from engine.cli import main; "  # as if Ray were not installed
            "sys.exit(main(['sweep', '--executor', 'ray', '--per-class', '10', '--epochs', '1']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "LUNGLENS_HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert "error: The Ray executor needs Ray" in done.stderr and "pip install" in done.stderr
    assert "Traceback" not in done.stderr
