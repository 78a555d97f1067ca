"""The end of a run, planned from its start.

A run owes the user a whole output: the best model, the original, the Pareto variants in
between (the serving ladder), the side-by-side re-measure of the best against the
original, and report.md / report.json / plots. What that costs is predicted from what
this run measured on this machine, and kept back from the search as it goes:

- saving a model: its size at the save speed measured when the original was saved (right
  after it was measured), plus rebuilding it when it is no longer at hand;
- the re-measure: the original's and the best's measured throughput and latency, on the
  re-measure's number of texts;
- the report and its plots: matplotlib is imported while the search runs (timed), so
  what is left at the end is drawing and writing.

A budget that cannot pay for the original's measurement, one step and a whole end is
refused right after the original is measured, naming the smallest budget that would do;
one that obviously cannot is refused before, from the probe that sizes the search.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from ..core.errors import UserError
from ..tasks import within_bound
from .actions import Candidate
from .artifacts import save_trial
from .budget import (
    BASELINE_SHARE,
    CONFIRM_SHARE,
    FIRST_OF_KIND,
    REPORT_S,
    SAVE_MB_PER_S,
    SAVE_S,
    build_s,
    confirm_cost,
    measure_s,
)
from .record import Decision, Trial
from .report import pareto_table

MAX_VARIANTS = 4
# Before the original is measured, a budget is refused only when even this share of the
# costs a probe predicts does not fit (the probe's small batch overestimates per text).
OBVIOUS_SHARE = 0.5
# what an early save may raise: it only measures the save speed, the end saves again
_SAVE_ERRORS = (OSError, RuntimeError, ValueError, TypeError, NotImplementedError)


@dataclasses.dataclass
class EndPlan:
    """What the end of the run will cost, item by item: (what, seconds)."""

    items: list[tuple[str, float]]

    @property
    def total_s(self) -> float:
        return sum(s for _, s in self.items)

    def describe(self) -> str:
        return f"~{self.total_s:.0f}s kept for the end: " + ", ".join(
            f"{what} ~{s:.0f}s" for what, s in self.items)

    def to_json(self) -> dict[str, Any]:
        items = [{"what": w, "seconds": s} for w, s in self.items]
        return {"total_s": self.total_s, "text": self.describe(), "items": items}


def ladder(pareto: list[Trial], best: Trial) -> list[Trial]:
    """Variants for the serving ladder: the Pareto set within the bound, best quality
    first; the chosen best is always one."""
    variants = [t for t in pareto if t.within_bound][:MAX_VARIANTS - 1]
    if all(t.key != best.key for t in variants):
        variants.append(best)
    return variants


# -- saving ----------------------------------------------------------------------------------

def disk_mb(planner: Any, trial: Trial) -> float:
    """What saving a trial's model writes: its own size, and for another engine the torch
    weights it was made from too (an artifact keeps both)."""
    assert trial.observation is not None
    size = float(trial.observation["size_mb"])
    if trial.candidate.get("backend", "torch") != "torch":
        assert planner.ref_trial is not None
        size += float(planner.ref_trial.observation["size_mb"])
    return size


def save_s(planner: Any, trial: Trial) -> float:
    """Seconds to save a trial's model, at the speed measured on this machine (or a
    conservative constant before anything was saved)."""
    per_mb = planner.end_costs.get("save_s_per_mb", 1.0 / SAVE_MB_PER_S)
    return SAVE_S + disk_mb(planner, trial) * per_mb


def save_early(planner: Any, path: Any) -> None:
    """Save the original right after measuring it: it is part of every whole output, and
    timing it gives this machine's save speed, which the end's plan needs. The end finds
    it on disk by its trial key and moves it into place (artifacts.saved_artifacts)."""
    ref = planner.ref_trial
    if ref is None or ref.key in planner.saved or path.exists():
        return
    t0 = time.perf_counter()
    try:
        note = save_trial(planner.base, path, ref, planner.texts)
    except _SAVE_ERRORS:  # the end tries again, and says so if it fails there too
        return
    seconds = time.perf_counter() - t0
    if note:
        planner.save_notes.append(f"{ref.action}: {note}")
    planner.saved[ref.key] = path
    planner.end_costs["save_s_per_mb"] = seconds / max(disk_mb(planner, ref), 1.0)


def warm_plots(planner: Any) -> None:
    """Import the plotting library now, timed: most of the plots' cost, paid while the
    search runs rather than when only the end's reserve is left."""
    t0 = time.perf_counter()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:  # the report is written without plots
        pass
    planner.end_costs["plot_import_s"] = time.perf_counter() - t0


# -- the plan --------------------------------------------------------------------------------

def predicted_ladder(planner: Any, best_trial: Trial) -> list[Trial]:
    """The variants the end would save if the run stopped now (copies of the trials: the
    bound set on them is the prediction's, not the report's)."""
    trials = [dataclasses.replace(t, within_bound=within_bound(
        planner.base.task, t.observation["quality"], planner.s.max_drop)[0])
        for t in planner.log if t.observation]
    best = next((t for t in trials if t.key == best_trial.key), None)
    return ladder(pareto_table(trials, planner.s.objective), best or best_trial)


def confirm_s(planner: Any, best_trial: Trial, ref: Trial | None = None) -> tuple[float, int]:
    """Seconds kept for re-measuring the best beside the original, and on how many texts:
    as many as asked when that fits in a share of the budget, else fewer, but never fewer
    than the search judged on (the re-measure would add nothing). None needed while the
    original is the best. `ref`: the original's trial (default: the planner's)."""
    s = planner.s
    if not s.confirm_n_eval or not best_trial.parent:
        return 0.0, 0
    ref = ref if ref is not None else planner.ref_trial
    assert ref is not None
    fixed, per_text = confirm_cost([ref, best_trial], len(planner.texts),
                                   2 * planner.latency_runs)
    floor = min(len(planner.texts), s.confirm_n_eval)
    n = s.confirm_n_eval
    if per_text > 0 and fixed + per_text * n > CONFIRM_SHARE * planner.budget.total_s:
        n = max(floor, int((CONFIRM_SHARE * planner.budget.total_s - fixed) / per_text))
    return fixed + per_text * n, n


def plan_end(planner: Any, best_trial: Trial) -> EndPlan:
    """The end's cost if `best_trial` stays the best: save it, the original and the ladder
    (rebuilding what is no longer at hand), re-measure, write the report and plots."""
    assert planner.ref_trial is not None
    items: list[tuple[str, float]] = []
    saves = [best_trial, planner.ref_trial] if best_trial.parent else [best_trial]
    saves += [t for t in predicted_ladder(planner, best_trial)
              if t.key not in {u.key for u in saves}]
    for t in saves:
        if t.key in planner.saved:
            continue
        cost = save_s(planner, t)
        if t.parent and t.key not in planner.builder.built:
            cost += build_s(t)
        items.append((f"save {t.action}", cost))
    seconds, n = confirm_s(planner, best_trial)
    if seconds:
        items.append((f"side-by-side re-measure on {n} items", seconds))
    plots = 0.0 if "plot_import_s" in planner.end_costs else 2.0  # importing matplotlib
    items.append(("report and plots", REPORT_S + plots))
    return EndPlan(items)


# -- the smallest budget ---------------------------------------------------------------------

def minimal_end(planner: Any, ref: Trial | None = None) -> EndPlan:
    """The cheapest whole end: the original, a best and a variant in between saved (each
    sized as the original, at worst), the re-measure with a best as slow as the original,
    the report. `ref`: the original's trial (default: the planner's)."""
    ref = ref if ref is not None else planner.ref_trial
    assert ref is not None
    like = dataclasses.replace(ref, parent=ref.key, key=ref.key + "+", action="a step")
    confirm, _ = confirm_s(planner, like, ref)
    save = save_s(planner, ref)
    return EndPlan([("save the original, a best and a variant", 3 * save),
                    ("side-by-side re-measure", confirm), ("report and plots", REPORT_S + 2.0)])


def predicted_ref(probe: dict[str, Any], n_texts: int, latency_runs: int) -> Trial:
    """The original's trial as a probe (`measure` on a few texts, one latency run) predicts
    it: measured on `n_texts` texts with `latency_runs` batch-1 runs (the cost model of
    measure/sizing.size_search)."""
    per_text = float(probe["throughput"]["seconds"]) / max(1, int(probe["n_eval"]))
    one = float(probe["latency_ms"]["mean"]) / 1e3
    fixed = float(probe.get("prepare_s", 0.0)) + per_text * int(probe["batch_size"]) + 3 * one
    thr = per_text * n_texts
    seconds = fixed + thr + one * latency_runs
    return Trial(key="probe", step=0, action="baseline", thought="", parent=None,
                 candidate=Candidate().to_json(),
                 observation={"size_mb": float(probe.get("size_mb", 0.0)),
                              "throughput": {"seconds": thr},
                              "latency_ms": {"mean": one * 1e3, "n": latency_runs},
                              "timing": {"build_s": 0.0, "measure_s": seconds}},
                 decision=Decision.BASELINE, reason="as the probe predicts it", seconds=seconds)


def check_probe(planner: Any, probe: dict[str, Any]) -> None:
    """Refuse, before the original is measured, a budget that obviously cannot give a whole
    output: one that even half the costs the sizing probe predicts (the original's
    measurement, a step, the end) do not fit in. The probe runs a batch smaller than the
    real one, which overestimates per text: only a clear shortfall is refused here, the
    rest after the original is measured (`check_whole`)."""
    ref = predicted_ref(probe, len(planner.texts), planner.latency_runs)
    check_whole(planner, ref=ref, share=OBVIOUS_SHARE)


SMALLEST_MARGIN = 1.3  # the smallest budget named is what was predicted, times this


def check_whole(planner: Any, action_cost: float = 1.0, ref: Trial | None = None,
                share: float = 1.0) -> None:
    """Refuse a budget that cannot give a whole output: what is left must pay for one
    step (a first step of its kind, as stepcost.fit_action predicts its measurement) and
    the end, after the original was measured; before it (`ref`: the original's trial as a
    probe predicts it), for its measurement too, with the costs counted at `share`. The
    smallest budget that works is named: what was spent before the measurement, plus the
    measurement, a step and the end, with the measurement sized to the budget as
    `_size_search` would size it (a fifth of what is left)."""
    measured = ref is None
    ref = planner.ref_trial if ref is None else ref
    assert ref is not None
    budget = planner.budget
    m = measure_s(ref)
    k = FIRST_OF_KIND * action_cost
    # the cheapest first step's build, as stepcost predicts it (once the original's size
    # is measured; a planner that cannot say counts none)
    first_build = getattr(planner, "first_build_s", None)
    build = float(first_build()) if measured and callable(first_build) else 0.0
    end = minimal_end(planner, ref).total_s
    to_come = 0.0 if measured else m  # the original's measurement, still ahead
    step = k * m + build
    if budget.left() >= share * (to_come + step + end):
        return
    spent = budget.total_s - budget.left()
    before = max(0.0, spent - m) if measured else spent
    asked = max(1, planner.n_asked)
    full = m * max(1.0, asked / max(1, len(planner.texts)))  # unsized, all texts asked
    at_full = before + (1 + k) * full + build + end
    scaled = before + (build + end) / max(0.1, 1 - (1 + k) * BASELINE_SHARE)
    need = max(min(at_full, scaled), spent + to_come + step + end)
    # a margin for what a second measurement on a busy machine may add (a refused run
    # told to use 130 s was refused again at 130 s, naming 190 s)
    smallest = int(math.ceil(need * SMALLEST_MARGIN / 10.0) * 10)
    took = f"took {m:.0f}s" if measured else \
        f"would take ~{m:.0f}s ({len(planner.texts)} texts, as a probe predicts)"
    raise UserError(
        f"--budget-s {budget.total_s:g} is too small for a whole output on this machine: "
        f"measuring {planner.s.model} {took}, a step would take ~{step:.0f}s and the "
        f"end (saving, side-by-side re-measure, report) ~{end:.0f}s; give --budget-s "
        f"{smallest} or more" + (" (with --resume to keep the measured original)"
                                 if measured else " (with --resume: -o holds this run now)"))
