"""Background jobs: progress and time left, the registry by key, cancellation and failures."""
from __future__ import annotations

import threading
import time

import pytest

from engine.jobs import forget_job, get_job, reap, running_jobs, start_job


def test_a_job_reports_progress_and_its_result():
    gate = threading.Event()

    def work(progress, cancelled):
        progress(0.25, "a quarter")
        gate.wait(5)
        progress(0.75, "three quarters")
        return 42

    job = start_job("test-progress", "Counting", work)
    deadline = time.time() + 5
    while job.fraction < 0.25 and time.time() < deadline:
        time.sleep(0.01)
    assert job.running and job.status == "running"
    assert job.fraction == 0.25 and job.text == "a quarter"
    assert job.seconds_left == pytest.approx(3 * job.elapsed, rel=0.5)  # 1/4 done: 3/4 left at the same pace
    assert job in running_jobs()
    gate.set()
    assert job.wait(5)
    assert job.status == "done" and job.result == 42 and job.fraction == 1.0 and job.error is None
    assert job.seconds_left is None and job.finished is not None and job.elapsed >= 0
    assert job not in running_jobs()


def test_a_rerun_finds_the_running_job_by_key_and_a_finished_one_is_replaced():
    gate = threading.Event()
    calls = []

    def work(progress, cancelled):
        calls.append(1)
        gate.wait(5)
        return len(calls)

    first = start_job("test-registry", "Work", work)
    again = start_job("test-registry", "Work", work)
    assert again is first and get_job("test-registry") is first
    gate.set()
    assert first.wait(5) and first.result == 1 and calls == [1]
    second = start_job("test-registry", "Work", work)  # finished: a new job runs
    assert second is not first and second.wait(5) and second.result == 2
    forget_job("test-registry")
    assert get_job("test-registry") is None


def test_cancel_stops_the_job_between_chunks():
    chunks = []
    started = threading.Event()

    def work(progress, cancelled):
        for i in range(1000):
            if cancelled():
                raise RuntimeError("stopped on request")
            chunks.append(i)
            progress(i / 1000, f"chunk {i}")
            started.set()
            time.sleep(0.005)
        return "finished"

    job = start_job("test-cancel", "Chunks", work)
    assert started.wait(5)
    job.cancel()
    assert job.cancel_requested
    assert job.wait(5)
    assert job.status == "cancelled" and job.result is None and "stopped on request" in job.error
    assert 0 < len(chunks) < 1000


def test_a_failure_carries_its_message():
    def work(progress, cancelled):
        progress(0.5, "half way")
        raise ValueError("the run has no test images")

    job = start_job("test-failure", "Failing", work)
    assert job.wait(5)
    assert job.status == "failed" and job.error == "the run has no test images" and job.result is None
    assert job.text == "half way"


def test_reap_cancels_jobs_whose_sessions_all_ended_and_keeps_the_others():
    gate = threading.Event()

    def work(progress, cancelled):
        while not cancelled() and not gate.is_set():
            time.sleep(0.005)
        if cancelled():
            raise RuntimeError("stopped: nobody waits for it")
        return "done"

    shared = start_job("test-reap-shared", "Shared", work, owner="tab-a")
    assert start_job("test-reap-shared", "Shared", work, owner="tab-b") is shared and shared.owners == {"tab-a", "tab-b"}
    alone = start_job("test-reap-alone", "Alone", work, owner="tab-c")
    unowned = start_job("test-reap-cli", "Command line", work)
    alive = {"tab-b"}
    assert reap(alive.__contains__) == [alone]  # tab-b still waits for the shared job; the unowned one is kept
    assert alone.wait(5) and alone.status == "cancelled"
    assert shared.running and unowned.running
    alive.clear()
    assert reap(alive.__contains__) == [shared]
    gate.set()
    assert shared.wait(5) and shared.status == "cancelled"
    assert unowned.wait(5) and unowned.status == "done"
