"""Engine results for pages: one memo keyed by run, and long computations as background jobs with one progress panel.

``cached(fn, *args)`` calls an engine function once per argument set for the whole server (a run stands for its
cache key and finish time, so a run trained again is not served stale). ``background(fn, *args, label=...)`` does
the same, but in a background job: a result ready within ``$LUNGLENS_JOB_WAIT`` seconds (default 1.5) is returned
at once; otherwise the page draws a progress panel (progress, time left, Cancel) in its place, stays usable, and
reruns when the result is in. ``job_panel`` is that panel for any job. A job started here is owned by its browser
session: when every session waiting for it has closed, it is cancelled.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

import engine
from engine.errors import Cancelled
from engine.jobs import Job, JobFn, forget_job, get_job, reap, start_job
from engine.store import stable_hash

#: Seconds a page waits for a background result before it draws the progress panel instead ($LUNGLENS_JOB_WAIT).
WAIT_ENV = "LUNGLENS_JOB_WAIT"
DEFAULT_WAIT = 1.5
#: How often a running job's panel redraws, and how often closed sessions' jobs are looked for.
POLL_SECONDS = 1.0
REAP_SECONDS = 5.0
#: Results kept in memory (least recently used dropped first); the engine keeps its own on disk.
MAX_RESULTS = 256

_RESULTS: OrderedDict[str, Any] = OrderedDict()
_LOCK = threading.Lock()


def _code(value: Any) -> Any:
    """A JSON-able stand-in for an argument: a run is its cache key and finish time, a dataset or an array its digest."""
    if isinstance(value, engine.Run) or hasattr(value, "cache_key"):
        return ["run", value.cache_key, value.result["finished"]]
    if isinstance(getattr(value, "fingerprint", None), str):  # a dataset: its content's digest
        return ["data", type(value).__name__, value.fingerprint]
    if isinstance(value, np.ndarray):
        return ["array", value.shape, str(value.dtype), hashlib.sha256(np.ascontiguousarray(value).data).hexdigest()]
    if isinstance(value, (list, tuple)):
        return [_code(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _code(v) for k, v in value.items()}
    return value


def result_key(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> str:
    """The memo key of ``fn(*args, **kwargs)``: the function's full name and its arguments (runs by cache key)."""
    return f"{fn.__module__}.{fn.__qualname__}:" + stable_hash([_code(list(args)), _code(kwargs)], 24)


def _remember(key: str, value: Any) -> Any:
    with _LOCK:
        _RESULTS[key] = value
        _RESULTS.move_to_end(key)
        while len(_RESULTS) > MAX_RESULTS:
            _RESULTS.popitem(last=False)
    return value


def _recall(key: str) -> tuple[bool, Any]:
    with _LOCK:
        if key in _RESULTS:
            _RESULTS.move_to_end(key)
            return True, _RESULTS[key]
    return False, None


def cached(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, computed once per arguments for the whole server (runs keyed by id and training)."""
    key = result_key(fn, args, kwargs)
    found, value = _recall(key)
    return value if found else _remember(key, fn(*args, **kwargs))


def forget_results() -> None:
    """Drop every remembered result (after training, when runs may have changed)."""
    with _LOCK:
        _RESULTS.clear()


def session_id() -> str | None:
    """This browser session's id (None outside a Streamlit script run)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def _reap_forever() -> None:
    while True:
        time.sleep(REAP_SECONDS)
        if Runtime.exists():
            reap(Runtime.instance().is_active_session)


_REAPER: list[threading.Thread] = []


def _reaper() -> None:
    # One thread per server (not in st.cache_resource, which a page may clear): it cancels the jobs of sessions that
    # have ended (a closed tab).
    with _LOCK:
        if not _REAPER:
            _REAPER.append(threading.Thread(target=_reap_forever, name="lunglens-job-reaper", daemon=True))
            _REAPER[0].start()


def start(key: str, label: str, fn: JobFn) -> Job:
    """Start (or join, when it is running) the job ``key`` on behalf of this session, which owns it."""
    _reaper()
    return start_job(key, label, fn, owner=session_id())


def inline_wait() -> float:
    """Seconds to wait for a job before drawing its progress panel ($LUNGLENS_JOB_WAIT, default 1.5)."""
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT)))
    except ValueError:
        return DEFAULT_WAIT


def time_left(job: Job) -> str:
    """A background job's time left in words, or that it is being estimated."""
    left = job.seconds_left
    if left is None:
        return f"{job.elapsed:.0f} s so far, estimating the time left…"
    return f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"


def job_panel(key: str, name: str, *, done: Callable[[Job], None] | None = None,
              what: str = "the result") -> Job | None:
    """The job ``key``'s panel: progress, time left and Cancel while it runs (redrawn every second, the page stays
    usable), then how it ended: ``done(job)`` draws a finished job (default: a line saying so), a cancelled or failed
    one gets a note. ``name`` prefixes the widget keys; ``what`` names the result in messages. The whole page reruns
    once when the job ends, so that it can show the result. Returns the job (None when there is none)."""
    job = get_job(key)
    if job is None:
        return None
    seen, was_running = f"{name}_seen", job.running

    def panel() -> None:
        current = get_job(key)
        if current is None:
            return
        if current.running:
            st.progress(current.fraction, text=f"{current.label}: {current.text} · {current.fraction:.0%} · "
                                               f"{time_left(current)}")
            if current.cancel_requested:
                st.caption("Cancelling after the current step…")
            elif st.button("Cancel", key=f"{name}_cancel", icon=":material/stop:"):
                current.cancel()
                st.caption("Cancelling after the current step…")
            else:
                st.caption("It runs in the background: the rest of the page and the other pages stay usable.")
            return
        marker = f"{key}@{current.started}"
        if was_running and st.session_state.get(seen) != marker:
            st.session_state[seen] = marker
            st.rerun()  # the whole page, so it shows what the job computed and polling stops
        st.session_state[seen] = marker
        if current.status == "done":
            if done is not None:
                done(current)
            else:
                st.caption(f"{current.label}: computed in {current.elapsed:.0f} s.")
        elif current.status == "cancelled":
            st.info(f"Cancelled: {what} was not computed. Work finished before the cancel stays cached.",
                    icon=":material/stop_circle:")
        else:
            st.error(f"{current.label} stopped with an error: {current.error}")

    st.fragment(panel, run_every=POLL_SECONDS if job.running else None)()
    return job


def background(fn: Callable[..., Any], *args: Any, label: str, name: str, reports: bool = False,
               **kwargs: Any) -> Any | None:
    """``fn(*args, **kwargs)`` computed in a background job: its result when ready (remembered like ``cached``),
    else None after drawing the job's progress panel with a Cancel button (the page reruns once the result is in).

    ``reports``: ``fn`` takes ``progress`` (fraction, text) and ``cancel`` keywords, so the panel shows its progress
    and Cancel stops it within a step; other functions show the time elapsed and stop at their end when cancelled.
    ``label`` says what is computed; ``name`` prefixes the panel's widget keys (one per place on a page).
    """
    key = result_key(fn, args, kwargs)
    found, value = _recall(key)
    if found:
        return value
    job = get_job(key)
    if job is not None and job.status == "done":  # finished while nobody waited for it
        forget_job(key)
        return _remember(key, job.result)
    # A job this session cancelled (or saw fail) stays so until it asks again; another session just starts anew.
    if (job is not None and job.status in ("cancelled", "failed") and session_id() in job.owners
            and st.session_state.get(f"{name}_restart") != key):
        job_panel(key, name, what=label[0].lower() + label[1:])
        if st.button(f"Compute again: {label[0].lower() + label[1:]}", key=f"{name}_again",
                     icon=":material/replay:"):
            st.session_state[f"{name}_restart"] = key
            st.rerun()
        return None
    st.session_state.pop(f"{name}_restart", None)

    def work(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> Any:
        if reports:
            return fn(*args, progress=progress, cancel=cancelled, **kwargs)
        progress(0.0, "computing")
        value = fn(*args, **kwargs)
        if cancelled():  # it could only stop at its end: the result is dropped as asked
            raise Cancelled("Stopped on request: the result was dropped.")
        return value

    job = start(key, label, work) if job is None or not job.running else job
    if job.wait(inline_wait()) and job.status == "done":
        forget_job(key)
        return _remember(key, job.result)
    job_panel(key, name, what=label[0].lower() + label[1:])
    return None
