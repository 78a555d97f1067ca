"""Repair: precision per layer under the quality bound.

When a lower-precision step (an Action with a `fallback` option, e.g. ONNX Runtime int8 and
its `fp32_layers`) pays on speed but goes over the quality bound, the loop does not give up
on it: as Intel Neural Compressor and NNCF's accuracy-controlled quantization do, it keeps
the most sensitive layers in higher precision and searches for the smallest such set that
meets the bound.

1. Rank: the candidate's backend ranks the layers it quantizes (`Backend.rank_layers`) on
   calibration items (the calibration split only, never the held-out items the trials are
   judged on). The layers are the MatMul/Gemm and convolutions (depthwise too) int8
   quantizes. ONNX Runtime dynamic int8: the error int8 adds to each layer's own output in
   the fp32 export (backends/onnx_layers.layer_sensitivity); static int8 (a CNN, whose
   activations between layers are int8 too): how much the int8 model's output error falls
   when that one layer is float (onnx_layers.float_effect). OpenVINO: how much the int8
   model's output error falls when that one layer's input stays float
   (backends/openvino_int8): NNCF's SmoothQuant moves error between layers, so only the
   quantized model itself says which layers matter (on minilm the ONNX ranking's first
   layers did not move recall). No rule such as "all depthwise convolutions" decides.
2. Search k, the number of most sensitive layers kept: growing steps 1, 2, 4, ... until a
   fallback meets the bound at 95% confidence (every interval of the quality on the right
   side of its limit), then bisection between the last k that missed and the first that
   met it. A fallback that meets the bound only by its point estimate is on the edge: the
   next sample of texts (a user's, or a larger corpus, where top-10 recall falls) fails
   it as often as not. A fallback that meets it at 95% confidence is also measured on the
   held-out items the search never judged on (planner/heldout.py, where the data has
   them): it counts only if it holds there at 95% confidence too, and is rolled back if
   it is outside the bound there. Each fallback is a real trial of the loop (built,
   measured on the held-out texts against the original, judged by the loop's rule against
   the best before the repair), in the trace and the store. Of the fallbacks that meet
   the bound and pay, the one with the fewest layers in float is kept, preferring those
   that meet it at 95% confidence (fewer float layers are faster; between two fallbacks
   the difference is mostly noise), the others are marked rolled back. Growing stops when
   a fallback is already too slow to pay: more layers in float are only slower.
3. The budget: each fallback starts only if the overshooting trial's cost (build and
   measure) fits in what is left after the end of the run's reserve.

Generic over the backend: the fallback is the Action's backend option name, and the layer
names are the exported ONNX graph's node names, which every ONNX-based backend shares.

The repair talks to the planner through `RepairHost` alone: it runs, skips and revises
trials through the planner's public methods, and what it learns about a trial goes into
the trial's fields (`Trial.unseen`), not into text it would have to read back.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from ..core.backend import get_backend
from ..core.deadline import DeadlinePassed, deadline
from ..core.errors import is_our_bug
from ..data import items_for
from ..tasks import bound_decided, within_bound
from .actions import Action, Candidate
from .heldout import HeldOutHost, unseen_quality
from .objective import gain
from .record import NEVER_JUDGED, Decision, Trial

if TYPE_CHECKING:
    from ..core.handle import ModelHandle
    from .budget import Budget
    from .builder import Builder

__all__ = ["NEVER_JUDGED", "RepairHost", "rank_layers", "repair", "short"]
CALIBRATION_TEXTS = 32  # enough to rank layers; the ranking costs one fp32 forward on them
MAX_FALLBACKS = 8  # fallback trials per overshooting step (growing + bisection)
SHOW_LAYERS = 4  # layers named in a Thought (the candidate and report list all)


def short(layer: str) -> str:
    """`/model/encoder/layer.5/output/dense/MatMul` → `layer.5/output/dense`, and
    `/model/blocks.1/conv_dw/Conv` → `blocks.1/conv_dw`."""
    name = layer.strip("/")
    for prefix in ("model/encoder/", "model/"):
        name = name.removeprefix(prefix)
    for op in ("/MatMul", "/Gemm", "/Conv"):
        name = name.removesuffix(op)
    return name


class RepairHost(HeldOutHost, Protocol):
    """What the repair needs of the planner (loop.Planner is one): the run's settings,
    model, budget and builder, and its public trial methods (trial.TrialRunner)."""

    budget: Budget
    builder: Builder
    step_deadline: float | None
    last_built: tuple[str, ModelHandle] | None

    def run_trial(self, step: int, cand: Candidate, action: str, family: str, thought: str,
                  parent: str | None, best_obs: dict[str, Any] | None) -> Trial: ...

    def skip(self, step: int, action: Action, cand: Candidate, thought: str,
             parent: str | None, reason: str, decision: Decision = ...) -> Trial: ...

    def revise(self, trial: Trial, **changes: Any) -> Trial: ...

    def reserve_s(self, best_trial: Trial) -> float: ...


def rank_layers(planner: RepairHost, cand: Candidate) -> tuple[list[tuple[str, float]], float, int]:
    """The candidate's quantizable layers, most sensitive first, with their score, as the
    candidate's backend ranks them (`Backend.rank_layers`); the seconds the ranking took
    and the number of calibration items."""
    t0 = time.perf_counter()
    items = items_for(planner.base, "calibration", planner.s.data, CALIBRATION_TEXTS)
    scores = get_backend(cand.backend).rank_layers(
        planner.builder.torch_handle(cand.transforms), items, **cand.backend_options())
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    return ranked, time.perf_counter() - t0, len(items)


def _check_unseen(planner: RepairHost, t: Trial) -> tuple[Trial, bool, bool]:
    """The fallback of trial `t` on the held-out items the search never judged on
    (planner/heldout.py), where the data has them: the trial as revised, whether it meets
    the bound there, and whether at 95% confidence (both True where there are none). What
    was measured goes into `unseen` and `unseen_quality` (a trial reused from the store
    has its first run's: replaced); a fallback outside the bound there is rolled back."""
    built = planner.last_built
    # the model the trial measured, or, for a trial reused from the store, built again
    handle = built[1] if built is not None and built[0] == t.key else \
        planner.builder.build(Candidate.from_json(t.candidate))
    quality = unseen_quality(planner, handle)
    if quality is None:
        return t, True, True
    task, bound = planner.base.task, planner.s.max_drop
    ok, why = within_bound(task, quality, bound)
    sure = bound_decided(task, quality, bound)
    decision = Decision.ROLLED_BACK if not ok and t.decision is Decision.KEPT else t.decision
    t = planner.revise(t, unseen=why, unseen_quality=quality, decision=decision)
    return t, ok, sure


def _schedule(n: int, lo: int, hi: int | None, k: int) -> int | None:
    """The next k to try: doubling until one met the bound (`hi`), then bisecting."""
    if hi is None:  # never all n: that is the fp32 model, slower than measured already
        nxt = min(max(1, 2 * k), n - 1)
        return nxt if nxt > k else None
    return (lo + hi) // 2 if hi - lo > 1 else None


def repair(planner: RepairHost, action: Action, trial: Trial, cand: Candidate,
           best_trial: Trial, step: int) -> tuple[Trial, Candidate, int]:
    """Search the smallest fallback that meets the bound for a rolled-back trial of
    `action` on `cand`. Returns the trial and candidate to keep (the kept fallback with the
    fewest layers in higher precision, else the ones given) and the last step number."""
    why = _overshot(planner, action, trial, best_trial)
    if why is None:
        return trial, cand, step
    ranking = _rank(planner, action, trial, cand, best_trial, step, why)
    if ranking is None:
        return trial, cand, step + 1
    search = _Search(planner, action, trial, cand, best_trial, why, *ranking)
    step = search.run(step)
    if not search.met:
        return trial, cand, step
    chosen = _keep_smallest(planner, search.met, search.sure)
    return chosen, Candidate.from_json(chosen.candidate), step


def _overshot(planner: RepairHost, action: Action, trial: Trial, best_trial: Trial
              ) -> str | None:
    """Why the trial is outside the bound, when a fallback is worth searching for: the
    action has one, the fully quantized model paid, and the budget holds a ranking and one
    fallback. None otherwise."""
    obs, s = trial.observation, planner.s
    if action.fallback is None or obs is None:
        return None
    ok, why = within_bound(planner.base.task, obs["quality"], s.max_drop)
    if ok:
        return None  # rolled back for speed: keeping layers in float is slower
    best_obs = best_trial.observation
    assert best_obs is not None  # the best was measured
    if gain(obs, best_obs, s.objective) < 1 + s.min_gain:
        return None  # the fully quantized model did not pay: no fallback will
    if planner.budget.left() - planner.reserve_s(best_trial) < 2 * float(trial.seconds):
        return None  # no room to rank and try even one fallback
    return why


def _rank(planner: RepairHost, action: Action, trial: Trial, cand: Candidate,
          best_trial: Trial, step: int, why: str) -> tuple[list[str], float, int] | None:
    """The candidate's layers, most sensitive first, the seconds ranking took and the
    calibration items it used; None when ranking was cut by the time budget or failed
    (recorded as step `step + 1`). A bug of ours in the ranking stops the run."""
    rank_thought = (f"{action.name} overshot ({why}): rank its layers to keep the most "
                    "sensitive in higher precision.")
    try:
        # the ranking leaves room for one fallback: it stops between layers past that
        with deadline(time.time() + planner.budget.left() - planner.reserve_s(best_trial)
                      - float(trial.seconds)):
            ranked, rank_s, n_cal = rank_layers(planner, cand)
    except DeadlinePassed as e:  # the time budget, not the model: a skip, not a failure
        planner.skip(step + 1, action, cand, rank_thought, trial.parent,
                     f"time budget: ranking the layers {e}")
        return None
    # a model whose graph cannot be ranked keeps the loop's decision, and the trace says why
    except Exception as e:  # noqa: BLE001
        if is_our_bug(e):
            raise
        planner.skip(step + 1, action, cand, rank_thought, trial.parent,
                     f"ranking the layers failed: {type(e).__name__}: {e}",
                     Decision.FAILED)  # not a skip for the time budget
        return None
    return [name for name, _ in ranked], rank_s, n_cal


class _Search:
    """Grow the set of layers kept in higher precision until the bound holds, then bisect
    below it (`_schedule`); `met` holds the fallbacks the loop's rule kept, by set size,
    and `sure` the sizes that meet the bound at 95% confidence."""

    def __init__(self, planner: RepairHost, action: Action, trial: Trial, cand: Candidate,
                 best_trial: Trial, why: str, names: list[str], rank_s: float, n_cal: int):
        self.planner, self.action, self.trial, self.cand = planner, action, trial, cand
        self.best_trial, self.why, self.names = best_trial, why, names
        self.rank_s, self.n_cal = rank_s, n_cal
        self.met: dict[int, Trial] = {}
        self.sure: set[int] = set()
        self.lo: int = 0
        self.hi: int | None = None

    def run(self, step: int) -> int:
        k, tried = 0, 0
        while tried < MAX_FALLBACKS:
            nxt = _schedule(len(self.names), self.lo, self.hi, k)
            if nxt is None:
                break
            k = nxt
            step += 1
            left = self.planner.budget.left() - self.planner.reserve_s(self.best_trial)
            fb, thought = self._candidate(k)
            cost = float(self.trial.seconds)
            if cost > left:
                self.planner.skip(step, self.action, fb, thought, self.trial.parent,
                                  f"predicted to take ~{cost:.0f}s, but only "
                                  f"{max(left, 0):.0f}s of the time budget are left before "
                                  "the final save, re-measure and report")
                break
            tried += 1
            self.planner.step_deadline = time.time() + left  # its build and measurement
            if not self._try(step, k, fb, thought):
                break
        return step

    def _candidate(self, k: int) -> tuple[Candidate, str]:
        action, names = self.action, self.names
        layers = names[:k]
        assert action.fallback is not None  # _overshot returned a reason only then
        opts = {**self.cand.backend_options(), action.fallback: layers}
        fb = Candidate.from_json({**self.cand.to_json(), "backend_options": opts})
        shown = ", ".join(short(n) for n in layers[:SHOW_LAYERS]) + (
            f" and {k - SHOW_LAYERS} more" if k > SHOW_LAYERS else "")
        how = get_backend(self.cand.backend).layer_ranking
        thought = (f"{action.name} overshot ({self.why}). Ranked its {len(names)} quantizable "
                   f"layers {how} on {self.n_cal} calibration items ({self.rank_s:.1f}s); "
                   + (f"the most sensitive is {shown} → keep it" if k == 1 else
                      f"the {k} most sensitive are {shown} → keep them")
                   + f" in higher precision ({action.fallback}), "
                   + ("growing the set until the bound holds." if self.hi is None else
                      f"bisecting between {self.lo} (missed) and {self.hi} (met) layers."))
        return fb, thought

    def _try(self, step: int, k: int, fb: Candidate, thought: str) -> bool:
        """Build and measure the fallback of `k` layers; False when the search should stop.
        It is judged against the best before the repair: the smallest set that meets the
        bound is the one kept (fewer float layers are faster; a speed difference between
        two fallbacks is mostly the machine's noise)."""
        planner, task, s = self.planner, self.planner.base.task, self.planner.s
        best_obs = self.best_trial.observation
        assert best_obs is not None
        name = f"{self.action.name} + {k} layer{'s' if k > 1 else ''} fp32"
        t = planner.run_trial(step, fb, name, self.action.family, thought, self.trial.parent,
                              best_obs)
        o = t.observation
        if o is None:
            return False  # a failed build: the trace says why; more layers will not fix it
        met, why_k = within_bound(task, o["quality"], s.max_drop)
        holds = met and bound_decided(task, o["quality"], s.max_drop)
        unseen = False  # whether it was judged on items the search never judged on
        if holds:  # and on the items the search never judged on, where there are such
            t, met, holds = _check_unseen(planner, t)
            why_k, unseen = t.full_reason, t.unseen is not None
        if t.decision is Decision.KEPT:
            self.met[k] = t
        if holds:
            self.sure.add(k)
            self.hi = k  # then bisect below it: a smaller set is faster
            return True
        self.lo = k
        self.why = why_k if not met or unseen else f"{why_k}, not yet at 95% confidence"
        # already too slow to pay: keeping more layers in float is slower
        return gain(o, best_obs, s.objective) >= 1 + s.min_gain


def _keep_smallest(planner: RepairHost, met: dict[int, Trial], sure: set[int]) -> Trial:
    """One kept step per repair: the smallest set that met the bound (at 95% confidence
    where one did); the larger ones are rolled back, and the trace says why."""
    smallest = min((sure & set(met)) or met)
    for k_other, t in met.items():
        if k_other != smallest:
            planner.revise(t, decision=Decision.ROLLED_BACK,
                           reason=(f"the set of {smallest} layers meets the bound "
                                   + ("at 95% confidence; " if smallest in sure else "; ")
                                   + t.reason))
    return met[smallest]
