"""The ReAct loop: Thought → Action → Observation, keep or roll back.

Starting from the original model (the baseline), each step picks the untried action with
the best expected gain for this machine and objective (Thought), applies it to the best
candidate so far (Action), measures the result here (Observation), and keeps it only if
it improves the objective by at least `min_gain` while staying within the quality bound.
Every trial is stored, so `resume=True` continues a run without redoing finished trials.
The run keeps to the user's time budget (budget.py): a step starts only if its predicted
cost fits in what is left after the time the end of the run needs.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.backend import backend_options, list_backends
from ..core.errors import UserError
from ..core.handle import ModelHandle
from ..core.hardware import hardware_profile
from ..core.transform import config_from_dict
from ..data import items_for
from ..measure.harness import measure
from ..measure.refcache import cached_reference
from ..models import load
from ..tasks import get_task
from ..tasks.metrics import check_labelled, resolve_metric
from . import lmquality
from .actions import Action, Candidate, Context, model_facts
from .artifacts import saved_artifacts
from .budget import (
    BASELINE_SHARE,
    PROBE_TEXTS,
    Budget,
    size_search,
)
from .builder import Builder
from .catalogue import for_model
from .cnn import conv_facts
from .endplan import EndPlan, check_probe, check_whole, confirm_s, plan_end, save_early, warm_plots
from .history import earlier
from .lmquality import judged_as_served, quality_texts
from .objective import gain
from .record import Decision, Trial
from .reference import as_run, reference
from .repair import repair
from .settings import PlanSettings, default_n_eval
from .stepcost import fit_action, predict_build
from .store import TrialStore
from .trial import TrialRunner

STORE_NAME = "trials.sqlite"
# an action that fits, with its candidate and Thought, and the ones skipped before it
Pick = tuple[Action, Candidate, str, list[tuple[Action, Candidate, str, str]]]


class Planner(TrialRunner):
    def __init__(self, settings: PlanSettings, out: Path, actions: Sequence[Action],
                 resume: bool = False, progress: bool = True, budget: Budget | None = None,
                 base: ModelHandle | None = None):
        settings.validate()
        self.s, self.out, self.progress = settings, Path(out), progress
        self.budget = budget if budget is not None else Budget(settings.budget_s)
        self.store = TrialStore(self.out / STORE_NAME)
        self.store.check_run(settings.store_key(), resume)
        loaded = base if base is not None else load(settings.model)
        self.task = get_task(loaded.task)
        self.metric = resolve_metric(settings.metric, loaded.task)
        self.builder = Builder(loaded, progress=progress)
        # the original as the user runs it (reference.py): its engine file where it has
        # one (a GGUF on llama.cpp), else the torch model; quality is judged against it
        self.base_cand, self.base = reference(loaded, self.builder)
        # structural actions this model's family cannot take are left out here, with why
        self.actions, self.left_out = for_model(actions, self.base)
        self.runtime_kinds = {s["type"] for a in self.actions if a.runtime for s in a.steps}
        # models a finished earlier run already saved (by trial key): no rebuild needed
        self.saved = saved_artifacts(self.out / "best", *sorted((self.out / "variants").glob("*")))
        self.texts = items_for(self.base, "eval", settings.data,
                               settings.n_eval or default_n_eval(self.base.task, settings))
        # what the Thoughts reason with: a transformer's shape, or a CNN's convolutions
        self.facts = model_facts(loaded.model) or conv_facts(loaded)
        if len(self.texts) < 10:
            raise UserError(f"only {len(self.texts)} held-out texts; give more data (--data)")
        check_labelled(self.metric, self.texts, settings.data)
        self.latency_runs = settings.latency_runs  # both may be cut to the budget (run())
        self.quality_tokens: int | None = None
        if judged_as_served(self.task):  # lmquality.py: measure only what decides
            self.latency_runs = 0
            if settings.n_eval is None:  # a fixed amount of text, not a count of texts
                self.texts, self.quality_tokens = quality_texts(
                    self.texts, self.base.tokenizer, self.base.max_length,
                    lmquality.QUALITY_TOKENS)
        self.n_asked = len(self.texts)
        # the end of the run, planned from its start (endplan.py): measured costs, the plan
        self.end_costs: dict[str, float] = {}
        self.end_plan: EndPlan | None = None
        # when the step in flight must be done by (a `time.time()` stamp): the end's reserve
        # starts there, and a measurement that cannot finish before it is cut
        self.step_deadline: float | None = None
        self.sizing: dict[str, Any] = {}
        self.save_notes: list[str] = []  # what saving a model during the search said
        self.log: list[Trial] = []
        self.ref_results: dict[str, Any] | None = None
        self.ref_info: dict[str, Any] | None = None  # how the reference outputs were had
        self.ref_trial: Trial | None = None
        # the key and model of the last trial built here (a trial reused from the store
        # builds nothing): the repair measures that model again
        self.last_built: tuple[str, ModelHandle] | None = None
        self.memo: dict[Any, Any] = {}  # what a run computes once (planner/heldout.py)
        self.reused = 0
        self.bar: Any = None

    def _over_bound(self, step: int, action: Action, trial: Trial, cand: Candidate,
                    best_trial: Trial) -> tuple[Trial, int]:
        """The one place a trial rolled back for quality is handled: where the action has a
        fallback option that the candidate's engine takes (e.g. `fp32_layers` on ONNX
        Runtime and OpenVINO int8), repair.py keeps the most sensitive layers in higher
        precision and returns the smallest such fallback that meets the bound (a "kept"
        trial becomes the best, by its "candidate"); elsewhere the rollback stands. Returns
        the trial and the last step number."""
        engine = list_backends().get(cand.backend)
        if action.fallback is None or engine is None \
                or action.fallback not in backend_options(engine):
            return trial, step
        trial, _, step = repair(self, action, trial, cand, best_trial, step)
        return trial, step

    # -- the budget ----------------------------------------------------------------------
    def reserve_s(self, best_trial: Trial) -> float:
        """Seconds the end of the run needs if `best_trial` stays the best (endplan.py)."""
        self.end_plan = plan_end(self, best_trial)
        return self.end_plan.total_s

    def confirm_reserve(self, best_trial: Trial) -> float:
        """Seconds kept for re-measuring the best beside the original at the end."""
        return confirm_s(self, best_trial)[0]

    def _size_search(self) -> None:
        """Fit measuring one model into a share of the budget: fewer held-out texts and
        latency runs when it is short. Stored, so a resumed run measures as the first did."""
        sized = self.store.get_meta("search")
        if sized is None and self.store.all():  # a store from before sizing: as asked
            sized = {"n_texts": len(self.texts), "latency_runs": self.s.latency_runs}
        probe = None
        if sized is None and judged_as_served(self.task):
            # sized in tokens, not to the budget (lmquality.py): no probe; a budget that
            # cannot pay for it is refused once the original is measured (check_whole)
            sized = {"n_texts": len(self.texts), "latency_runs": 0,
                     "quality_tokens": self.quality_tokens}
            self.store.set_meta("search", sized)
        if sized is None:
            self._phase("sizing the search to the budget")
            t0 = time.perf_counter()
            try:
                probe, _ = measure(self.base, self.texts[:PROBE_TEXTS], self.s.batch_size, 1,
                                   gen_tokens=0, progress=False)
            except Exception:  # noqa: BLE001  the baseline trial reports why, as run_trial does
                return
            n, runs = size_search(probe, len(self.texts), self.s.latency_runs,
                                  BASELINE_SHARE * self.budget.left())
            sized = {"n_texts": n, "latency_runs": runs, "probe_s": time.perf_counter() - t0}
        self.texts = self.texts[:sized["n_texts"]]
        # (a store sized before an LM was judged as served: its latency runs decide nothing)
        self.latency_runs = 0 if judged_as_served(self.task) else sized["latency_runs"]
        self.sizing = sized
        if probe is not None:  # a budget that obviously cannot hold a whole output: now
            check_probe(self, probe)  # (before the sizing is stored: a rerun sizes anew)
            self.store.set_meta("search", sized)

    def first_build_s(self) -> float:
        """The least a first step's build is predicted to cost: what a budget must hold
        for one step besides its measurement (endplan.check_whole)."""
        m = self._measure_s()
        return min((predict_build(self.log, c, m).least
                    for _, c, _ in self._options(self.base_cand, {self.base_cand.key})),
                   default=0.0)

    # -- the loop ------------------------------------------------------------------------
    def _context(self) -> Context:
        return Context(hardware_profile(), self.base.task, self.s.objective,
                       self.facts, self.log)

    def _options(self, best: Candidate, tried: set[str]) -> list[tuple[Action, Candidate, str]]:
        """The actions that lead from `best` to a candidate not tried yet, most promising
        first, with the Thought. Keyed by candidate, not by action: on each new best every
        action is considered again, so a step rolled back on one base is retried on another
        (the Thought says how it went before), and a number format is expressed for the
        engine at hand."""
        ctx = self._context()
        kept = {t.action for t in self.log if t.decision is Decision.KEPT}
        options: list[tuple[bool, float, int, Action, Candidate, str]] = []
        done = {t.action for t in self.log}
        for a in self.actions:
            if a.level > 0 and not any(b.family == a.family and b.level == a.level - 1
                                       and b.name in kept for b in self.actions):
                continue  # escalate a family only after its milder step paid off
            cand = a.apply(best, self.runtime_kinds)
            if cand is None or cand.key in tried:
                continue
            expected, why = a.expect(dataclasses.replace(ctx, base=best, cand=cand))
            before = earlier(self.log, a, cand, expected, self.task, self.s.max_drop)
            if before is None:
                continue  # it broke the model far beyond the bound: not worth a trial again
            expected, note = before
            first = a.free and a.name not in done  # free steps go first, once
            options.append((first, expected, -len(options), a, cand, why + note))
        options.sort(key=lambda o: (o[0], o[1], o[2]), reverse=True)
        unique, seen = [], set()  # the same candidate by another action is one trial
        for o in options:  # (the most promising action's)
            if o[4].key not in seen:
                seen.add(o[4].key)
                unique.append(o)
        return [(a, cand, f"{why} Expected ×{expected:.2f} on {self.s.objective}; "
                          f"{_how(a, best, cand)}.") for _, expected, _, a, cand, why in unique]

    def _pick(self, best: Candidate, tried: set[str], left: float) -> Pick | str | None:
        """The most promising action that fits in `left` seconds, and the more promising
        ones that do not (to be recorded as skipped). None: no action applies; a str: none
        fits, and why."""
        options = self._options(best, tried)
        if not options:
            return None
        skipped: list[tuple[Action, Candidate, str, str]] = []
        for action, cand, thought in options:
            cand, fit = fit_action(self, action, cand, best, left)
            if fit.steps is not None:
                return action, cand, thought + (f" {fit.note}" if fit.note else ""), skipped
            skipped.append((action, cand, thought, fit.note))
        # nothing fits: stop here rather than list every remaining action as skipped
        return f"time budget: the next step, {options[0][0].name}, is {skipped[0][3]}"

    def run(self) -> dict[str, Any]:
        ensure_actions_valid(self.actions)
        t_start = time.perf_counter()
        base_cand = self.base_cand
        bar = self.bar = tqdm(desc="optimize", unit="trial", disable=not self.progress)
        self._size_search()
        ref_trial = self.ref_trial = self.run_trial(
            0, base_cand, "baseline", "baseline",
            "Measure the original model on this machine first: every later step is judged "
            f"against it{as_run(base_cand)}.", None, None)
        if ref_trial.observation is None:
            raise UserError(f"the baseline could not be measured: {ref_trial.full_reason}")
        check_whole(self)  # a budget too small for a whole output is refused here
        if self.ref_results is None:  # baseline reused from the store: quality needs results
            self._phase("baseline: the reference outputs")
            self.ref_results, self.ref_info = cached_reference(
                self.out, self._ref_key(), lambda: measure(
                    self.base, self.texts, self.s.batch_size, 1, gen_tokens=0,
                    progress=self.progress)[1])
        save_early(self, self.out / "variants" / "00-baseline")
        warm_plots(self)
        bar.update(1)
        baseline = ref_trial.observation
        best, best_obs, best_trial = base_cand, baseline, ref_trial
        tried: set[str] = {base_cand.key}  # the original is measured: no action leads back
        stop = "no more actions apply"
        step = n_trials = 0
        while True:
            if self.s.max_trials is not None and n_trials >= self.s.max_trials:
                stop = f"trial limit of {self.s.max_trials} reached"
                break
            if self.s.target and gain(best_obs, baseline, self.s.objective) >= self.s.target:
                stop = f"target ×{self.s.target} reached"
                break
            reserve = self.reserve_s(best_trial)
            left = self.budget.left() - reserve
            self.step_deadline = time.time() + left
            if left <= 0 and n_trials == 0 and not ref_trial.reused:
                stop = (f"time budget: measuring the original model took "
                        f"{ref_trial.seconds:.0f}s of {self.budget.total_s:.0f}s, and the "
                        f"end of the run needs ~{reserve:.0f}s; give a larger --budget-s or a "
                        "smaller --n-eval")
                break
            picked = self._pick(best, tried, left)
            if picked is None:
                break
            if isinstance(picked, str):
                assert self.end_plan is not None
                stop = f"{picked} ({self.end_plan.describe()})"
                break
            action, cand, thought, skipped = picked
            for s_action, s_cand, s_thought, why in skipped:
                tried.add(s_cand.key)
                step += 1
                self.skip(step, s_action, s_cand, s_thought, best.key, why)
            # the candidate as offered and as cut to the time left are the same trial
            offered = action.apply(best, self.runtime_kinds)
            tried.update({cand.key} | ({offered.key} if offered else set()))
            step += 1
            n_trials += 1
            trial = self.run_trial(step, cand, action.name, action.family, thought, best.key,
                                   best_obs)
            trial.reserve_s = reserve  # the trace says what the end was kept (not stored)
            if trial.decision is Decision.ROLLED_BACK and trial.over_bound:
                trial, step = self._over_bound(step, action, trial, cand, best_trial)
            bar.update(1)
            if trial.decision is Decision.KEPT and trial.observation is not None:
                best = Candidate.from_json(trial.candidate)
                best_obs, best_trial = trial.observation, trial
        bar.close()
        self.bar = self.step_deadline = None
        end = plan_end(self, best_trial).to_json()  # the plan the end starts with (report)
        return {"stop": stop, "end_plan": end, "baseline": ref_trial, "best": best_trial,
                "best_candidate": best,
                "trials": self.log, "reused": self.reused, "reference_outputs": self.ref_info,
                "seconds": time.perf_counter() - t_start}


def _how(action: Action, best: Candidate, cand: Candidate) -> str:
    """How the action relates to the best candidate: an engine switch replaces its backend
    (the recipe's transforms stay), a number format takes the form of the engine at hand;
    anything else is applied on top of it."""
    if cand.backend != best.backend:
        return f"replacing the backend of [{best.describe()}] with {cand.backend}"
    if cand.backend in action.formats:
        opts = ", ".join(f"{k}={v}" for k, v in action.formats[cand.backend].items())
        return f"on {cand.backend} this is {opts}: applying to [{best.describe()}]"
    return f"applying to [{best.describe()}]"


def ensure_actions_valid(actions: Sequence[Action]) -> None:
    """Every transform an action names must exist and validate, before any work."""
    for a in actions:
        for step in a.steps:
            config_from_dict(step)
    names = [a.name for a in actions]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate action names in {names}")
