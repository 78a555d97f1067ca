"""The variant ladder: several artifacts of one model, best (most expensive) first.

Each variant carries a service-time model measured at start-up and refreshed by live
batches (EWMA). From the queue, the ladder predicts when every queued job would finish
on each variant; it steps down as soon as the active one would miss a deadline, and
steps back up one level only after the better one has been predicted comfortably under
the SLO for a while (hysteresis), so it does not flap.

A time-per-output-token objective (`tpot_s`, `--tpot-ms`) moves the same ladder: the
active variant's time per token, measured on finished generations at the present load
(EWMA), above the objective steps it down to the first variant predicted within
`down_headroom` of it; it steps back up once the better one is predicted under
`up_ratio` of it for `up_hold_s`. Another variant's time per token at the present load
is predicted from the active one's, scaled by the two variants' times alone (measured
at start-up), since only the active one is seen under this load.
"""
from __future__ import annotations

import bisect
import collections
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..tasks import get_task

if TYPE_CHECKING:
    from ..core.handle import ModelHandle


class ServiceTime:
    """Seconds per model call as a function of batch size: points at measured sizes,
    linear in between, per-item beyond the largest. Live calls update the nearest
    measured point by EWMA (scaled to that size), so the curve keeps its shape."""

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.points: dict[int, float] = {}
        self._lock = threading.Lock()

    def set(self, n: int, seconds: float) -> None:
        with self._lock:
            self.points[n] = seconds

    def predict(self, n: int) -> float:
        if n <= 0 or not self.points:
            return 0.0
        sizes = sorted(self.points)
        if n <= sizes[0]:
            return self.points[sizes[0]]
        if n >= sizes[-1]:
            return self.points[sizes[-1]] * n / sizes[-1]
        i = bisect.bisect_left(sizes, n)
        lo, hi = sizes[i - 1], sizes[i]
        w = (n - lo) / (hi - lo)
        return self.points[lo] * (1 - w) + self.points[hi] * w

    def observe(self, n: int, seconds: float) -> None:
        if n <= 0:
            return
        with self._lock:
            if not self.points:
                self.points[n] = seconds
                return
            bucket = min(self.points, key=lambda s: abs(math.log(s) - math.log(n)))
        pred_n, pred_b = self.predict(n), self.predict(bucket)
        scaled = seconds * pred_b / pred_n if pred_n > 0 else seconds
        with self._lock:
            if scaled < 0.25 * self.points[bucket]:  # far faster than believed: the old
                self.points[bucket] = scaled  # figure was a one-off (compile, cold cache)
            else:
                self.points[bucket] = (1 - self.alpha) * self.points[bucket] \
                    + self.alpha * scaled


class Calibration:
    """How far reality runs behind prediction: the `quantile` of actual / predicted
    answer time over the last `window` answers (1.0 until `min_samples` are in).
    Admission multiplies its predictions by it, so that about `quantile` of admitted
    requests meet their deadline even when the service-time model is optimistic
    (contention for the CPU, the event loop's own delay, a slower variant in use).
    Predictions under `floor_s` count as `floor_s`: tiny ones are all noise."""

    def __init__(self, quantile: float = 0.99, window: int = 500, min_samples: int = 50,
                 floor_s: float = 0.0, cap: float = 8.0):
        self.quantile, self.min_samples, self.floor_s, self.cap = \
            quantile, min_samples, floor_s, cap
        self._ratios: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self._factor = 1.0
        self._since = 0

    @property
    def factor(self) -> float:
        return self._factor

    def reset(self) -> None:
        """Forget: an idle server refusing on its predictions must not stay stuck on a
        factor learnt in a slow spell (refused requests teach it nothing new)."""
        with self._lock:
            self._ratios.clear()
            self._factor, self._since = 1.0, 0

    def observe(self, predicted_s: float, actual_s: float) -> None:
        if predicted_s <= 0:
            return
        with self._lock:
            self._ratios.append(actual_s / max(predicted_s, self.floor_s))
            self._since += 1
            if len(self._ratios) >= self.min_samples and self._since >= 10:
                self._since = 0
                ordered = sorted(self._ratios)
                q = ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]
                self._factor = min(self.cap, max(1.0, q))


@dataclass
class GenTime:
    """Generation cost: a prompt pass (prefill) plus a time per new token, both EWMA."""

    prefill_s: float = 0.0
    token_s: float = 0.0
    alpha: float = 0.2
    slots: int = 1  # sequences decoded together (a decode engine's slots)
    solo_s: float = 0.0  # per token of one sequence alone (start-up measurement): 0 unknown

    def predict(self, new_tokens: int) -> float:
        return self.prefill_s + self.token_s * new_tokens

    def observe(self, prefill_s: float, token_s: float | None) -> None:
        a = self.alpha
        self.prefill_s = prefill_s if self.prefill_s == 0 else \
            (1 - a) * self.prefill_s + a * prefill_s
        if token_s is not None:
            self.token_s = token_s if self.token_s == 0 else (1 - a) * self.token_s + a * token_s

    def observe_alone(self, prefill_s: float, token_s: float | None) -> None:
        """A measurement of one sequence alone: also the variant's speed apart from load."""
        self.observe(prefill_s, token_s)
        if token_s is not None:
            self.solo_s = token_s


@dataclass
class Variant:
    name: str
    handle: ModelHandle
    quality: float | None  # measured against the original (1.0 for the original itself)
    service: ServiceTime
    gen: GenTime = field(default_factory=GenTime)
    engine: Any = None  # its decode engine, once the server made one (serving/decode.py)
    kv_plan: Any = None  # that engine's KV cache plan (backends/kv_plan.KVPlan), if sized
    draft_engine: Any = None  # a draft model's engine beside it (serving/speculate.py)

    def cost(self) -> float:
        """What orders the ladder: a full batch for encoders, 32 new tokens for LMs."""
        if get_task(self.handle.task).generates:
            return self.gen.predict(32)
        return self.service.predict(max(self.service.points, default=1))


# The one figure per task that says how close a variant's answers are to the original's
# (1.0: the same), on held-out texts: what the ladder shows and react_effective_quality
# averages. The same key whichever command measured it, so variants compare.
HEADLINE_QUALITY = {"embedding": "mean_cosine", "classification": "top1_agreement",
                    "image-classification": "top1_agreement", "causal-lm": "token_agreement"}
UNMEASURED = ("changed from the original and never measured against it (its artifact "
              "records no quality); its answers count in react_unknown_quality_answers_total")


def variant_quality(handle: ModelHandle) -> float | None:
    """Quality from the artifact's measured metrics; 1.0 when nothing was changed; None
    when it was changed and never measured."""
    q = recorded_quality(handle.metrics or {}, getattr(handle, "task", None))
    if q is not None:
        return q
    if not handle.transforms and handle.backend == "torch":
        return 1.0
    return None


def recorded_quality(metrics: dict[str, Any], task: str | None = None) -> float | None:
    """The quality against the original recorded in `metrics`, wherever the command that
    measured it put it: at the top (`react optimize` saves its trial's observation there,
    as does whoever saves a `bench` report) or in a section named after the step
    (`react compress` writes `metrics.compress.quality`). The top wins: it describes the
    artifact as saved."""
    sections = [metrics] + [v for v in metrics.values() if isinstance(v, dict)]
    for section in sections:
        q = _quality_in(section, task)
        if q is not None:
            return q
    return None


def _quality_in(section: dict[str, Any], task: str | None) -> float | None:
    quality = section.get("quality")
    if isinstance(quality, dict):
        keys = [HEADLINE_QUALITY[task]] if task in HEADLINE_QUALITY else \
            list(HEADLINE_QUALITY.values())
        for key in keys:
            value = quality.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(max(0.0, min(1.0, value)))
    drop = section.get("quality_drop")  # only the drop recorded: 1 - drop
    if isinstance(drop, (int, float)) and not isinstance(drop, bool) and math.isfinite(drop):
        return float(max(0.0, min(1.0, 1.0 - drop)))
    return None


@dataclass
class Job:
    """What the ladder needs to know of a queued request."""

    deadline: float  # monotonic seconds
    items: int = 1
    new_tokens: int = 0  # > 0 for generation: the job runs alone


# In a handle's metrics: the variant its ladder starts at (a `react optimize` run's choice)
SERVE_FIRST = "serve_first"


class Ladder:
    def __init__(self, variants: Sequence[Variant], slo_s: float, max_batch: int,
                 max_delay_s: float, down_headroom: float = 0.8, up_ratio: float = 0.5,
                 up_hold_s: float = 1.0, start: int = 0, tpot_s: float = math.inf):
        if not variants:
            raise ValueError("a ladder needs at least one variant")
        self.variants = list(variants)
        self.slo_s, self.max_batch, self.max_delay_s = slo_s, max_batch, max_delay_s
        self.down_headroom, self.up_ratio, self.up_hold_s = down_headroom, up_ratio, up_hold_s
        self.tpot_s = tpot_s
        # where serving starts (the variant `react optimize` chose, when it is a run's
        # ladder), and the highest level the ladder climbs back to: with an SLO, the best
        # quality that holds it (0); without one there is nothing to trade quality for, so
        # it stays at its start and steps down only for a client's own deadline
        self.active = start
        self.top = 0 if self._objective else start
        self._low_since: float | None = None
        self.switches: list[tuple[float, int, int]] = []  # (time, from, to)

    def order_by_cost(self) -> None:
        """Most expensive first (after the warm-up measured each one)."""
        current, top = self.variants[self.active], self.variants[self.top]
        self.variants.sort(key=lambda v: -v.cost())
        self.active = self.variants.index(current)
        self.top = 0 if self._objective else self.variants.index(top)

    @property
    def _objective(self) -> bool:
        """An operator's objective (latency or time per token) to trade quality for."""
        return math.isfinite(self.slo_s) or math.isfinite(self.tpot_s)

    @property
    def current(self) -> Variant:
        return self.variants[self.active]

    # -- prediction -----------------------------------------------------------------
    def finish_times(self, level: int, jobs: Sequence[Job], busy_s: float) -> list[float]:
        """Predicted seconds from now until each job (given in EDF order) is answered on
        `level`: encoder jobs packed into batches of max_batch, generations one by one."""
        v = self.variants[level]
        out: list[float] = []
        t = busy_s + self.max_delay_s
        pending: list[int] = []  # indices of jobs in the batch being filled
        filled = 0
        lanes = [0.0] * v.gen.slots  # when each decode slot frees, after the time so far

        def close() -> None:
            nonlocal t, filled
            if pending:
                t += v.service.predict(filled)
                out.extend([t] * len(pending))
                pending.clear()
                filled = 0

        for i, job in enumerate(jobs):
            if job.new_tokens > 0:  # generations share the slots; judged on the first token
                close()
                lane = min(range(len(lanes)), key=lanes.__getitem__)
                out.append(t + lanes[lane] + v.gen.prefill_s + v.gen.token_s)
                lanes[lane] += v.gen.predict(job.new_tokens)
                if len(lanes) == 1:
                    t, lanes[0] = t + lanes[0], 0.0
                continue
            if filled and filled + job.items > self.max_batch:
                close()
            pending.append(i)
            filled += job.items
        close()
        return out

    def fits(self, level: int, jobs: Sequence[Job], now: float, busy_s: float,
             headroom: float) -> bool:
        done = self.finish_times(level, jobs, busy_s)
        return all(f <= headroom * (j.deadline - now) for f, j in zip(done, jobs, strict=True))

    def least_finish(self, jobs: Sequence[Job], new: Job, busy_s: float) -> float:
        """Least predicted seconds, over the variants, until `new` is answered behind the
        jobs (EDF order) ahead of it."""
        ahead = [j for j in jobs if j.deadline <= new.deadline] + [new]
        return min(self.finish_times(level, ahead, busy_s)[-1]
                   for level in range(len(self.variants)))

    def tpot_at(self, level: int) -> float:
        """Predicted seconds per output token on `level` at the present load (0: not
        measured yet): the active variant's own recent figure; another's is the active
        one's scaled by their times alone, when both were measured, else its last own."""
        v, cur = self.variants[level], self.current
        if level != self.active and v.gen.solo_s > 0 and cur.gen.solo_s > 0 \
                and cur.gen.token_s > 0:
            return cur.gen.token_s * v.gen.solo_s / cur.gen.solo_s
        return v.gen.token_s

    def tpot_fits(self, level: int, ratio: float) -> bool:
        """`level`'s predicted time per token is within `ratio` of the objective."""
        return self.tpot_at(level) <= ratio * self.tpot_s

    # -- switching ------------------------------------------------------------------
    def update(self, jobs: Sequence[Job], now: float, busy_s: float = 0.0,
               factor: float = 1.0) -> int:
        """Re-decide the active variant for the queue `jobs` (EDF order); returns it.
        `factor` scales every prediction (the admission's Calibration)."""
        before = self.active
        headroom = self.down_headroom / factor
        # time per token: measured, already smoothed (EWMA of finished generations), so a
        # sustained excess over the objective itself steps down, not a prediction near it
        target = before
        if not (self.fits(self.active, jobs, now, busy_s, headroom)
                and self.tpot_fits(self.active, 1.0)):
            lower = range(self.active + 1, len(self.variants))
            target = next((lv for lv in lower
                           if self.fits(lv, jobs, now, busy_s, headroom)
                           and self.tpot_fits(lv, self.down_headroom)),
                          len(self.variants) - 1)
            self._low_since = None
        elif self.active > self.top and self._up_ok(jobs, now, busy_s, factor) \
                and self.tpot_fits(self.active - 1, self.up_ratio):
            if self._low_since is None:
                self._low_since = now
            if now - self._low_since >= self.up_hold_s:
                target = self.active - 1
                self._low_since = None
        else:
            self._low_since = None
        if target != before:
            if math.isfinite(self.tpot_s):  # it starts from its time per token predicted
                # at this load, not from what it showed when it last served (under another
                # load, or in a slow spell that made the ladder leave it)
                self.variants[target].gen.token_s = self.tpot_at(target)
            self.active = target
            self.switches.append((now, before, self.active))
        return self.active

    def _up_ok(self, jobs: Sequence[Job], now: float, busy_s: float, factor: float) -> bool:
        level = self.active - 1
        # judged against the SLO, not each deadline: load falling is what we look for
        limit = self.up_ratio * self.slo_s / factor
        done = self.finish_times(level, jobs, busy_s) or \
            self.finish_times(level, [Job(now + self.slo_s)], busy_s)
        return all(f <= limit for f in done)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": v.name, "level": i, "active": i == self.active, "quality": v.quality,
                 **({} if v.quality is not None else {"quality_note": UNMEASURED}),
                 "service_ms": {n: round(s * 1e3, 3) for n, s in sorted(v.service.points.items())},
                 "prefill_ms": round(v.gen.prefill_s * 1e3, 3),
                 "ms_per_token": round(v.gen.token_s * 1e3, 3),
                 **({"kv_cache": v.kv_plan.as_dict()} if v.kv_plan is not None else {})}
                for i, v in enumerate(self.variants)]

