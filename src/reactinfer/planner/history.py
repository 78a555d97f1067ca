"""What earlier trials say about the next one: the note a Thought adds about a step tried
before on another base, and whether that step is worth a trial again."""
from __future__ import annotations

from ..tasks.base import Task, quality_drop
from .actions import Action, Candidate
from .record import Decision, Trial

# A step rolled back with a quality drop of this many times the bound (and at least 0.05)
# is not retried on another base in the same form (e.g. an unrecovered pruning at drop 1.0):
# an engine's rounding moves quality by far less than that.
HOPELESS = 5.0


def base_of(log: list[Trial], trial: Trial) -> str:
    """The candidate a trial was applied to, in words."""
    parent = next((t for t in log if t.key == trial.parent), None)
    return Candidate.from_json(parent.candidate).describe() if parent else "?"


def earlier(log: list[Trial], action: Action, cand: Candidate, expected: float,
            task: Task, max_drop: float) -> tuple[float, str] | None:
    """The expected gain of trying `action` on this base, and the Thought's note on how it
    went before; None when it is not worth a trial again. A step that went over the bound
    changes the model the same way here (unless it takes another engine's form), so it is
    expected to fail again: tried after the others; so is a step that failed (an engine
    that cannot take the model)."""
    done = [t for t in log if t.action == action.name and t.decision is not Decision.SKIPPED]
    if not done:
        return expected, ""
    last = done[-1]
    note = (f" Tried at step {last.step} on [{base_of(log, last)}]: {last.decision} "
            f"({last.full_reason})")
    same_form = not (action.formats or action.backend) \
        or last.candidate["backend"] == cand.backend
    if same_form and last.over_bound and last.observation is not None and quality_drop(
            task.name, last.observation["quality"]) >= max(HOPELESS * max_drop, 0.05):
        return None
    if (last.over_bound or last.decision is Decision.FAILED) and same_form:
        expected = min(expected, 1 + (expected - 1) * 0.25)
        return expected, note + "; the same change on this base, so it comes last."
    return expected, note + "; retried on this base."
