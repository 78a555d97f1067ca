"""One trial of the ReAct loop: build a candidate, measure it here (Observation), judge it
against the best (keep or roll back), measure a near miss again, and record it.

`TrialRunner` is the part of the Planner (planner/loop.py) that runs one trial; the loop
picks what to try and when to stop. Its public methods (`run_trial`, `skip`, `revise`, and
the Planner's `reserve_s`) are what repair.py runs its fallbacks with.
A build runs under the step's deadline (core/deadline.py) and a measurement is cut when it
cannot finish before it: either is recorded as skipped for the time budget, not failed.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.deadline import DeadlinePassed, deadline
from ..core.errors import is_our_bug
from ..core.handle import ModelHandle
from ..measure.harness import MeasurementCut, measure
from ..measure.refcache import reference_key, save_reference
from ..tasks import quality_drop, within_bound
from ..tasks.metrics import Metric, with_metric
from .actions import Action, Candidate
from .budget import Budget, measure_s
from .builder import Builder
from .genspeed import generation_figures
from .objective import gain
from .record import Decision, Trial
from .store import TrialStore

# A trial within the bound that comes out at least this fraction of the best's speed, but
# not above it, is measured a second time before it is rolled back: one measurement on a
# 2-core machine swings by 10-30% (a repair fallback measured 249 texts/s in its trial and
# 346-382 side by side afterwards, benchmarks/results/planner_minilm.md).
NEAR_MISS = 0.75


class TrialRunner:
    """Runs and records one trial; the Planner sets these attributes up (loop.py)."""

    s: Any  # PlanSettings
    out: Path
    progress: bool
    budget: Budget
    store: TrialStore
    base: ModelHandle
    task: Any
    metric: Metric | None
    builder: Builder
    texts: Sequence[Any]
    latency_runs: int
    step_deadline: float | None
    log: list[Trial]
    memo: dict[Any, Any]
    ref_results: dict[str, Any] | None
    ref_info: dict[str, Any] | None
    ref_trial: Trial | None
    last_built: tuple[str, ModelHandle] | None
    reused: int
    bar: Any

    def _phase(self, text: str) -> None:
        """Say on the progress bar what the run is doing: a step may take minutes."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} | {self.budget.left():.0f}s left", refresh=True)

    def _observe(self, handle: ModelHandle) -> dict[str, Any]:
        # the batch-1 generation of measure() is left out: an LM's speed is generation as
        # served, at 1 and N streams (genspeed.py), which the objective reads
        cut: dict[str, Any] = {}
        if self.step_deadline is not None and self.ref_trial is not None:
            cut["max_s"] = self.step_deadline - time.time()
            assert self.ref_trial.observation is not None
            thr = self.ref_trial.observation["throughput"]
            if thr.get("first_batch_s"):  # the original's measurement, in first batches
                lat = self.ref_trial.observation.get("latency_ms", {})  # none for an LM
                cut["worth"] = (thr["seconds"] + lat.get("mean", 0.0) * lat.get("n", 0) / 1e3) \
                    / thr["first_batch_s"]
        report, results = measure(handle, self.texts, self.s.batch_size, self.latency_runs,
                                  gen_tokens=0, progress=self.progress, **cut)
        if self.ref_results is None:  # the baseline: its outputs are the reference, saved
            self.ref_results = results
            self.ref_info = save_reference(self.out, self._ref_key(), results,
                                           report["throughput"]["seconds"])
        report["quality"] = self.compare(self.ref_results, results, self.texts)
        report["quality_drop"] = quality_drop(self.base.task, report["quality"])
        gen = generation_figures(self, handle)
        if gen is not None:
            report["generation"] = gen
        return {k: report[k] for k in ("latency_ms", "throughput", "size_mb", "params", "rss_mb",
                                       "quality", "quality_drop", "generation") if k in report}

    def compare(self, reference: dict[str, Any], results: dict[str, Any],
                items: Sequence[Any]) -> dict[str, Any]:
        """Quality against the original on `items`: the task's figures, and the user's
        metric of both when the run bounds one."""
        return with_metric(self.task.compare(reference, results), self.metric,
                           self.task.primary_output, reference, results, items)

    def _ref_key(self) -> dict[str, Any]:
        return reference_key(self.base, self.texts, self.s.batch_size)

    def _stored(self, cand: Candidate) -> Trial | None:
        stored = self.store.get(cand.key)
        if stored is not None and (stored.observation is not None
                                   or stored.decision is Decision.FAILED):
            return stored
        return None

    def run_trial(self, step: int, cand: Candidate, action: str, family: str, thought: str,
                  parent: str | None, best_obs: dict[str, Any] | None) -> Trial:
        """Build `cand` (the original when `parent` is None), measure it and judge it
        against `best_obs` (None: it is the baseline); or reuse it from the store. The
        trial is stored (unless skipped for the time budget) and appended to the log."""
        stored = self._stored(cand)
        if stored is not None:
            self.reused += 1
            trial = dataclasses.replace(stored, family=family, reused=True)
            trial.over_bound = self._out_of_bound(trial)  # derived: not stored
            self.log.append(trial)
            return trial
        t0 = time.perf_counter()
        try:
            self._phase(f"{action}: building")
            # a build that has phases stops between them once it cannot be measured in time
            with deadline(None if self.step_deadline is None
                          else self.step_deadline - self._measure_s()):
                handle = self.builder.build(cand) if parent else self.base
            self.last_built = (cand.key, handle)
            t1 = time.perf_counter()
            self._phase(f"{action}: measuring")
            obs = self._observe(handle)
            decision, reason = self._judge(obs, best_obs)
            if best_obs is not None and self._near_miss(obs, best_obs, decision):
                self._phase(f"{action}: measuring again (near the best)")
                obs, decision, reason = self._confirm(handle, obs, best_obs)
            # what building and measuring cost here: the budget predicts later steps from it
            obs["timing"] = {"build_s": t1 - t0, "measure_s": time.perf_counter() - t1}
        # not stored (below): a run with more time may try it
        except (MeasurementCut, DeadlinePassed) as e:
            obs, decision, reason = None, Decision.SKIPPED, f"time budget: {e}"
        # One candidate an engine or transform cannot take is a failed trial, not the end of
        # the run. A bug of ours stops it with its traceback (the report of what was measured
        # is still written, api.py): recorded as "failed", it would hide in the table.
        except Exception as e:
            if is_our_bug(e):
                raise
            obs, decision, reason = None, Decision.FAILED, f"{type(e).__name__}: {e}"
        # a step that ran on the clock (a time-budgeted distillation) is recorded as run, so
        # that a rebuild (saving, a child, --resume) makes the same model (Builder.as_run)
        ran = self.builder.as_run.get(cand.key, cand)
        trial = Trial(key=cand.key, step=step, action=action, thought=thought, parent=parent,
                      candidate=ran.to_json(), observation=obs, decision=decision,
                      reason=reason, seconds=time.perf_counter() - t0, family=family)
        if decision is not Decision.SKIPPED:
            self.store.put(trial)
        if obs is not None and self.ref_results is None:
            raise AssertionError("the baseline must be observed first")
        trial.over_bound = self._out_of_bound(trial)  # derived: not stored
        self.log.append(trial)
        return trial

    def revise(self, trial: Trial, **changes: Any) -> Trial:
        """`trial` with `changes` (a decision revised, the unseen check's verdict), stored
        in its place and put in its place in the log: the one way a trial changes after it
        was recorded, so that the store and the log always agree."""
        new = dataclasses.replace(trial, **changes)
        if new.decision is not Decision.SKIPPED:
            self.store.put(new)
        i = next((i for i, t in enumerate(self.log) if t is trial), None)
        if i is None:
            raise ValueError(f"trial {trial.key} (step {trial.step}) is not in this run's log")
        self.log[i] = new
        return new

    def _near_miss(self, obs: dict[str, Any], best_obs: dict[str, Any],
                   decision: Decision) -> bool:
        """Within the bound, but rolled back on a speed short of the best by less than
        the noise one measurement on a shared CPU shows (NEAR_MISS): measure it again."""
        if decision is not Decision.ROLLED_BACK or self.s.objective == "size":
            return False
        if not within_bound(self.base.task, obs["quality"], self.s.max_drop)[0]:
            return False
        return gain(obs, best_obs, self.s.objective) >= NEAR_MISS

    def _confirm(self, handle: ModelHandle, obs: dict[str, Any], best_obs: dict[str, Any]
                 ) -> tuple[dict[str, Any], Decision, str]:
        """A second measurement of a near miss; the faster of the two counts (best of two,
        as benchmarks take against interference; the quality is the same model's)."""
        again = self._observe(handle)
        first, second = (gain(o, best_obs, self.s.objective) for o in (obs, again))
        chosen = again if second > first else obs
        decision, reason = self._judge(chosen, best_obs)
        return chosen, decision, (f"{reason}; measured twice, ×{first:.2f} then ×{second:.2f} "
                                  "vs best: the faster counts")

    def _judge(self, obs: dict[str, Any], best_obs: dict[str, Any] | None
               ) -> tuple[Decision, str]:
        """Keep or roll back a measured candidate: within the bound, and better than the best
        by `min_gain`."""
        if best_obs is None:
            return Decision.BASELINE, "the original model"
        ok, why = within_bound(self.base.task, obs["quality"], self.s.max_drop)
        g = gain(obs, best_obs, self.s.objective)
        if not ok:
            return Decision.ROLLED_BACK, why
        if g < 1 + self.s.min_gain:
            return (Decision.ROLLED_BACK,
                    f"{self.s.objective} ×{g:.2f} vs best: does not pay here ({why})")
        return Decision.KEPT, f"{self.s.objective} ×{g:.2f} vs best; {why}"

    def _out_of_bound(self, trial: Trial) -> bool:
        """A measured trial whose quality is outside the bound."""
        obs = trial.observation
        return obs is not None and not within_bound(self.base.task, obs["quality"],
                                                    self.s.max_drop)[0]

    def skip(self, step: int, action: Action, cand: Candidate, thought: str, parent: str | None,
             reason: str, decision: Decision = Decision.SKIPPED) -> Trial:
        """Record in the trace an action that was not run: by default one the budget leaves
        no time for; `Decision.FAILED` for one that could not start (e.g. a repair whose
        layers could not be ranked). Not stored: a resumed run may still try it."""
        trial = Trial(key=cand.key, step=step, action=action.name, thought=thought,
                      parent=parent, candidate=cand.to_json(), observation=None,
                      decision=decision, reason=reason, family=action.family)
        self.log.append(trial)
        return trial

    def _measure_s(self) -> float:
        """What measuring one model costs here: the median of this run's measurements (one
        slow outlier, a compile, does not make every later step look slow)."""
        return float(statistics.median([measure_s(t) for t in self.log if t.observation]
                                       or [0.0]))
