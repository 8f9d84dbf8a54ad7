"""Background jobs for long engine computations (an explanation report, scoring every depth), usable by any page.

``start_job(key, label, fn)`` runs ``fn(progress, cancelled)`` in a daemon thread and registers it process-wide under
``key``, so that a page rerun (or another browser session) asking for the same work finds the running job instead
of starting a second one. ``fn`` reports ``progress(fraction in [0, 1], text)`` and checks ``cancelled()`` between
chunks of work, stopping (usually by raising) when it returns True.

A job may name the sessions that wait for it (``owner``): ``reap(alive)`` cancels every running job whose owners have
all gone (a closed browser tab), so no work outlives the people who asked for it. A job with no owner (a command-line
prepare) runs to its end.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["running", "done", "failed", "cancelled"]
#: ``progress(fraction in [0, 1], what is being done)``.
Progress = Callable[[float, str], None]
#: The work of a job: ``fn(progress, cancelled) -> result``.
JobFn = Callable[[Progress, Callable[[], bool]], Any]


@dataclass
class Job:
    """One background computation: its status, progress, estimated time left and result or error."""

    key: str
    label: str
    started: float = field(default_factory=time.time)
    status: Status = "running"
    fraction: float = 0.0
    text: str = "starting…"
    result: Any = None
    error: str | None = None
    finished: float | None = None
    owners: set[str] = field(default_factory=set)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> bool:
        """Whether the job is still computing."""
        return self.status == "running"

    @property
    def cancel_requested(self) -> bool:
        """Whether ``cancel()`` was called (the job stops at its next check)."""
        return self._cancel.is_set()

    @property
    def elapsed(self) -> float:
        """Seconds since the job started (until it finished, once it has)."""
        return (self.finished or time.time()) - self.started

    @property
    def seconds_left(self) -> float | None:
        """Estimated seconds to completion from the progress so far (None before any progress or once finished)."""
        if not self.running or self.fraction <= 0:
            return None
        return self.elapsed * (1 - self.fraction) / self.fraction

    def cancel(self) -> None:
        """Ask the job to stop; it does so the next time its work checks ``cancelled()``."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (or ``timeout`` seconds passed); True when it has finished."""
        return self._done.wait(timeout)

    def _progress(self, fraction: float, text: str) -> None:
        with self._lock:
            self.fraction = min(max(float(fraction), self.fraction, 0.0), 1.0)  # never moves backwards
            self.text = str(text)

    def _run(self, fn: JobFn) -> None:
        try:
            result = fn(self._progress, self._cancel.is_set)
        except BaseException as exc:  # noqa: BLE001 - a job reports every failure instead of dying silently
            with self._lock:
                self.status = "cancelled" if self._cancel.is_set() else "failed"
                self.error = str(exc) or type(exc).__name__
        else:
            with self._lock:
                self.result, self.status, self.fraction = result, "done", 1.0
        finally:
            self.finished = time.time()
            self._done.set()


_JOBS: dict[str, Job] = {}
_REGISTRY_LOCK = threading.Lock()


def start_job(key: str, label: str, fn: JobFn, owner: str | None = None) -> Job:
    """The running job registered under ``key``, or a new one running ``fn(progress, cancelled)`` in a daemon thread.

    A finished job under the same key (done, failed or cancelled) is replaced by the new one. ``owner``: a session
    waiting for the job (added to a running job's owners too), see ``reap``.
    """
    with _REGISTRY_LOCK:
        job = _JOBS.get(key)
        if job is not None and job.running:
            if owner is not None:
                job.owners.add(owner)
            return job
        job = Job(key, label, owners={owner} if owner is not None else set())
        _JOBS[key] = job
    threading.Thread(target=job._run, args=(fn,), name=f"lunglens-job-{key}", daemon=True).start()
    return job


def get_job(key: str) -> Job | None:
    """The job registered under ``key`` (running or finished), or None."""
    with _REGISTRY_LOCK:
        return _JOBS.get(key)


def forget_job(key: str) -> None:
    """Drop a finished job from the registry (a running one is kept: cancel it first)."""
    with _REGISTRY_LOCK:
        job = _JOBS.get(key)
        if job is not None and not job.running:
            del _JOBS[key]


def running_jobs() -> list[Job]:
    """Every job still computing, oldest first."""
    with _REGISTRY_LOCK:
        return sorted((j for j in _JOBS.values() if j.running), key=lambda j: j.started)


def reap(alive: Callable[[str], bool]) -> list[Job]:
    """Cancel every running job that has owners of which none is ``alive`` any more; return the jobs cancelled."""
    with _REGISTRY_LOCK:
        orphans = [j for j in _JOBS.values() if j.running and j.owners and not any(map(alive, j.owners))]
    for job in orphans:
        job.cancel()
    return orphans
