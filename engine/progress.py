"""Progress reports and cancellation for long engine computations (a split's maps, LIME's samples, the baselines).

A long engine function takes ``progress(fraction in [0, 1], text)`` and ``cancel() -> bool`` keywords (both
optional; what ``dashboard.background`` passes with ``reports=True``); it reports between chunks of work and raises
``Cancelled`` when ``cancel()`` returns True, so that nothing partial is cached. Loads without torch.
"""
from __future__ import annotations

from collections.abc import Callable

from .errors import Cancelled

#: ``progress(fraction in [0, 1], what is being done)``.
Progress = Callable[[float, str], None]
#: ``cancel()``: True when the caller asks the computation to stop.
CancelCheck = Callable[[], bool]


def check_cancel(cancel: CancelCheck | None) -> None:
    """Raise Cancelled when ``cancel()`` says so (called between chunks of work)."""
    if cancel is not None and cancel():
        raise Cancelled("Stopped on request; nothing partial was cached.")


def report(progress: Progress | None, fraction: float, text: str) -> None:
    """``progress(fraction, text)`` when there is a listener."""
    if progress is not None:
        progress(fraction, text)


def step(progress: Progress | None, cancel: CancelCheck | None, fraction: float, text: str) -> None:
    """Between two steps: stop (Cancelled) when ``cancel()`` says so, else report ``fraction`` and ``text``."""
    check_cancel(cancel)
    report(progress, fraction, text)


def scaled(progress: Progress | None, start: float, end: float, prefix: str = "") -> Progress | None:
    """A listener that maps a sub-step's [0, 1] onto [start, end] of ``progress`` (its texts after ``prefix``)."""
    if progress is None:
        return None
    return lambda fraction, text: progress(start + (end - start) * fraction, prefix + text)
