"""The ReAct loop: Thought → Action → Observation, keep or roll back.

Starting from the original model (the baseline), each step picks the untried action with
the best expected gain for this machine and objective (Thought), applies it to the best
candidate so far (Action), measures the result here (Observation), and keeps it only if
it improves the objective by at least `min_gain` while staying within the quality bound.
Every trial is stored, so `resume=True` continues a run without redoing finished trials.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..core.bounds import check_at_least, check_max_drop
from ..core.errors import UserError
from ..core.handle import ModelHandle
from ..core.hardware import hardware_profile
from ..core.transform import compress, config_from_dict
from ..data import texts_for
from ..measure.harness import measure
from ..models import load
from ..tasks import get_task
from .actions import Action, Candidate, Context, model_facts
from .store import TrialStore

OBJECTIVES = {  # name → (observation path, higher is better)
    "throughput": (("throughput", "items_per_s"), True),
    "latency": (("latency_ms", "p50"), False),
    "size": (("size_mb",), False),
}
STORE_NAME = "trials.sqlite"


def objective_value(obs: dict[str, Any], objective: str) -> float:
    path, _ = OBJECTIVES[objective]
    v: Any = obs
    for p in path:
        v = v[p]
    return float(v)


def gain(obs: dict[str, Any], ref: dict[str, Any], objective: str) -> float:
    """How many times better `obs` is than `ref` on the objective (>1 is better)."""
    a, b = objective_value(obs, objective), objective_value(ref, objective)
    return a / b if OBJECTIVES[objective][1] else b / a


def within_bound(task: str, quality: dict[str, float], max_drop: float) -> tuple[bool, str]:
    """The user's bound on the task's quality score, plus, for embeddings, neighbour recall
    (mean cosine alone can hide re-ordered search results)."""
    drop = get_task(task).drop(quality)
    if drop > max_drop:
        return False, f"quality drop {drop:.4f} > bound {max_drop}"
    if task == "embedding":
        floor = max(0.0, 1 - 5 * max_drop)
        if quality["top10_recall"] < floor:
            return False, f"top-10 recall {quality['top10_recall']:.3f} < {floor:.3f}"
    return True, f"quality drop {drop:.4f} ≤ {max_drop}"


@dataclasses.dataclass
class PlanSettings:
    model: str
    objective: str = "throughput"
    max_drop: float = 0.01
    budget_s: float = 900.0
    data: str | None = None
    n_eval: int = 400
    batch_size: int = 32
    latency_runs: int = 30
    min_gain: float = 0.03
    max_trials: int | None = None
    target: float | None = None  # e.g. 2.0: stop once the objective is ×2 the baseline

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose one of "
                            f"{', '.join(OBJECTIVES)}")
        check_max_drop(self.max_drop)
        check_at_least("--batch-size", self.batch_size)
        if self.budget_s <= 0:
            raise UserError(f"--budget-s must be positive, got {self.budget_s}")
        if self.n_eval < 10:
            raise UserError("n_eval must be at least 10 for a meaningful quality figure")

    def store_key(self) -> dict[str, Any]:
        """Settings that change what a trial measures (budget and trial caps do not)."""
        keep = ("model", "objective", "max_drop", "data", "n_eval", "batch_size", "min_gain")
        return {k: getattr(self, k) for k in keep}


class Builder:
    """Builds models from recipes, reusing the handles of recipe prefixes (small LRU)."""

    def __init__(self, base: ModelHandle, size: int = 6):
        self.base = base
        self.cache: OrderedDict[tuple[str, ...], ModelHandle] = OrderedDict()
        self.built: OrderedDict[str, ModelHandle] = OrderedDict()
        self.size = size

    def torch_handle(self, transforms: tuple[str, ...]) -> ModelHandle:
        for n in range(len(transforms), 0, -1):
            if transforms[:n] in self.cache:
                handle, done = self.cache[transforms[:n]], n
                self.cache.move_to_end(transforms[:n])
                break
        else:
            handle, done = self.base, 0
        for i in range(done, len(transforms)):
            handle = compress(handle, [config_from_dict(json.loads(transforms[i]))])
            self.cache[transforms[:i + 1]] = handle
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return handle

    def build(self, cand: Candidate) -> ModelHandle:
        """The model for a recipe; the last few built are kept, because the best candidate
        and the Pareto variants are built again to be saved (distillation is not cheap)."""
        if cand.key in self.built:
            self.built.move_to_end(cand.key)
            return self.built[cand.key]
        handle = self.torch_handle(cand.transforms)
        if cand.backend != "torch" or cand.backend_options():
            from ..backends import to_backend

            handle = to_backend(handle, cand.backend, **cand.backend_options())
        self.built[cand.key] = handle
        while len(self.built) > self.size:
            self.built.popitem(last=False)
        return handle


class Planner:
    def __init__(self, settings: PlanSettings, out: Path, actions: Sequence[Action],
                 resume: bool = False, progress: bool = True):
        settings.validate()
        self.s, self.out, self.progress = settings, Path(out), progress
        self.store = TrialStore(self.out / STORE_NAME)
        self.store.check_run(settings.store_key(), resume)
        self.base = load(settings.model)
        self.task = get_task(self.base.task)
        self.actions = [a for a in actions if self.base.task in a.tasks]
        self.runtime_kinds = {s["type"] for a in self.actions if a.runtime for s in a.steps}
        self.builder = Builder(self.base)
        self.texts = texts_for("eval", settings.data, settings.n_eval)
        if len(self.texts) < 10:
            raise UserError(f"only {len(self.texts)} held-out texts; give more data (--data)")
        self.log: list[dict[str, Any]] = []
        self.ref_results: dict[str, Any] | None = None
        self.reused = 0

    # -- one trial -----------------------------------------------------------------------
    def _observe(self, handle: ModelHandle) -> dict[str, Any]:
        report, results = measure(handle, self.texts, self.s.batch_size, self.s.latency_runs,
                                  progress=False)
        if self.ref_results is None:
            self.ref_results = results
        report["quality"] = self.task.compare(self.ref_results, results)
        report["quality_drop"] = self.task.drop(report["quality"])
        return {k: report[k] for k in ("latency_ms", "throughput", "size_mb", "params", "rss_mb",
                                       "quality", "quality_drop") if k in report}

    def _trial(self, step: int, cand: Candidate, action: str, family: str, thought: str,
               parent: str | None, best_obs: dict[str, Any] | None) -> dict[str, Any]:
        stored = self.store.get(cand.key)
        if stored is not None and (stored["observation"] is not None
                                   or stored["decision"] == "failed"):
            self.reused += 1
            trial = {**stored, "family": family, "reused": True}
            self.log.append(trial)
            return trial
        t0 = time.perf_counter()
        try:
            obs = self._observe(self.builder.build(cand) if parent else self.base)
        except (UserError, RuntimeError, ValueError, NotImplementedError) as e:
            obs, decision, reason = None, "failed", f"{type(e).__name__}: {e}"
        else:
            assert obs is not None  # _observe returned a measurement
            if best_obs is None:
                decision, reason = "baseline", "the original model"
            else:
                ok, why = within_bound(self.base.task, obs["quality"], self.s.max_drop)
                g = gain(obs, best_obs, self.s.objective)
                if not ok:
                    decision, reason = "rolled back", why
                elif g < 1 + self.s.min_gain:
                    decision = "rolled back"
                    reason = f"{self.s.objective} ×{g:.2f} vs best: does not pay here ({why})"
                else:
                    decision, reason = "kept", f"{self.s.objective} ×{g:.2f} vs best; {why}"
        trial = {"key": cand.key, "step": step, "action": action, "thought": thought,
                 "parent": parent, "candidate": cand.to_json(), "observation": obs,
                 "decision": decision, "reason": reason,
                 "seconds": time.perf_counter() - t0}
        self.store.put(trial)
        if obs is not None and self.ref_results is None:
            raise AssertionError("the baseline must be observed first")
        trial.update(family=family, reused=False)
        self.log.append(trial)
        return trial

    # -- the loop ------------------------------------------------------------------------
    def _context(self) -> Context:
        return Context(hardware_profile(), self.base.task, self.s.objective,
                       model_facts(self.base.model, self.base.task), self.log)

    def _next(self, best: Candidate, tried: set[str]) -> tuple[Action, Candidate, str] | None:
        ctx = self._context()
        kept = {t["action"] for t in self.log if t["decision"] == "kept"}
        options: list[tuple[float, int, Action, Candidate, str]] = []
        for a in self.actions:
            if a.name in tried:
                continue
            if a.level > 0 and not any(b.family == a.family and b.level == a.level - 1
                                       and b.name in kept for b in self.actions):
                continue  # escalate a family only after its milder step paid off
            cand = a.apply(best, self.runtime_kinds)
            if cand is None:
                continue
            expected, why = a.expect(ctx)
            options.append((expected, -len(options), a, cand, why))
        if not options:
            return None
        expected, _, action, cand, why = max(options, key=lambda o: (o[0], o[1]))
        thought = f"{why} Expected ×{expected:.2f} on {self.s.objective}; applying to " \
                  f"[{best.describe()}]."
        return action, cand, thought

    def run(self) -> dict[str, Any]:
        ensure_actions_valid(self.actions)
        t_start = time.perf_counter()
        base_cand = Candidate()
        ref_trial = self._trial(0, base_cand, "baseline", "baseline",
                                "Measure the original model on this machine first: every later "
                                "step is judged against it.", None, None)
        if ref_trial["observation"] is None:
            raise UserError(f"the baseline could not be measured: {ref_trial['reason']}")
        if self.ref_results is None:  # baseline reused from the store: quality needs results
            self.ref_results = measure(self.base, self.texts, self.s.batch_size, 1,
                                       progress=False)[1]
        baseline = ref_trial["observation"]
        best, best_obs, best_trial = base_cand, baseline, ref_trial
        tried: set[str] = set()
        stop = "no more actions apply"
        bar = tqdm(desc="optimize", unit="trial", disable=not self.progress)
        step = 0
        while True:
            elapsed = time.perf_counter() - t_start
            if elapsed > self.s.budget_s:
                stop = f"time budget of {self.s.budget_s:.0f}s reached"
                break
            if self.s.max_trials is not None and step >= self.s.max_trials:
                stop = f"trial limit of {self.s.max_trials} reached"
                break
            if self.s.target and gain(best_obs, baseline, self.s.objective) >= self.s.target:
                stop = f"target ×{self.s.target} reached"
                break
            nxt = self._next(best, tried)
            if nxt is None:
                break
            action, cand, thought = nxt
            tried.add(action.name)
            step += 1
            bar.set_postfix_str(f"{action.name} | best ×"
                                f"{gain(best_obs, baseline, self.s.objective):.2f}")
            trial = self._trial(step, cand, action.name, action.family, thought, best.key,
                                best_obs)
            bar.update(1)
            if trial["decision"] == "kept":
                best, best_obs, best_trial = cand, trial["observation"], trial
        bar.close()
        return {"stop": stop, "baseline": ref_trial, "best": best_trial, "best_candidate": best,
                "trials": self.log, "reused": self.reused,
                "seconds": time.perf_counter() - t_start}


def ensure_actions_valid(actions: Sequence[Action]) -> None:
    """Every transform an action names must exist and validate, before any work."""
    for a in actions:
        for step in a.steps:
            config_from_dict(step)
    names = [a.name for a in actions]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate action names in {names}")
