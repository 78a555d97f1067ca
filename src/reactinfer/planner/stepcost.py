"""What one step will cost before it starts: its build and its measurement, predicted from
what this run measured here.

Measuring a model is predicted from the run's measurements (their median). Building one
is predicted per engine and number format: a build cannot be interrupted in the middle of
a phase, so a build predicted too short overruns the budget (an OpenVINO int8 build with
SmoothQuant tuning, predicted from a measurement at ~18 s, took ~250 s on a loaded 2-core
machine). The prediction is the larger of

- the longest build seen in this run on the same engine and number format (a build cut
  at its deadline counts with the time it ran: at least that long), and
- the engine's own estimate (`Backend.build_cost`) in float conversions of the same model
  to that engine, times the longest such conversion seen in this run (or, before any, on
  another engine: the export is most of it; at least a quarter of a measurement).

A build that is no multiple of a float conversion (llama.cpp's quantizer, which reads the
weights once and writes another type) is priced per GB of the original model instead
(`Backend.build_s_per_gb`, a prior measured on a small CPU) until this run has timed one:
then the longest such build here.

An engine whose build can do less when time is short (tune fewer settings) gives a least
cost too: a step whose full build does not fit, but whose least does, starts with the
step's deadline, and the build does less to meet it (core/deadline.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..core.backend import list_backends
from .actions import Action, Candidate, number_format
from .budget import FIRST_OF_KIND, Fit, build_s, fit_steps, timed_total
from .record import Decision, Trial

FLOAT_FORMATS = ("fp32", "bf16", "fp16")
# before any conversion was timed: a conversion is at least this share of a measurement
FIRST_BUILD_SHARE = FIRST_OF_KIND - 1.0
_TORCH = Candidate().backend  # the candidate's own backend: building it converts nothing


@dataclasses.dataclass(frozen=True)
class BuildCost:
    """A step's predicted build, in seconds: the least (the build doing less to meet a
    deadline) and in full, and how it was predicted (for the trace)."""

    least: float
    full: float
    why: str = ""


def converts(cand: Candidate) -> bool:
    """Whether building `cand` converts the model for an engine (what Builder.build does
    after the transforms)."""
    return cand.backend != _TORCH or bool(cand.backend_options())


def _builds(log: list[Trial]) -> list[tuple[Candidate, float]]:
    """Each conversion this run built, and its seconds: measured, or cut at its deadline
    (then the time it ran, a lower bound)."""
    seen = []
    for t in log:
        cand = Candidate.from_json(t.candidate)
        if not converts(cand) or t.reused:
            continue
        if t.observation:
            seconds = build_s(t)
        elif t.decision is Decision.SKIPPED and t.seconds > 0:
            seconds = float(t.seconds)  # a build or measurement cut on the clock
        else:
            continue
        seen.append((cand, seconds))
    return seen


def engine_builds(log: list[Trial]) -> list[tuple[str, str, float]]:
    """(engine, number format, seconds) of each conversion this run built."""
    return [(c.backend, number_format(c), s) for c, s in _builds(log)]


def original_gb(log: list[Trial]) -> float | None:
    """The original model's measured size in GB (the baseline's), if measured yet."""
    for t in log:
        if t.parent is None and t.observation and t.observation.get("size_mb"):
            return float(t.observation["size_mb"]) / 1024
    return None


def _sized_build(log: list[Trial], cand: Candidate, engine: Any, per_gb: float
                 ) -> BuildCost | None:
    """A build priced per GB of the model (`Backend.build_s_per_gb`): the longest such
    build of the engine this run timed (the model is the same; the first also wrote the
    source file the others reuse, so this errs long), else the prior times the original's
    size. None before the original's size is known."""
    seen = [s for c, s in _builds(log) if c.backend == cand.backend
            and engine.build_s_per_gb(**c.backend_options()) is not None]
    if seen:
        full = max(seen)
        return BuildCost(full, full, f"its build is predicted at ~{full:.0f}s: the longest "
                                     f"{cand.backend} build of its kind here took that")
    gb = original_gb(log)
    if gb is None:
        return None
    full = per_gb * gb
    return BuildCost(full, full, f"its build is predicted at ~{full:.0f}s: {per_gb:g}s per "
                                 f"GB of the original's {gb:.2f} GB ({cand.backend}'s prior, "
                                 "before any such build here)")


def predict_build(log: list[Trial], cand: Candidate, measure_s: float) -> BuildCost:
    """The build of `cand` predicted from this run's builds (`log`) and the engine's own
    estimate; `measure_s`: what measuring a model costs here (the floor before any
    conversion was timed)."""
    if not converts(cand):
        return BuildCost(0.0, 0.0)
    engine = list_backends().get(cand.backend)
    per_gb = engine.build_s_per_gb(**cand.backend_options()) if engine else None
    if per_gb is not None:
        sized = _sized_build(log, cand, engine, per_gb)
        if sized is not None:
            return sized
    fmt = number_format(cand)
    seen = engine_builds(log)
    same = [s for e, f, s in seen if (e, f) == (cand.backend, fmt)]
    floats = [s for e, f, s in seen if e == cand.backend and f in FLOAT_FORMATS]
    other = [s for e, f, s in seen if e != cand.backend and f in FLOAT_FORMATS]
    conv = max(floats or other or [0.0])
    conv = max(conv, FIRST_BUILD_SHARE * measure_s) if not floats else conv
    least_f, full_f = engine.build_cost(**cand.backend_options()) if engine else (1.0, 1.0)
    full = max(max(same or [0.0]), full_f * conv)
    least = min(full, least_f * conv)
    why = (f"its build is predicted at ~{full:.0f}s: "
           + (f"the longest {cand.backend} {fmt} build here took {max(same):.0f}s"
              if same and max(same) >= full_f * conv else
              f"{full_f:g}× a {cand.backend} float conversion "
              + (f"({conv:.0f}s here)" if floats else f"(~{conv:.0f}s, as predicted)")))
    return BuildCost(least, full, why)


def fit_action(planner: Any, action: Action, cand: Candidate, best: Candidate,
               left: float) -> tuple[Candidate, Fit]:
    """The candidate to try within `left` seconds (time-budgeted steps cut to fit; a build
    that can do less started with the step's deadline), or the reason to skip it
    (`Fit.steps is None`). Build and measurement both count."""
    if planner._stored(cand) is not None:
        return cand, Fit(action.steps, 0.0)  # reused from the store: costs nothing
    m = planner._measure_s()
    measure = m * FIRST_OF_KIND * action.cost
    build = predict_build(planner.log, cand, m)
    family = [t.seconds for t in planner.log
              if t.family == action.family and t.decision is not Decision.SKIPPED]
    expected = max(family) if family else measure + build.full + timed_total(action.steps)
    expected = max(expected, measure + build.full)
    fit = fit_steps(action.steps, measure + build.least, expected, left)
    if fit.steps is None and not timed_total(action.steps) \
            and build.least < build.full and measure + build.least <= left:
        return cand, Fit(action.steps, measure + build.least,
                         f"In full {build.why}; it does less (e.g. tunes fewer settings) to "
                         f"finish within the {left:.0f}s left.")
    if fit.steps is None and build.full:
        fit = dataclasses.replace(fit, note=f"{fit.note} ({build.why})")
    if fit.steps is None or fit.steps == action.steps:
        return cand, fit
    cut = dataclasses.replace(action, steps=fit.steps).apply(best, planner.runtime_kinds)
    assert cut is not None  # the same action, with shorter time budgets
    return cut, fit
