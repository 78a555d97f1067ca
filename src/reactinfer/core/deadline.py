"""A deadline for work that has phases (an engine's conversion, int8 calibration and tuning,
a layer ranking): the caller sets it around the work, the work checks it between phases.

A build cannot be interrupted safely in the middle of a phase (NNCF, an ONNX export), and
once started it otherwise runs to its end, whatever the time budget says: on a loaded
2-core machine, an OpenVINO int8 build predicted at ~18 s took ~250 s. So the code that
knows its phases asks `seconds_left()` (to do less, e.g. tune fewer settings) and calls
`check(what)` before a phase it cannot shorten; `check` raises `DeadlinePassed`, which
the planner records as a step that would not finish in time, not as a failure.

The deadline is a context variable, not an option: engines and transforms get it without
a new parameter, and code run outside a deadline (a user's `to_backend`) sees none.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_AT: ContextVar[float | None] = ContextVar("reactinfer_deadline", default=None)


class DeadlinePassed(RuntimeError):
    """Work abandoned between two of its phases because its deadline had passed."""


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Run the block with a deadline at `at` (a `time.time()` stamp; None: none). Nested
    deadlines keep the earlier one."""
    outer = _AT.get()
    if at is not None and outer is not None:
        at = min(at, outer)
    token = _AT.set(at if at is not None else outer)
    try:
        yield
    finally:
        _AT.reset(token)


def seconds_left() -> float | None:
    """Seconds until the deadline (negative once passed); None where none is set."""
    at = _AT.get()
    return None if at is None else at - time.time()


def check(what: str) -> None:
    """Raise DeadlinePassed when the deadline has passed: `what` names the phase that
    would have started ("int8 calibration"), for the trace."""
    left = seconds_left()
    if left is not None and left <= 0:
        raise DeadlinePassed(f"would not finish in time: the step's deadline passed "
                             f"{-left:.0f}s before {what}")
