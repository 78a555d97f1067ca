"""The dynamic batcher of one model: a bounded earliest-deadline-first queue, deadline-
aware admission, and one worker thread that forms batches (up to max_batch items or
max_delay, companions picked by similar length) and runs them on the ladder's active
variant, so the event loop never blocks on a model call.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ServeConfig
from .ladder import Calibration, Job, Ladder, Variant
from .metrics import Metrics


class Rejected(Exception):
    """Not admitted: `status` 429 (overload, with Retry-After) or 503 (draining)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


@dataclass
class Request:
    kind: str  # "encode" | "generate"
    job: Job
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    texts: Sequence[str] = ()
    prompt_ids: Sequence[int] = ()
    sink: asyncio.Queue | None = None  # streamed token ids, then None
    arrival: float = field(default_factory=time.monotonic)
    length: int = 0  # characters, for length bucketing
    predicted: float = 0.0  # seconds to the answer, predicted at admission


@dataclass
class Generated:
    tokens: list[int]
    finish_reason: str
    variant: str


def generate_stream(handle: Any, prompt_ids: Sequence[int], max_new_tokens: int,
                    stop_ids: set[int]) -> Iterator[int]:
    """Greedy decoding one token at a time with the KV cache (torch models), so callers
    can stream each token as it is made. Other backends generate in one call."""
    if handle.model is None or handle.backend != "torch":
        for tok in handle.runner().generate(list(prompt_ids), max_new_tokens):
            yield tok
            if tok in stop_ids:
                return
        return
    import torch

    runner = handle.runner()  # its model is on the runner's device (a GPU copy, or the CPU)
    model, device = getattr(runner, "model", handle.model), getattr(runner, "device", "cpu")
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(prompt_ids)], device=device), use_cache=True)
        for i in range(max_new_tokens):
            tok = int(out.logits[0, -1].argmax())
            yield tok
            if tok in stop_ids or i == max_new_tokens - 1:
                return
            out = model(input_ids=torch.tensor([[tok]], device=device),
                        past_key_values=out.past_key_values, use_cache=True)


class Batcher:
    def __init__(self, model: str, ladder: Ladder, config: ServeConfig, metrics: Metrics,
                 on_answer: Callable[[Request, Variant, float], None] | None = None):
        self.model, self.ladder, self.config, self.metrics = model, ladder, config, metrics
        self.on_answer = on_answer
        self._queue: list[Request] = []
        self._cond = threading.Condition()
        self._busy_until = 0.0
        self._inflight = 0  # accepted, not yet answered
        self._stopping = False
        self._switches_seen = 0
        self._last_probe = 0.0
        self._stale = False  # an idle server refused a request on its estimate alone
        self._memo: dict[Any, Any] = {}  # admission predictions, see _least_finish
        self._last_arrival = 0.0
        self._gap_s = float("inf")  # EWMA of the time between arrivals
        self.draining = False
        self.calibration = Calibration(config.admit_quantile, floor_s=0.1 * config.slo_s)
        # A fast tokenizer keeps padding/truncation state between calls: one user at a time.
        self.tok_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.task = ladder.variants[0].handle.task
        tok = ladder.variants[0].handle.tokenizer
        self.stop_ids = {tok.eos_token_id} if getattr(tok, "eos_token_id", None) is not None \
            else set()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            self._changed()  # the start-up measured the service-time curves
        self._thread = threading.Thread(target=self._loop, name=f"react-batcher-{self.model}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def inflight(self) -> int:
        """Requests accepted and not yet answered."""
        with self._cond:
            return self._inflight

    @property
    def idle(self) -> bool:
        return self.inflight == 0

    def queue_items(self) -> int:
        with self._cond:
            return sum(r.job.items for r in self._queue)

    # -- admission (event loop) ---------------------------------------------------------
    def admit(self, req: Request) -> None:
        """Queue `req` or raise Rejected at once (never after a wait)."""
        now = time.monotonic()
        with self._cond:
            refusal, predicted = self._refusal(req.job, now)
            if refusal is not None:
                raise refusal
            if self._last_arrival:
                gap = now - self._last_arrival
                self._gap_s = gap if self._gap_s == float("inf") else 0.8 * self._gap_s + 0.2 * gap
            self._last_arrival = now
            req.arrival, req.predicted = now, predicted
            self._queue.append(req)
            self._changed()
            self._inflight += 1
            self.metrics.queue_length.set(sum(r.job.items for r in self._queue),
                                          model=self.model)
            self._cond.notify_all()

    def refusal(self, deadline: float, now: float) -> Rejected | None:
        """Would the smallest request (one item, or one new token) with `deadline` be
        refused? If so it is counted as refused and the refusal is returned: the caller
        answers it (shedding before the body is read, see shed.py)."""
        job = Job(deadline, items=1, new_tokens=1 if self.task == "causal-lm" else 0)
        with self._cond:
            return self._refusal(job, now)[0]

    def _refusal(self, job: Job, now: float) -> tuple[Rejected | None, float]:
        """(why `job` is refused or None, its predicted seconds to the answer before
        calibration). Call with the lock held."""
        if self.draining or self._stopping:
            return Rejected(503, "the server is draining; retry on another replica"), 0.0
        busy = max(0.0, self._busy_until - now)
        memo = self._memo
        if len(self._queue) >= self.config.max_queue:
            if "full" not in memo:  # the last queued answer on the cheapest variant
                wait = self.ladder.finish_times(len(self.ladder.variants) - 1,
                                                self._edf_jobs(), 0.0)
                memo["full"] = wait[-1] if wait else 0.0
            self.metrics.rejected.inc(model=self.model, reason="queue_full")
            return Rejected(429, f"the queue is full ({self.config.max_queue} requests)",
                            _retry_after(busy + memo["full"])), 0.0
        factor = self.calibration.factor
        predicted = self._least_finish(job, busy)
        if predicted <= self.config.admit_headroom / factor * (job.deadline - now) \
                or not self.config.deadline_admission:
            return None, predicted
        if not self._queue and busy == 0.0:  # idle, yet predicted too slow: re-time it
            self._stale = True
            self.calibration.reset()
            self._cond.notify_all()
        self.metrics.rejected.inc(model=self.model, reason="deadline")
        left = job.deadline - now
        return Rejected(429, f"the deadline cannot be met: predicted {predicted * factor * 1e3:.0f}"
                        f" ms on the fastest variant, {left * 1e3:.0f} ms left",
                        _retry_after(predicted * factor - left)), predicted

    # Under overload nearly every request is refused, each after a prediction over the
    # whole queue (O(queue x variants)). Between changes of the queue, of the worker's busy
    # time or of the service-time curves (_changed empties the memo) the answer for a
    # request that goes last in EDF order (the usual case: one SLO for all) is the same,
    # up to the busy time.
    def _edf_jobs(self) -> list[Job]:
        if "edf" not in self._memo:
            self._memo["edf"] = sorted((r.job for r in self._queue), key=_deadline)
        return self._memo["edf"]

    def _least_finish(self, job: Job, busy: float) -> float:
        """Predicted seconds to `job`'s answer on its best variant, before calibration."""
        memo, jobs = self._memo, self._edf_jobs()
        if jobs and job.deadline < jobs[-1].deadline:  # it goes ahead of some: no shortcut
            return self.ladder.least_finish(jobs, job, busy)
        key = (job.items, job.new_tokens)
        if key not in memo:  # finish times are the busy time plus what the queue adds
            memo[key] = self.ladder.least_finish(jobs, job, 0.0)
        return busy + memo[key]

    def _changed(self) -> None:
        """The queue, the busy time or a service-time curve changed. Lock held."""
        self._memo = {}

    async def submit(self, req: Request) -> Any:
        self.admit(req)
        out = await req.future
        # judged here, on the event loop, so its own delay counts too
        self.calibration.observe(req.predicted, time.monotonic() - req.arrival)
        return out

    # -- worker thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            picked = self._next()
            if picked is None:
                return
            batch, level = picked
            if not batch:
                self._probe(level)
                continue
            try:
                if batch[0].kind == "generate":
                    self._generate(batch[0], level)
                else:
                    self._embed(batch, level)
            except Exception as e:  # a model failure answers its requests with 500
                for r in batch:
                    if r.sink is not None:
                        _call(r.loop, r.sink.put_nowait, None)
                    self._finish(r, exc=e)
            with self._cond:
                self._changed()  # the batch taught the service-time curves

    def _next(self) -> tuple[list[Request], int] | None:
        """Wait for work; return (batch, level), ([], level) for an idle probe, or None
        when stopping with nothing left."""
        cfg = self.config
        with self._cond:
            while True:
                now = time.monotonic()
                if self._queue:
                    oldest = min(r.arrival for r in self._queue)
                    items = sum(r.job.items for r in self._queue)
                    edf = sorted(self._queue, key=lambda r: r.job.deadline)
                    # Wait for companions only when one is likely to come within the delay:
                    # at low load waiting adds latency and forms no batch.
                    expected = cfg.max_delay_s / self._gap_s if self._gap_s > 0 else 1.0
                    ready_at = oldest + (cfg.max_delay_s if expected >= 0.5 else 0.0)
                    if (edf[0].kind == "generate" or items >= cfg.max_batch or now >= ready_at
                            or self._stopping or self.draining):
                        level = self.ladder.update([r.job for r in edf], now,
                                                   factor=self.calibration.factor)
                        self._report_variant(level)
                        batch = self._pick(edf)
                        for r in batch:
                            self._queue.remove(r)
                        self.metrics.queue_length.set(
                            sum(r.job.items for r in self._queue), model=self.model)
                        v = self.ladder.variants[level]
                        n = sum(r.job.items for r in batch)
                        cost = v.gen.predict(batch[0].job.new_tokens) \
                            if batch[0].kind == "generate" else v.service.predict(n)
                        self._busy_until = now + cost
                        self._changed()
                        return batch, level
                    self._cond.wait(ready_at - now)
                    continue
                if self._stopping:
                    return None
                if (self.ladder.active > 0 or self._stale) and not self.draining:
                    due = self._last_probe + cfg.probe_s
                    if now >= due:  # free, and the better variant's estimate may be stale
                        self._last_probe, self._stale = now, False
                        return [], max(self.ladder.active - 1, 0) if self.ladder.active \
                            else len(self.ladder.variants) - 1
                    self._cond.wait(due - now)
                else:
                    self._cond.wait()

    def _pick(self, edf: list[Request]) -> list[Request]:
        """The earliest-deadline request, plus companions of similar length from the next
        few deadlines (length bucketing: less padding per batch)."""
        head = edf[0]
        if head.kind == "generate":
            return [head]
        cap = self.config.max_batch
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
            if self.task == "causal-lm":
                measure_generation(v, [1, 2, 3])
            else:
                self._run_encoder(v, ["probe"], record=True)
        except Exception:  # noqa: BLE001  (a failing probe must not kill the worker)
            pass
        with self._cond:
            self._changed()
            self.ladder.update([r.job for r in self._queue], time.monotonic(),
                               factor=self.calibration.factor)
            self._report_variant(self.ladder.active)

    def _run_encoder(self, v: Variant, texts: Sequence[str], record: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Outputs (N, ...) in input order and each text's token count (N,)."""
        from ..tasks import tokenize

        h = v.handle
        runner = h.runner()
        cap = self.config.max_batch
        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]
        out: np.ndarray | None = None
        counts = np.zeros(len(texts), dtype=np.int64)
        for s in range(0, len(order), cap):
            idx = order[s:s + cap]
            t0 = time.perf_counter()
            with self.tok_lock:
                batch = tokenize(h.tokenizer, [texts[i] for i in idx], h.max_length)
            y = runner(batch)
            dt = time.perf_counter() - t0
            counts[idx] = batch["attention_mask"].sum(1)
            if record:
                v.service.observe(len(idx), dt)
                self.metrics.batch_size.observe(len(idx), model=self.model, variant=v.name)
                self.metrics.compute_seconds.observe(dt, model=self.model, variant=v.name)
            if out is None:
                out = np.empty((len(texts),) + y.shape[1:], dtype=np.float32)
            out[idx] = y
        assert out is not None
        return out, counts

    def _embed(self, batch: list[Request], level: int) -> None:
        v = self.ladder.variants[level]
        start = time.monotonic()
        for r in batch:
            self.metrics.queue_seconds.observe(start - r.arrival, model=self.model)
        texts = [t for r in batch for t in r.texts]
        y, counts = self._run_encoder(v, texts, record=True)  # (N, D), (N,)
        i = 0
        for r in batch:
            n = len(r.texts)
            self._finish(r, value=(y[i:i + n], counts[i:i + n], v.name), variant=v)
            i += len(r.texts)

    def _generate(self, req: Request, level: int) -> None:
        v = self.ladder.variants[level]
        start = time.monotonic()
        self.metrics.queue_seconds.observe(start - req.arrival, model=self.model)
        tokens: list[int] = []
        first = None
        if req.sink is not None:
            _call(req.loop, req.sink.put_nowait, v.name)  # the header needs it first
        for tok in generate_stream(v.handle, req.prompt_ids, req.job.new_tokens, self.stop_ids):
            if first is None:
                first = time.monotonic()
                self._first_token(req, v, first)
            tokens.append(tok)
            if req.sink is not None:
                _call(req.loop, req.sink.put_nowait, tok)
        end = time.monotonic()
        prefill = (first or end) - start
        per_tok = (end - first) / (len(tokens) - 1) if first and len(tokens) > 1 else None
        v.gen.observe(prefill, per_tok)
        self.metrics.compute_seconds.observe(end - start, model=self.model, variant=v.name)
        self.metrics.batch_size.observe(1, model=self.model, variant=v.name)
        reason = "stop" if tokens and tokens[-1] in self.stop_ids else "length"
        if req.sink is not None:
            _call(req.loop, req.sink.put_nowait, None)
        self._finish(req, value=Generated(tokens, reason, v.name), variant=None)

    def _first_token(self, req: Request, v: Variant, t: float) -> None:
        """Completions are judged on time to first token."""
        self.calibration.observe(req.predicted, t - req.arrival)
        if self.on_answer is not None:
            self.on_answer(req, v, t)

    def _finish(self, req: Request, value: Any = None, exc: BaseException | None = None,
                variant: Variant | None = None) -> None:
        if variant is not None and self.on_answer is not None:
            self.on_answer(req, variant, time.monotonic())

        def settle() -> None:
            if req.future.done():
                return
            if exc is not None:
                req.future.set_exception(exc)
            else:
                req.future.set_result(value)

        _call(req.loop, settle)
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()


def _call(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: the client is gone
        pass


def _deadline(job: Job) -> float:
    return job.deadline


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


# -- start-up measurement -------------------------------------------------------------
def batch_sizes(max_batch: int) -> list[int]:
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return sizes + [max_batch]


def measure_encoder(v: Variant, texts: Sequence[str], max_batch: int, repeats: int = 2) -> None:
    """Time a call per batch size (after one warm-up call) and set the curve. The fastest
    of the repeats counts: a first call at a new shape may compile (torch.compile) or fill
    caches, a one-off that must not make the server shed everything afterwards."""
    from ..tasks import tokenize

    h = v.handle
    runner = h.runner()
    runner(tokenize(h.tokenizer, list(texts[:1]), h.max_length))
    for n in batch_sizes(max_batch):
        batch = tokenize(h.tokenizer, [texts[i % len(texts)] for i in range(n)], h.max_length)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner(batch)
            times.append(time.perf_counter() - t0)
        v.service.set(n, float(np.min(times)))


def measure_generation(v: Variant, prompt_ids: Sequence[int], tokens: int = 8) -> None:
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in generate_stream(v.handle, prompt_ids, tokens, set()):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    v.gen.observe(first - t0, (end - first) / (n - 1) if n > 1 else None)
