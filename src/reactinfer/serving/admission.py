"""Deadline-aware admission for one batcher's queue: a request is admitted only when some
variant of the ladder is predicted to answer it before its deadline, behind the requests
queued ahead of it (earliest deadline first), with the prediction scaled by how far
reality has lately run behind prediction (the calibration). A full queue refuses at once.

Under overload nearly every request is refused, each after a prediction over the whole
queue (O(queue x variants)). Between changes of the queue, of the worker's busy time or
of the service-time curves (the batcher calls `changed()`, which empties the memo) the
answer for a request that goes last in EDF order (the usual case: one SLO for all) is the
same, up to the busy time: it is kept in a memo.

`deadline_for` is the one place that decides a request's deadline: the client's
X-Deadline-Ms, else the operator's SLO, else none (infinite: the request queues up to
--max-queue and only a full queue refuses it).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .config import ServeConfig
from .ladder import Calibration, Job, Ladder
from .metrics import Metrics
from .request import Rejected, Request


class Admission:
    """Admission for the batcher of `model`. It keeps no lock of its own: the batcher
    calls every method with its lock held, so the queue, the memo and `stale` change
    together."""

    def __init__(self, model: str, ladder: Ladder, config: ServeConfig, metrics: Metrics,
                 queue: Sequence[Request], wake: Callable[[], None]):
        self.model, self.ladder, self.config, self.metrics = model, ladder, config, metrics
        self._queue = queue  # the batcher's own list: it is read here, never changed
        self._wake = wake  # tells the worker (lock held) that an estimate needs re-timing
        self.calibration = Calibration(config.admit_quantile, floor_s=calibration_floor_s(config))
        self.stale = False  # an idle server refused a request on its estimate alone
        self._memo: dict[Any, Any] = {}  # predictions, see least_finish

    def judge(self, job: Job, busy: float, now: float) -> tuple[Rejected | None, float]:
        """(why `job` is refused or None, its predicted seconds to the answer before
        calibration), with the worker busy for `busy` more seconds."""
        if len(self._queue) >= self.config.max_queue:
            return self._queue_full(busy), 0.0
        factor = self.calibration.factor
        predicted = self.least_finish(job, busy)
        if predicted <= self.config.admit_headroom / factor * (job.deadline - now) \
                or not self.config.deadline_admission:
            return None, predicted
        if not self._queue and busy == 0.0:  # idle, yet predicted too slow: re-time it
            self.stale = True
            self.calibration.reset()
            self._wake()
        self.metrics.rejected.inc(model=self.model, reason="deadline")
        left = job.deadline - now
        return Rejected(429, f"the deadline cannot be met: predicted {predicted * factor * 1e3:.0f}"
                        f" ms on the fastest variant, {left * 1e3:.0f} ms left",
                        _retry_after(predicted * factor - left)), predicted

    def _queue_full(self, busy: float) -> Rejected:
        memo = self._memo
        if "full" not in memo:  # the last queued answer on the cheapest variant
            wait = self.ladder.finish_times(len(self.ladder.variants) - 1, self.edf_jobs(), 0.0)
            memo["full"] = wait[-1] if wait else 0.0
        self.metrics.rejected.inc(model=self.model, reason="queue_full")
        return Rejected(429, f"the queue is full ({self.config.max_queue} requests)",
                        _retry_after(busy + memo["full"]))

    def edf_jobs(self) -> list[Job]:
        """The queued jobs, earliest deadline first."""
        if "edf" not in self._memo:
            self._memo["edf"] = sorted((r.job for r in self._queue), key=_deadline)
        return self._memo["edf"]

    def least_finish(self, job: Job, busy: float) -> float:
        """Predicted seconds to `job`'s answer on its best variant, before calibration."""
        memo, jobs = self._memo, self.edf_jobs()
        if jobs and job.deadline < jobs[-1].deadline:  # it goes ahead of some: no shortcut
            return self.ladder.least_finish(jobs, job, busy)
        key = (job.items, job.new_tokens)
        if key not in memo:  # finish times are the busy time plus what the queue adds
            memo[key] = self.ladder.least_finish(jobs, job, 0.0)
        return busy + memo[key]

    def changed(self) -> None:
        """The queue, the busy time or a service-time curve changed: forget the memo."""
        self._memo = {}


# Predictions under this count as this in the calibration when there is no SLO to scale
# it by: sub-10 ms predictions on a shared CPU are mostly noise.
NO_SLO_FLOOR_S = 0.01


def calibration_floor_s(config: ServeConfig) -> float:
    """Predictions under a tenth of the SLO are all noise to the calibration."""
    return NO_SLO_FLOOR_S if config.slo_ms is None else 0.1 * config.slo_s


def deadline_for(config: ServeConfig, arrival: float, stated_ms: float | None) -> float:
    """The absolute (monotonic) deadline of a request that reached the app at `arrival`:
    `stated_ms` from the client (X-Deadline-Ms), else the SLO, else math.inf (none)."""
    if stated_ms is not None:
        return arrival + stated_ms / 1e3
    return arrival + config.slo_s  # inf without an SLO


def _deadline(job: Job) -> float:
    return job.deadline


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))
