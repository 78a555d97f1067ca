"""The dynamic batcher of one model: a bounded earliest-deadline-first queue in front of
one worker thread that forms batches (up to max_batch items or max_delay, companions
picked by similar length) and runs them on the ladder's active variant, so the event
loop never blocks on a model call. For a causal LM the worker runs decode.py's loop
instead: continuous batching of generations. Whether a request may join the queue is admission's
call (admission.py); how a variant is run is execute.py's; the queue and its lock are
queue.py's.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..tasks import get_task
from .admission import Admission
from .config import ServeConfig
from .decode import DecodeLoop
from .execute import run_encoder, run_pixels
from .ladder import Calibration, Job, Ladder, Variant
from .metrics import Metrics
from .queue import RequestQueue, call_on
from .request import Generated, Rejected, Request
from .warmup import measure_generation, probe_pixels

# Under load a batch gathers up to GATHER x max_batch queued items when the earliest
# deadline allows it; the runner still calls the model with at most max_batch at a time,
# sorted by token count across the whole gathering (execute.run_encoder), so each call
# pads less than a batch of whatever arrived together (benchmarks/serve_engine.py).
GATHER = 4
log = logging.getLogger(__name__)

__all__ = ["Batcher", "Generated", "Rejected", "Request"]


class Batcher:
    def __init__(self, model: str, ladder: Ladder, config: ServeConfig, metrics: Metrics,
                 on_answer: Callable[[Request, Variant, float], None] | None = None):
        self.model, self.ladder, self.config, self.metrics = model, ladder, config, metrics
        self.on_answer = on_answer
        self.draft: Any = None  # a generative model's draft model (ServeConfig.draft), if any
        self.queue = RequestQueue(model, metrics)  # its lock also guards the state below
        self._busy_until = 0.0
        self._switches_seen = 0
        self._last_probe = 0.0
        self._last_arrival = 0.0
        self._gap_s = float("inf")  # EWMA of the time between arrivals
        self._overlap = 0.0  # EWMA of whether an arrival found another request in flight
        self.draining = False
        self.admission = Admission(model, ladder, config, metrics, self.queue.items,
                                   wake=self.queue.wake)
        # A fast tokenizer keeps padding/truncation state between calls: one user at a time.
        self.tok_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.task = ladder.variants[0].handle.task
        tok = ladder.variants[0].handle.tokenizer
        self.stop_ids = {tok.eos_token_id} if getattr(tok, "eos_token_id", None) is not None \
            else set()  # end of sequence: the answer is complete

    @property
    def calibration(self) -> Calibration:
        return self.admission.calibration

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        with self.queue:
            self.admission.changed()  # the start-up measured the service-time curves
        self._thread = threading.Thread(target=self._loop, name=f"react-batcher-{self.model}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.queue.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def inflight(self) -> int:
        """Requests accepted and not yet answered."""
        with self.queue:
            return self.queue.inflight

    @property
    def idle(self) -> bool:
        return self.inflight == 0

    def queue_items(self) -> int:
        with self.queue:
            return self.queue.waiting_items()

    # -- admission (event loop) ---------------------------------------------------------
    def admit(self, req: Request) -> None:
        """Queue `req` or raise Rejected at once (never after a wait)."""
        now = time.monotonic()
        with self.queue:
            refusal, predicted = self._refusal(req.job, now)
            if refusal is not None:
                raise refusal
            self._arrived(now)
            req.arrival, req.predicted = now, predicted
            self.queue.push(req)
            self.admission.changed()

    def refusal(self, deadline: float, now: float) -> Rejected | None:
        """Would the smallest request (one item, or one new token) with `deadline` be
        refused? If so it is counted as refused and the refusal is returned: the caller
        answers it (shedding before the body is read, see shed.py)."""
        job = Job(deadline, items=1, new_tokens=1 if get_task(self.task).generates else 0)
        with self.queue:
            return self._refusal(job, now)[0]

    def _refusal(self, job: Job, now: float) -> tuple[Rejected | None, float]:
        """(why `job` is refused or None, its predicted seconds to the answer before
        calibration). Call with the lock held."""
        if self.draining or self.queue.stopping:
            return Rejected(503, "the server is draining; retry on another replica"), 0.0
        return self.admission.judge(job, max(0.0, self._busy_until - now), now)

    def _least_finish(self, job: Job, busy: float) -> float:
        """Predicted seconds to `job`'s answer on its best variant, before calibration."""
        return self.admission.least_finish(job, busy)

    def _arrived(self, now: float) -> None:
        """Track the time between arrivals, and whether they overlap: the worker waits
        for companions only when one is likely to come. Lock held, before the request
        counts as in flight."""
        if self._last_arrival:
            gap = now - self._last_arrival
            self._gap_s = gap if self._gap_s == float("inf") else 0.8 * self._gap_s + 0.2 * gap
        self._last_arrival = now
        self._overlap = 0.8 * self._overlap + 0.2 * (self.queue.inflight > 0)

    async def submit(self, req: Request) -> Any:
        self.admit(req)
        out = await req.future
        # judged here, on the event loop, so its own delay counts too
        self.calibration.observe(req.predicted, time.monotonic() - req.arrival)
        return out

    # -- worker thread ------------------------------------------------------------------
    def _loop(self) -> None:
        if get_task(self.task).generates:  # generations: continuous batching (decode.py)
            DecodeLoop(self).run()
            return
        while True:
            picked = self._next()
            if picked is None:
                return
            batch, level = picked
            if not batch:
                self._probe(level)
                continue
            try:
                self._embed(batch, level)
            except Exception as e:  # noqa: BLE001  (a model failure answers its requests with 500)
                for r in batch:
                    if r.sink is not None:
                        call_on(r.loop, r.sink.put_nowait, None)
                    self._finish(r, exc=e)
            with self.queue:
                self.admission.changed()  # the batch taught the service-time curves

    def _next(self) -> tuple[list[Request], int] | None:
        """Wait for work; return (batch, level), ([], level) for an idle probe, or None
        when stopping with nothing left."""
        q = self.queue
        with q:
            while True:
                now = time.monotonic()
                if q:
                    edf = q.edf()
                    ready_at = self._ready_at()
                    if (edf[0].kind == "generate" or now >= ready_at or q.stopping
                            or self.draining or q.waiting_items() >= self.config.max_batch):
                        return self._take(edf, now)
                    q.wait(ready_at - now)
                elif q.stopping:
                    return None
                elif (self.ladder.active > 0 or self.admission.stale) and not self.draining:
                    due = self._last_probe + self.config.probe_s
                    if now >= due:  # free, and the better variant's estimate may be stale
                        self._last_probe, self.admission.stale = now, False
                        return [], max(self.ladder.active - 1, 0) if self.ladder.active \
                            else len(self.ladder.variants) - 1
                    q.wait(due - now)
                else:
                    q.wait()

    def _ready_at(self) -> float:
        """When the oldest request stops waiting for companions. Wait only when one is
        likely to come within the delay: at low load waiting adds latency and forms no
        batch. Nor when requests come one after another's answer (a client calling in a
        loop): however short the gap, nothing would join, and the wait itself would
        stretch every round trip (to about twice the delay). Lock held, queue not empty."""
        delay = self.config.max_delay_s
        expected = delay / self._gap_s if self._gap_s > 0 else 1.0
        wait = expected >= 0.5 and self._overlap >= 0.5
        return min(r.arrival for r in self.queue.items) + (delay if wait else 0.0)

    def _take(self, edf: list[Request], now: float) -> tuple[list[Request], int]:
        """Choose the level, take the next batch off the queue and predict how long the
        worker will be busy with it. Lock held."""
        level = self.choose(edf, now)
        v = self.ladder.variants[level]
        big = GATHER * self.config.max_batch  # the earliest deadline can afford it
        cap = big if now + v.service.predict(big) <= edf[0].job.deadline \
            else self.config.max_batch
        batch = self._pick(edf, cap)
        self.queue.take(batch)
        n = sum(r.job.items for r in batch)
        cost = v.gen.predict(batch[0].job.new_tokens) \
            if batch[0].kind == "generate" else v.service.predict(n)
        self._busy_until = now + cost
        self.admission.changed()
        return batch, level

    def _pick(self, edf: list[Request], cap: int) -> list[Request]:
        """The earliest-deadline request, plus companions of similar length from the next
        few deadlines (length bucketing: less padding per batch), up to `cap` items."""
        head = edf[0]
        if head.kind == "generate":
            return [head]
        window, seen = [], 0
        for r in edf[1:]:
            if r.kind != "encode" or seen >= 2 * cap:
                continue
            window.append(r)
            seen += r.job.items
        batch, filled = [head], head.job.items
        for r in sorted(window, key=lambda r: abs(r.length - head.length)):
            if filled + r.job.items <= cap:
                batch.append(r)
                filled += r.job.items
        return batch

    def choose(self, edf: list[Request], now: float) -> int:
        """The ladder's level for the queue `edf` (EDF order) at `now`, reported in the
        metrics. Lock held."""
        level = self.ladder.update([r.job for r in edf], now, factor=self.calibration.factor)
        self._report_variant(level)
        return level

    def _report_variant(self, level: int) -> None:
        for i, v in enumerate(self.ladder.variants):
            self.metrics.active_variant.set(1.0 if i == level else 0.0, model=self.model,
                                            variant=v.name)
        for _, a, b in self.ladder.switches[self._switches_seen:]:
            self.metrics.switches.inc(model=self.model, direction="down" if b > a else "up")
        self._switches_seen = len(self.ladder.switches)

    def _probe(self, level: int) -> None:
        """Idle and stepped down: time one small call on the better variant, so a stale
        estimate (e.g. from a slow spell) can recover, then let the ladder re-decide."""
        v = self.ladder.variants[level]
        try:
            if get_task(self.task).generates:
                measure_generation(v, [1, 2, 3])
            elif get_task(self.task).takes_images:
                self._run_pixels(v, probe_pixels(v.handle.tokenizer))
            else:
                self._run_encoder(v, ["probe"])
        except Exception:  # noqa: BLE001  (a failing probe must not kill the worker)
            # ...nor pass unseen: the ladder may stay stepped down because of it
            log.warning("probe of variant %r of model %r failed", v.name, self.model,
                        exc_info=True)
            self.metrics.probe_errors.inc(model=self.model, variant=v.name)
        with self.queue:
            self.admission.changed()
            self.ladder.update([r.job for r in self.queue.items], time.monotonic(),
                               factor=self.calibration.factor)
            self._report_variant(self.ladder.active)

    def _observer(self, v: Variant) -> Callable[[int, float], None]:
        """Every model call teaches the variant's service-time curve and is recorded in
        the metrics."""
        def observe(n: int, seconds: float) -> None:
            v.service.observe(n, seconds)
            self.metrics.batch_size.observe(n, model=self.model, variant=v.name)
            self.metrics.compute_seconds.observe(seconds, model=self.model, variant=v.name)

        return observe

    def _run_encoder(self, v: Variant, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Outputs (N, ...) in input order and each text's token count (N,)."""
        return run_encoder(v.handle, texts, self.config.max_batch, self.tok_lock,
                           self._observer(v))

    def _run_pixels(self, v: Variant, pixels: np.ndarray) -> np.ndarray:
        """Outputs (N, ...) of preprocessed images (N, C, H, W)."""
        return run_pixels(v.handle, pixels, self.config.max_batch, self._observer(v))

    def _embed(self, batch: list[Request], level: int) -> None:
        v = self.ladder.variants[level]
        start = time.monotonic()
        for r in batch:
            self.metrics.queue_seconds.observe(start - r.arrival, model=self.model)
        if get_task(self.task).takes_images:  # one input per image, no tokens
            y = self._run_pixels(v, np.concatenate([r.pixels for r in batch]))  # (N, C)
            counts = np.zeros(len(y), dtype=np.int64)
        else:
            y, counts = self._run_encoder(v, [t for r in batch for t in r.texts])  # (N, D), (N,)
        i = 0
        for r in batch:
            n = r.job.items
            self._finish(r, value=(y[i:i + n], counts[i:i + n], v.name), variant=v)
            i += n

    def first_token(self, req: Request, v: Variant, t: float) -> None:
        """Completions are judged on time to first token."""
        self.calibration.observe(req.predicted, t - req.arrival)
        if self.on_answer is not None:
            self.on_answer(req, v, t)

    def _finish(self, req: Request, value: Any = None, exc: BaseException | None = None,
                variant: Variant | None = None) -> None:
        if variant is not None and self.on_answer is not None:
            self.on_answer(req, variant, time.monotonic())
        self.queue.answer(req, value, exc)
