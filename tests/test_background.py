"""The dashboard's memo and background computations: computed once per arguments, a slow one drawn as a progress panel
with a Cancel that stops it, owned by the session that started it."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
from streamlit.testing.v1 import AppTest

from dashboard import background
from engine.jobs import get_job


def test_cached_computes_once_per_arguments_and_keys_runs_by_cache_key_and_training():
    calls = []

    def square(run, x, *, power=2):
        calls.append((run.cache_key, x, power))
        return x ** power

    run = SimpleNamespace(cache_key="resnet18-d5-abc", result={"finished": 1.0})
    assert background.cached(square, run, 3) == 9
    assert background.cached(square, run, 3) == 9
    assert background.cached(square, run, 3, power=3) == 27
    retrained = SimpleNamespace(cache_key="resnet18-d5-abc", result={"finished": 2.0})  # same id, trained again
    assert background.cached(square, retrained, 3) == 9
    assert calls == [("resnet18-d5-abc", 3, 2), ("resnet18-d5-abc", 3, 3), ("resnet18-d5-abc", 3, 2)]


def test_arrays_are_keyed_by_content():
    a, b = np.zeros((2, 3)), np.zeros((2, 3))
    b[1, 2] = 1
    key = lambda x: background.result_key(np.sum, (x,), {})  # noqa: E731
    assert key(a) == key(a.copy()) != key(b)
    assert key(a) != key(a.astype(np.float32))


GATE = threading.Event()


def _slow_page() -> None:
    """A page with one computation that reports progress and stops when cancelled."""
    import streamlit as st

    from dashboard.background import background
    from test_background import slow_sum

    value = background(slow_sum, st.session_state.get("n", 10), label="Summing slowly", name="bg_test", reports=True)
    st.markdown("result: none yet" if value is None else f"result: {value}")


def slow_sum(n, *, progress, cancel):
    """Sum 0..n-1 one number at a time, waiting on GATE between numbers (stops on cancel)."""
    total = 0
    for i in range(n):
        while not GATE.is_set():
            if cancel():
                raise RuntimeError("stopped on request")
            time.sleep(0.01)
        total += i
        progress((i + 1) / n, f"number {i + 1} of {n}")
    return total


def _page(monkeypatch, wait: str) -> AppTest:
    monkeypatch.setenv(background.WAIT_ENV, wait)
    return AppTest.from_function(_slow_page, default_timeout=30)


def test_a_slow_computation_shows_progress_and_cancel_and_stops_when_cancelled(monkeypatch):
    GATE.clear()
    at = _page(monkeypatch, "0").run()
    assert not at.exception
    assert at.markdown[-1].value == "result: none yet"  # the page went on while the job runs
    key = background.result_key(slow_sum, (10,), {})
    job = get_job(key)
    assert job is not None and job.running and job.label == "Summing slowly"
    assert len(job.owners) == 1  # the session that asked for it
    assert at.get("progress") and "Summing slowly" in at.get("progress")[0].proto.text
    at.button(key="bg_test_cancel").click().run()
    assert job.wait(5) and job.status == "cancelled" and "stopped on request" in job.error
    at.run()
    assert any("Cancelled" in i.value for i in at.info)
    assert at.button(key="bg_test_again")  # offered, not restarted on its own
    assert get_job(key) is job


def test_a_computation_ready_in_time_is_drawn_at_once_and_remembered(monkeypatch):
    GATE.set()
    at = _page(monkeypatch, "30")
    at.session_state["n"] = 12  # AppTest sessions share one id: not the job the other test cancelled
    at.run()
    assert not at.exception and at.markdown[-1].value == "result: 66" and not at.get("progress")
    key = background.result_key(slow_sum, (12,), {})
    assert get_job(key) is None  # the finished job is dropped; its result is remembered
    GATE.clear()  # a second computation would now wait forever: the page must use the remembered result
    at.run()
    assert at.markdown[-1].value == "result: 66"
    background.forget_results()
