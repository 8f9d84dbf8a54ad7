"""Sweeps on Ray: each uncached run is one Ray task, on a local Ray instance or a cluster sharing ``LUNGLENS_HOME``.

The driver (the process that calls ``run_sweep``) skips cached runs, submits one task per missing run with the
resources asked for, and turns the tasks' progress reports (sent to a small actor) into the usual progress callbacks,
in its own thread. Workers train through ``train_run``, so the per-run file lock still makes a run train once, and a
retried task (a worker or node that died) resumes from the checkpoint of its last finished epoch.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:
    import ray
    from ray.exceptions import NodeDiedError, RayError, RayTaskError, WorkerCrashedError
except ImportError as exc:  # Ray is an optional extra
    from .errors import ConfigError

    raise ConfigError("The Ray executor needs Ray: install it with `pip install -e '.[ray]'` in the LungLens checkout "
                      "(or `pip install ray`), or train with --executor in-process.") from exc

from .config import RunConfig
from .errors import ConfigError, DataError, LungLensError
from .runs import Run, dataset_for, get_run, run_id, runs_root, train_run
from .store import atomic_write_bytes, home
from .sweep import Job, ProgressFactory, StatusFn
from .training import Progress

#: Folder under LUNGLENS_HOME where a driver leaves the token its workers look for.
STORE_CHECK = "ray-store-check"
#: Seconds between two batch-level progress reports of one run (epoch ends are always reported).
REPORT_EVERY = 0.25
#: Seconds the driver waits for finished tasks before handing on the progress received meanwhile.
POLL = 0.2
README_HINT = "see README, 'Sweeps on Ray'"


class SharedStoreError(LungLensError):
    """A Ray worker that does not see the driver's run store (LUNGLENS_HOME not on a shared filesystem)."""


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Collects the reports of a sweep's tasks until the driver drains them."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, Any]] = []

    def report(self, index: int, kind: str, payload: Any) -> None:
        """Queue one report of run ``index``: ``progress`` (a Progress as a dict), ``status`` (a str) or ``flush``."""
        self.messages.append((index, kind, payload))

    def drain(self) -> list[tuple[int, str, Any]]:
        """Every report since the last drain, oldest first."""
        out, self.messages = self.messages, []
        return out


class _Reporter:
    """A worker's side of the board: throttled progress and status messages of one run."""

    def __init__(self, board: Any, index: int) -> None:
        self.board, self.index, self.last = board, index, 0.0

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase.endswith("epoch") or p.batch == p.batches or now - self.last >= REPORT_EVERY:
            self.last = now
            # Fire and forget (calls arrive in order); plain values, so the board never imports the engine or torch.
            self.board.report.remote(self.index, "progress", dataclasses.asdict(p))

    def status(self, message: str) -> None:
        self.board.report.remote(self.index, "status", message)

    def flush(self) -> None:
        ray.get(self.board.report.remote(self.index, "flush", None))  # returns once every earlier report is queued


def check_store(token: str, driver: str) -> Path:
    """Raise SharedStoreError unless this process sees the token the driver ``driver`` wrote; return LUNGLENS_HOME."""
    root = Path(os.environ.get("LUNGLENS_HOME") or Path.home() / ".cache" / "lunglens").expanduser()
    if not (root / STORE_CHECK / token).is_file():
        raise SharedStoreError(
            f"This Ray worker (on {socket.gethostname()}) cannot see the run store of the sweep's driver "
            f"(on {driver}): {root / STORE_CHECK / token} is missing here. LUNGLENS_HOME ({root}) must be a folder "
            f"on a shared filesystem (NFS or similar) mounted at the same path on every Ray node, with the datasets "
            f"on it too; {README_HINT}.")
    return root


def train_task(config: dict, index: int, board: Any, token: str, driver: str, expected: Mapping[str, str],
               options: Mapping[str, Any]) -> tuple[str, bool, float]:
    """One Ray task: check the shared store, train (or resume) the run; its id, whether this task trained it, seconds.

    ``expected``: the run id and data fingerprint the driver computed, which this worker must find too.
    """
    t0 = time.perf_counter()
    check_store(token, driver)
    cfg = RunConfig.from_dict(config)
    reporter = _Reporter(board, index)
    ds = dataset_for(cfg)
    found = run_id(cfg, ds)
    here = f"The Ray worker on {socket.gethostname()}"
    if ds.fingerprint != expected["data"]:
        raise DataError(f"{here} reads different data at {cfg.data} than the driver on {driver}: put the dataset on "
                        f"the shared filesystem, at the same path on every node; {README_HINT}.")
    if found != expected["run"]:
        raise ConfigError(f"{here} runs other engine code than the driver on {driver} (run {found} here, "
                          f"{expected['run']} there): every node must run the same LungLens version; {README_HINT}.")
    if (runs_root() / found / "checkpoint.pt").exists():
        reporter.status("resuming from the checkpoint of its last finished epoch")
    run = train_run(cfg, reporter.progress, ds=ds, status=reporter.status, **options)
    reporter.flush()
    return run.id, run.trained_now, time.perf_counter() - t0


def machine_resources() -> tuple[int, int]:
    """CPU cores this process may use and CUDA GPUs it sees: the size of a local Ray instance."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus, torch.cuda.device_count()


def _label(cfg: RunConfig) -> str:
    fold = f" fold {cfg.fold}" if cfg.folds > 1 else ""
    return f"{cfg.backbone} depth {cfg.depth}{fold}"


def _portable(cfg: RunConfig) -> RunConfig:
    """The config with a relative data folder made absolute, so that workers with another working folder find it."""
    if cfg.data != "builtin" and Path(cfg.data).expanduser().exists():
        return cfg.replace(data=os.path.abspath(Path(cfg.data).expanduser()))
    return cfg


class RayExecutor:
    """Trains each job as one Ray task with ``gpus_per_run`` GPUs and ``cpus_per_run`` CPUs.

    ``address``: a Ray cluster (``auto``: the one this machine joined with ``ray start``); None starts a local Ray
    instance sized to this machine. Resources left as None are chosen from the cluster: one GPU per run where there
    are GPUs (with the node's CPUs shared among its GPUs), else all the cores of a node per run. ``max_retries``: how
    often a task whose worker or node died is run again (it resumes from its last finished epoch). ``task``: the
    function a task runs (``train_task``; tests wrap it).
    """

    def __init__(self, address: str | None = None, gpus_per_run: float | None = None,
                 cpus_per_run: float | None = None, max_retries: int = 3,
                 task: Callable[..., tuple[str, bool, float]] = train_task) -> None:
        for name, value in (("gpus_per_run", gpus_per_run), ("cpus_per_run", cpus_per_run)):
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, not {value}.")
        if cpus_per_run == 0:
            raise ConfigError("--cpus-per-run must be more than 0: a run needs a CPU to feed it.")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, not {max_retries}.")
        self.address, self.gpus_per_run, self.cpus_per_run = address, gpus_per_run, cpus_per_run
        self.max_retries, self.task = max_retries, task
        self.started = False

    def connect(self) -> None:
        """Join the Ray cluster at ``address``, or start a quiet local instance (once per process)."""
        if ray.is_initialized():
            return
        quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        try:
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                cpus, gpus = machine_resources()
                ray.init(address="local", num_cpus=cpus, num_gpus=gpus, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
            hint = (" Start one with `ray start --head` on the head node (and `ray start --address HEAD:6379` on the "
                    "others), or leave out --address to start a local instance." if self.address else "")
            raise ConfigError(f"Could not connect to {where}: {exc}.{hint}") from exc
        self.started = not self.address

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (a cluster is left running)."""
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resources(self) -> tuple[float, float]:
        """(CPUs, GPUs) each run asks for: the ones given, else chosen from the cluster's nodes."""
        self.connect()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        gpu_nodes = [r for r in nodes if r.get("GPU", 0) > 0]
        gpus = self.gpus_per_run if self.gpus_per_run is not None else (1.0 if gpu_nodes else 0.0)
        cpus = self.cpus_per_run
        if cpus is None:
            if gpus > 0 and gpu_nodes:
                cpus = float(max(1, min(int(r.get("CPU", 1) * gpus // r["GPU"]) for r in gpu_nodes)))
            else:
                cpus = float(max(1, min(int(r.get("CPU", 1)) for r in nodes)))
        if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            have = "; ".join(f"{r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs" for r in nodes)
            raise ConfigError(f"No Ray node has {cpus:g} CPUs and {gpus:g} GPUs for a run (nodes: {have}): lower "
                              f"--cpus-per-run / --gpus-per-run.")
        return cpus, gpus

    def train(self, jobs: list[Job], progress: ProgressFactory | None, status: StatusFn | None,
              options: Mapping[str, Any]) -> Iterator[tuple[Job, Run, float]]:
        """Submit every job as a task, hand on their progress, yield each job's run as it finishes (any order)."""
        if not jobs:
            return
        cpus, gpus = self.resources()
        say = status or (lambda _msg: None)
        driver_home = home()
        token = uuid.uuid4().hex
        token_file = driver_home / STORE_CHECK / token
        atomic_write_bytes(token_file, token.encode())
        env = {"LUNGLENS_HOME": str(driver_home), "LUNGLENS_DEVICE": "cuda" if gpus > 0 else "cpu",
               "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}{os.pathsep}${{PYTHONPATH}}"}
        board = ProgressBoard.remote()
        remote = ray.remote(self.task)
        by_index = {job.index: job for job in jobs}
        callbacks: dict[int, Any] = {}
        pending: dict[Any, Job] = {}
        failures: list[str] = []
        say(f"Submitting {len(jobs)} run(s) to Ray ({cpus:g} CPUs, {gpus:g} GPUs each)")
        try:
            for job in jobs:
                ref = remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False,
                                     runtime_env={"env_vars": env}, name=f"lunglens {_label(job.config)}").remote(
                    _portable(job.config).to_dict(), job.index, board, token, socket.gethostname(),
                    {"run": run_id(job.config, job.dataset), "data": job.dataset.fingerprint}, dict(options))
                pending[ref] = job

            def hand_on() -> None:
                for index, kind, payload in ray.get(board.drain.remote()):
                    job = by_index[index]
                    if kind == "status":
                        say(f"{_label(job.config)}: {payload}")
                    elif kind == "progress" and progress is not None:
                        if index not in callbacks:
                            callbacks[index] = progress(index, job.config)
                        if callbacks[index] is not None:
                            callbacks[index](Progress(**payload))

            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL)
                hand_on()
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        _, trained_now, seconds = ray.get(ref)
                    except (LungLensError, RayError) as exc:
                        failures.append(f"{_label(job.config)}: {_reason(exc, self.max_retries)}")
                        continue
                    run = get_run(job.config, job.dataset)
                    if run is None:
                        raise SharedStoreError(
                            f"A Ray worker trained {_label(job.config)} but its run is not in this machine's store "
                            f"{runs_root()}: LUNGLENS_HOME must be on a filesystem every Ray node shares, at the same "
                            f"path; {README_HINT}.")
                    yield job, dataclasses.replace(run, trained_now=trained_now), seconds
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.kill(board)
            token_file.unlink(missing_ok=True)
        if failures:
            raise LungLensError(f"{len(failures)} of {len(jobs)} run(s) failed on Ray (the others are stored): "
                                + " | ".join(failures))


def _reason(exc: BaseException, retries: int) -> str:
    """Why a task failed, without Ray's wrapping: the engine's own message, or what happened to the worker."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        return str(cause) if isinstance(cause, LungLensError) else f"{type(cause).__name__}: {cause}"
    if isinstance(exc, (WorkerCrashedError, NodeDiedError)):
        return (f"its worker died {retries + 1} time(s) ({type(exc).__name__}); the Ray logs "
                f"(/tmp/ray/session_latest/logs on the node) say why")
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
