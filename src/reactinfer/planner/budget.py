"""The user's time budget: one deadline for the whole run, report included.

The planner predicts what each step costs from what it has measured so far on this machine
(measuring the original model, earlier trials of the same family), keeps back what the end
of the run needs (saving the best model, the side-by-side re-measure, the report), and
starts a step only if its predicted cost fits in the rest. A step with a time budget of its
own (recovery distillation's `time_budget_s`) is given at most the time left; a step that
cannot fit is skipped, and the trace says so.

Predictions can be wrong (a first compile, a busy machine), so the run is allowed to end a
little late: `margin_s(budget)`, 10% of the budget and at least 10 s. The one cost that no
prediction can avoid is measuring the original model: if that alone takes longer than the
budget, the run stops right after it and says so.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

# sizing one measurement to a time budget is shared with `react bench --time-budget-s`
from ..measure.sizing import MIN_LATENCY_RUNS as MIN_LATENCY_RUNS
from ..measure.sizing import PROBE_TEXTS as PROBE_TEXTS
from ..measure.sizing import size_search as size_search
from .record import Trial

MARGIN_SHARE = 0.10
MARGIN_MIN_S = 10.0
END_MARGIN_SHARE = 0.5  # of the margin, the end of the run may use (Budget.left_for_end)
# Building a candidate adds to measuring it (ONNX export, a transform's own pass), and a
# new engine's first measurement is the least predictable: count a quarter more. (Measured
# on 2 cores with minilm: ONNX Runtime int8 / fp32 and torch int8 took 0.4-0.7 of the
# original's measurement, build included; torch.compile 2.9, hence its Action.cost.)
FIRST_OF_KIND = 1.25
# A recovery distillation cut below half its own budget rarely recovers enough quality to
# stay within the bound: better to skip it and say so than to spend the time on it.
MIN_TIMED_SHARE = 0.5
# The re-measure may take at most this share of the budget away from the search; when less
# is left at the end, it runs on fewer texts, or is skipped.
CONFIRM_SHARE = 0.25
CONFIRM_FILL = 0.8  # the re-measure is sized to this share of the time left at the end
# Measuring one model (the original, then each candidate) may take this share of what is
# left of the budget: room for the original and a few steps. When it would take longer,
# trials use fewer held-out texts and latency runs (the report says how many).
BASELINE_SHARE = 0.2
REPORT_S = 5.0  # report.json/.md and two plots (importing matplotlib is most of it)
SAVE_S = 1.0  # per artifact, plus its size at SAVE_MB_PER_S (writing and hashing)
SAVE_MB_PER_S = 50.0


def margin_s(budget_s: float) -> float:
    """How late past the budget a run may end (prediction error), in seconds."""
    return max(MARGIN_MIN_S, MARGIN_SHARE * budget_s)


class Budget:
    """A deadline on the wall clock. `start` (a `time.time()` stamp) lets the CLI count from
    when the command started, imports included; `--resume` gets a fresh budget."""

    def __init__(self, budget_s: float, start: float | None = None):
        self.total_s = float(budget_s)
        self.start = time.time() if start is None else start
        self.deadline = self.start + self.total_s

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.deadline - time.time()

    def left_for_end(self) -> float:
        """What the end of the run (saving the best and the variants, the re-measure) may
        still use: the budget's rest and half of its margin, so that a search step that
        ran longer than predicted does not cost the user the re-measure and the ladder
        (a minilm run lost both to a last step that overran its prediction by 20 s)."""
        return self.left() + END_MARGIN_SHARE * margin_s(self.total_s)


# -- what a step costs ------------------------------------------------------------------------

def timed_total(steps: tuple[dict[str, Any], ...]) -> float:
    """The seconds that steps with a budget of their own (`time_budget_s`) may take."""
    return float(sum(s.get("time_budget_s") or 0.0 for s in steps))


def measure_s(trial: Trial) -> float:
    """Seconds spent measuring a trial's model (older stores: the whole trial)."""
    obs = trial.observation or {}
    return float(obs.get("timing", {}).get("measure_s", trial.seconds))


def build_s(trial: Trial) -> float:
    """Seconds spent building a trial's model from its recipe (older stores: the whole trial)."""
    obs = trial.observation or {}
    return float(obs.get("timing", {}).get("build_s", trial.seconds))


@dataclasses.dataclass(frozen=True)
class Fit:
    """What to run for an action within the time left: its steps (time budgets cut to fit)
    and a note for the trace, or `steps=None` and the reason it is skipped."""

    steps: tuple[dict[str, Any], ...] | None
    predicted_s: float
    note: str = ""


def fit_steps(steps: tuple[dict[str, Any], ...], fixed_s: float, expected_s: float,
              left_s: float) -> Fit:
    """Fit an action into `left_s`. `fixed_s`: the predicted cost besides its timed steps;
    `expected_s`: the predicted cost in all (measured on an earlier trial of its family, or
    `fixed_s` + the timed steps' budgets)."""
    timed = timed_total(steps)
    if timed == 0:
        if expected_s <= left_s:
            return Fit(steps, expected_s)
        return Fit(None, expected_s, _no_room(expected_s, left_s))
    # What the action costs besides its timed steps: predicted, or as measured on an
    # earlier trial of its family when that was more. More time left never turns a run
    # into a skip, and a cut step is predicted with that measured overhead.
    overhead = max(fixed_s, expected_s - timed)
    room = left_s - overhead
    if room >= timed:
        return Fit(steps, overhead + timed)
    # a step that stops on its own clock can be given less time, but not so little that
    # it cannot work (unless its family has shown it finishes early here)
    if room >= 1.0 and (expected_s <= left_s or room >= MIN_TIMED_SHARE * timed):
        share = room / timed
        cut = tuple({**s, "time_budget_s": float(max(1, int(s["time_budget_s"] * share)))}
                    if s.get("time_budget_s") else s for s in steps)
        return Fit(cut, overhead + timed_total(cut),
                   f"Its own time budget is cut from {timed:.0f}s to {timed_total(cut):.0f}s "
                   "to fit in what is left of the run's.")
    return Fit(None, overhead + timed, _no_room(overhead + timed, left_s))


def _no_room(need_s: float, left_s: float) -> str:
    return (f"predicted to take ~{need_s:.0f}s, but only {max(left_s, 0):.0f}s of the time "
            "budget are left before the final save, re-measure and report")


def confirm_cost(trials: list[Trial], n_eval: int,
                 latency_runs: int) -> tuple[float, float]:
    """The re-measure of `trials` (baseline and best) with `latency_runs` batch-1 runs,
    predicted from how long their own measurements (on `n_eval` texts) took: (fixed
    seconds, seconds per text)."""
    fixed = per_text = 0.0
    for t in trials:
        obs = t.observation or {}
        thr = float(obs.get("throughput", {}).get("seconds", 0.0))
        lat = obs.get("latency_ms", {})
        run_s = float(lat.get("mean", 0.0)) / 1e3
        overhead = max(0.0, measure_s(t) - thr - run_s * float(lat.get("n", 0)))
        fixed += overhead + run_s * latency_runs
        per_text += thr / max(n_eval, 1)
    return fixed, per_text
