"""Generation in the serving worker: continuous batching on decode engines, and the text
side of every answer (incremental detokenisation, stop strings, finish reasons).

A variant whose runner offers `decode_engine(slots)` (llama.cpp) decodes all its running
sequences in one step; queued requests join between steps, earliest deadline first,
when the engine has a free slot and KV room for prompt + max_tokens (else they wait in
the queue: a step never runs out of cache). Each sequence stays on the variant it
started on; the ladder only picks the variant of the ones that join. A variant without
an engine (torch) runs one request at a time, to the end, with the KV cache.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backend import StepDecodingRunner
from ..tasks.sampling import Sampling, pick_token, token_logprobs
from .queue import call_on
from .request import Generated, Request
from .speculate import Speculation, record

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .batcher import Batcher
    from .config import ServeConfig
    from .ladder import Variant

SLOTS = 8  # sequences one engine decodes together (the roofline flattens past ~8-16)
# Tokens per engine step (vLLM's max_num_batched_tokens): the running sequences' tokens,
# then joining prompts in the rest. 8 chat prompts arriving together (~40 tokens each)
# are evaluated in one step, not three of 128: the last one's first token comes sooner,
# at the cost of one longer gap for the running streams.
STEP_TOKENS = 512
TPOT_ALPHA = 0.3  # weight of the latest decode step in the engine's step-time EWMA
# Greedy constrained decoding checks the grammar over this many most likely tokens first
# (the argmax of the allowed ones is exact when one of them is allowed): the full
# vocabulary costs tens of ms a token, which every stream in the step would wait for.
GREEDY_CANDIDATES = 64
REDRAWS = 16  # sampled constrained decoding: draws without refused tokens before the mask


class TextStream:
    """Token ids in, text deltas out: incremental detokenisation (only a window of recent
    tokens is decoded; a multi-byte character split across tokens waits for its end)
    and stop strings (text that may begin one is held back; the answer never holds
    one)."""

    def __init__(self, tokenizer: Any, stop: Iterable[str] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self._prefix = self._read = 0  # decode window: tokens[prefix:] vs tokens[prefix:read]
        self._held = ""  # decoded, not yet sent: it might start a stop string
        self.text = ""  # everything sent
        self.stopped = False

    def _decode(self, toks: list[int]) -> str:
        return str(self.tokenizer.decode(toks, skip_special_tokens=True))

    def push(self, tok: int) -> str:
        """The text this token completes (maybe ''); sets `stopped` on a stop string."""
        self.tokens.append(tok)
        before = self._decode(self.tokens[self._prefix:self._read])
        now = self._decode(self.tokens[self._prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return self._emit(self._held + now[len(before):])

    def _emit(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held, text = True, "", text[:cut]
        else:
            keep = max((k for s in self.stop for k in range(1, len(s))
                        if text.endswith(s[:k])), default=0)
            text, self._held = text[:len(text) - keep], text[len(text) - keep:]
        self.text += text
        return text

    def flush(self) -> str:
        """At the end without a stop string: what was held back."""
        out, self._held = self._held, ""
        self.text += out
        return out


@dataclass
class Decoding:
    """One request being generated: its sampler, text and timing."""

    req: Request
    variant: Variant
    text: TextStream
    rng: np.random.Generator
    start: float = field(default_factory=time.monotonic)
    first: float | None = None
    tokens: list[int] = field(default_factory=list)
    sid: int = -1  # the engine's sequence id
    logprobs: list[Any] = field(default_factory=list)  # when asked: one entry per token
    lp_sent: int = 0  # entries streamed so far
    accept_rate: float = 1.0  # EWMA of its drafts' accepted / proposed tokens
    draft_len: int = 0  # its next draft's length (0: not drafted yet; speculate.py)
    drafted_at: int = 0  # len(tokens) when its last draft was checked

    @property
    def sampling(self) -> Sampling:
        return self.req.sampling or Sampling()

    def choose(self, logits: np.ndarray) -> int:
        """The next token from the last-position logits (V,): the sampler's pick, within
        the sequence's constraint when it has one (the full mask runs only when the
        constraint refuses the pick), and its log-probabilities when asked."""
        s = self.sampling
        tok = pick_token(logits, s, self.rng)
        c = self.req.constraint
        if c is not None and not c.allows(tok):
            tok = self._constrained(logits, tok, c)
        if self.req.logprobs is not None:
            self.logprobs.append(token_logprobs(logits, tok, self.req.logprobs))
        return tok

    def _constrained(self, logits: np.ndarray, refused: int, c: Any) -> int:
        """The pick when the constraint refused the sampler's: from the most likely tokens
        (greedy), by drawing again without the refused ones (plain temperature sampling:
        that is drawing from the allowed distribution), else from the whole vocabulary
        masked, which costs tens of ms."""
        s = self.sampling
        if s.greedy:  # the best allowed token is most often near the top
            top = np.argpartition(-logits, GREEDY_CANDIDATES)[:GREEDY_CANDIDATES]
            masked = c.mask(logits, top)
            if np.isfinite(masked).any():
                return int(np.argmax(masked))
        elif s.top_p == 1 and s.top_k == 0:
            z = logits.astype(np.float64) / s.temperature
            p = np.exp(z - z.max())
            for _ in range(REDRAWS):
                p[refused] = 0.0
                total = p.sum()
                if not total > 0:
                    break
                refused = int(self.rng.choice(len(p), p=p / total))
                if c.allows(refused):
                    return refused
        masked = c.mask(logits)
        if not np.isfinite(masked).any():  # a grammar with no way on: a bug, not input
            raise RuntimeError("the output grammar allows no next token")
        return pick_token(masked, s, self.rng)

    def add(self, tok: int, stop_ids: set[int], send: Any) -> str | None:
        """Take one sampled token; the finish reason when the answer is complete."""
        self.tokens.append(tok)
        c = self.req.constraint
        if tok in stop_ids or (c is not None and c.is_end(tok)):
            # end of sequence: what was held back was no stop string
            if self.logprobs:
                self.logprobs.pop()  # the end token is no part of the answer
            self._out(send, self.text.flush())
            return "stop"
        if c is not None:
            c.accept(tok)
        self._out(send, self.text.push(tok))
        if self.text.stopped:
            return "stop"
        if len(self.tokens) >= self.req.job.new_tokens:
            self._out(send, self.text.flush())
            return "length"
        return None

    def _out(self, send: Any, text: str) -> None:
        """Stream `text`; with log-probabilities, as (text, the entries since the last)."""
        if self.req.logprobs is None:
            if text:
                send(text)
            return
        entries = self.logprobs[self.lp_sent:]
        if text or entries:
            self.lp_sent = len(self.logprobs)
            send((text, entries))


def engine_of(v: Variant, slots: int = SLOTS, config: ServeConfig | None = None) -> Any:
    """The variant's decode engine (made once, its KV cache sized by `config`'s
    kv_memory_gb and context: the plan is printed), or None when its runner has none."""
    eng = getattr(v, "engine", None)
    if eng is None:
        runner = v.handle.runner()
        if not isinstance(runner, StepDecodingRunner):
            return None
        kv = {} if config is None else config.engine_options()
        eng = v.engine = runner.decode_engine(slots, STEP_TOKENS, **kv)
        v.gen.slots = eng.slots  # the plan may give fewer than asked
        v.kv_plan = getattr(eng, "kv_plan", None)  # an engine sized by a plan says so
        if v.kv_plan is not None:
            print(f"react serve: {v.name}: {v.kv_plan.describe()}", file=sys.stderr,
                  flush=True)
    return eng


def measure_engine(v: Variant, eng: Any, prompt_ids: list[int], tokens: int = 8,
                   warm: bool = True) -> None:
    """Time one sequence alone on `eng`: its first token (prefill), then per token. The
    first run of a new context allocates its buffers: with `warm`, one run goes first."""
    if warm:
        _run_alone(eng, prompt_ids, 2)
    t0 = time.perf_counter()
    first = _run_alone(eng, prompt_ids, tokens)
    end = time.perf_counter()
    v.gen.observe_alone(first - t0, (end - first) / (tokens - 1) if tokens > 1 else None)


def _run_alone(eng: Any, prompt_ids: list[int], tokens: int) -> float:
    """Greedy `tokens` for one sequence; when the first one came (perf_counter)."""
    sid, first, n = eng.start(prompt_ids, tokens), None, 0
    try:
        while n < tokens:
            logits = eng.step().logits.get(sid)
            if logits is None:
                continue
            n += 1
            first = first or time.perf_counter()
            if n < tokens:
                eng.feed(sid, int(logits.argmax()))
    finally:
        eng.release(sid)
    assert first is not None
    return first


class DecodeLoop:
    """The generation worker of one batcher (runs in its worker thread). It shares the
    batcher's queue and lock (queue.py) and answers through the queue."""

    def __init__(self, batcher: Batcher):
        self.b, self.q = batcher, batcher.queue
        self.running: dict[tuple[int, int], Decoding] = {}  # (id(engine), sid) -> decoding
        self.step_s: dict[int, float] = {}  # id(engine) -> EWMA of its decode-only steps
        self.tpot_s = (batcher.config.tpot_ms or float("inf")) / 1e3
        draft = batcher.draft.runner() if batcher.draft is not None else None
        self.spec = Speculation(batcher.config.speculate, batcher.config.draft_tokens,
                                draft=draft)
        self._next: list[tuple[Any, Decoding]] = []  # (engine, sequence): to feed after a step
        self._last_probe = 0.0
        tok = batcher.ladder.variants[0].handle.tokenizer
        self.tokenizer = tok
        for v in batcher.ladder.variants:  # the KV plans made at warm-up, into /metrics
            plan = v.kv_plan
            if plan is not None:
                labels = {"model": batcher.model, "variant": v.name}
                batcher.metrics.kv_bytes.set(plan.bytes, **labels)
                batcher.metrics.kv_sequences.set(plan.slots, **labels)
                batcher.metrics.kv_context.set(plan.n_ctx_seq, **labels)

    def run(self) -> None:
        b, q = self.b, self.q
        while True:
            with q:
                while True:
                    self._join(time.monotonic())
                    if self.running:
                        break
                    if q.stopping and not q:
                        return
                    if b.admission.stale and not q:
                        self._retime()
                        continue
                    ladder = b.ladder
                    if not q and ladder.active > ladder.top and \
                            time.monotonic() - self._last_probe >= b.config.probe_s:
                        self._probe(ladder.active - 1)
                        continue
                    q.wait(0.5)
            self._drop_cancelled()
            self._step()

    # -- joining (lock held) ---------------------------------------------------------------
    def _join(self, now: float) -> None:
        b, q = self.b, self.q
        while q:
            edf = q.edf()
            level = b.choose(edf, now)
            req, v = edf[0], b.ladder.variants[level]
            eng = engine_of(v, config=b.config)
            if eng is not None and not eng.can_start(len(req.prompt_ids) + req.job.new_tokens):
                return  # it waits for sequences to leave (EDF: nobody overtakes it)
            if eng is not None and eng.running and self.step_s.get(id(eng), 0.0) > self.tpot_s:
                return  # one more would slow the running streams past --tpot-ms: it waits
            if eng is None and self.running:
                return  # an engine-less variant runs alone: let the others finish first
            q.take([req])
            b.metrics.queue_seconds.observe(now - req.arrival, model=b.model)
            b.admission.changed()
            d = Decoding(req, v, TextStream(self.tokenizer, req.stop), req.sampling.rng()
                         if req.sampling else Sampling().rng())
            if req.sink is not None:
                _send(req, v.name)  # the header needs it first
            if eng is None:
                with q.unlocked():  # run it alone, outside the lock
                    self._alone(d)
                continue
            d.sid = eng.start(req.prompt_ids, req.job.new_tokens)
            self.running[(id(eng), d.sid)] = d

    def _retime(self) -> None:
        """Idle, and a request was refused on an estimate alone: measure the engines again
        (a slow spell, or the start-up, may have left the estimate far too high). Called
        with the lock held and nothing running; measures without it (only this thread
        uses the engines)."""
        b = self.b
        b.admission.stale = False
        with self.q.unlocked():
            for v in b.ladder.variants:
                eng = engine_of(v, config=b.config)
                if eng is not None:
                    v.gen = type(v.gen)(alpha=v.gen.alpha, slots=v.gen.slots)  # forget it
                    measure_engine(v, eng, [1, 2, 3, 4], warm=False)
        b.admission.changed()

    def _probe(self, level: int) -> None:
        """Idle and stepped down: time the better variant alone (what the ladder knows of
        it dates from when it served, or from start-up: a slow spell may have passed, or
        begun), then let the ladder re-decide. Lock held; measures without it."""
        b, v = self.b, self.b.ladder.variants[level]
        eng = engine_of(v, config=b.config)
        with self.q.unlocked():
            try:
                if eng is not None:
                    measure_engine(v, eng, [1, 2, 3, 4], tokens=4, warm=False)
            except Exception:  # noqa: BLE001  (a failing probe must not kill the worker)
                log.warning("probe of variant %r of model %r failed", v.name, b.model,
                            exc_info=True)
                b.metrics.probe_errors.inc(model=b.model, variant=v.name)
        self._last_probe = time.monotonic()
        b.choose([], self._last_probe)

    # -- stepping (lock free) ---------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for key, d in list(self.running.items()):
            if d.req.cancelled:
                self._leave(key, d, "cancelled")

    def _step(self) -> None:
        engines = {id(d.variant.engine): d.variant for d in self.running.values()}
        for eid, v in engines.items():
            t0 = time.monotonic()
            started = sum(1 for key, d in self.running.items()
                          if key[0] == eid and d.first is not None)
            try:
                out = v.engine.step()
            except Exception as e:  # noqa: BLE001  (a failed step answers its sequences with 500)
                for key, d in list(self.running.items()):
                    if key[0] == eid:
                        self._leave(key, d, None, exc=e)
                continue
            now = time.monotonic()
            if out.lookups:
                self._prefix_cache(v, out)
            self.b.metrics.compute_seconds.observe(now - t0, model=self.b.model, variant=v.name)
            self.b.metrics.batch_size.observe(len(out.logits), model=self.b.model,
                                              variant=v.name)
            labels = {"model": self.b.model, "variant": v.name}
            for sid, logits in out.logits.items():
                key = (eid, sid)
                d = self.running[key]
                if d.first is None:
                    d.first = now
                    self.b.first_token(d.req, v, now)
                self._take(key, d, logits, out.drafts.get(sid), labels)
            self._feed(v.engine.running)
            end = time.monotonic()
            self.b.metrics.step_overhead.observe(max(0.0, end - t0 - out.decode_s),
                                                 model=self.b.model, variant=v.name)
            # decode only (drafts aside): a token's cost to a stream
            if started and out.tokens - out.drafted == started:
                old = self.step_s.get(eid)
                self.step_s[eid] = end - t0 if old is None else \
                    (1 - TPOT_ALPHA) * old + TPOT_ALPHA * (end - t0)

    def _take(self, key: tuple[int, int], d: Decoding, logits: np.ndarray,
              drafted: tuple[list[int], list[np.ndarray]] | None,
              labels: dict[str, str]) -> None:
        """A sequence's tokens from one step: one pick from its logits, or with a draft,
        a pick from each row in turn (through the same `add`: stop strings and max_tokens
        end it where they would have) up to the first that differs from the draft; the
        rest of the draft leaves its KV. Its last token is fed after the step (`_feed`)."""
        draft, rows = drafted if drafted is not None else ([], [logits])
        reason, emitted, accepted = None, 0, 0
        try:
            for i, row in enumerate(rows):
                tok = d.choose(row)
                reason = d.add(tok, self.b.stop_ids, lambda s, r=d.req: _send(r, s))
                emitted += 1
                if i == len(draft) or tok != draft[i]:
                    break
                accepted += 1
                if reason is not None:
                    break
        except Exception as e:  # noqa: BLE001  (answers this sequence with 500)
            self._leave(key, d, None, exc=e)
            return
        record(self.b.metrics, labels, emitted, len(draft), accepted, self.spec.source)
        if draft:
            self.spec.verified(d, len(draft), accepted)
        if reason is not None:
            self._leave(key, d, reason)
            return
        if draft:
            d.variant.engine.accept(key[1], accepted)
        self._next.append((d.variant.engine, d))

    def _feed(self, decoding: int) -> None:
        """Every sequence that goes on gets its last token fed, with a draft after it when
        one is proposed (all proposed at once: a draft model decodes them together)."""
        nxt, self._next = self._next, []
        try:
            drafts = self.spec.propose_all([d for _, d in nxt], decoding)
        except Exception:  # noqa: BLE001  (a failed draft costs its speed, never the answer)
            source = self.spec.source
            now = self.spec.failed([d for _, d in nxt])
            log.exception("speculative drafts (%s) failed; these tokens decode without "
                          "one, and %s", source, now)
            drafts = [[] for _ in nxt]
        for (eng, d), draft in zip(nxt, drafts, strict=True):
            eng.feed(d.sid, d.tokens[-1], draft)

    def _prefix_cache(self, v: Variant, out: Any = None) -> None:
        """The engine's prefix cache into /metrics: the counts since its last step, and
        what its idle slots keep."""
        m, labels = self.b.metrics, {"model": self.b.model, "variant": v.name}
        if out is not None:
            m.prefix_lookups.inc(out.lookups, **labels)
            m.prefix_hits.inc(out.hits, **labels)
            m.prefix_tokens_saved.inc(out.saved, **labels)
            m.prefix_hit_rate.set(m.prefix_hits.get(**labels) / m.prefix_lookups.get(**labels),
                                  **labels)
        m.prefix_cached_tokens.set(v.engine.cached_tokens, **labels)
        m.prefix_cached_bytes.set(v.engine.cached_tokens * v.engine.kv_bytes_per_token,
                                  **labels)

    def _leave(self, key: tuple[int, int], d: Decoding, reason: str | None,
               exc: BaseException | None = None) -> None:
        d.variant.engine.release(key[1])
        self.spec.release(d)
        self._prefix_cache(d.variant)  # the slot keeps its KV now
        del self.running[key]
        if not d.variant.engine.running:  # idle: its step time is measured afresh
            self.step_s.pop(key[0], None)
        self._done(d, reason, exc)

    def _done(self, d: Decoding, reason: str | None, exc: BaseException | None = None) -> None:
        end, n = time.monotonic(), len(d.tokens)
        if d.first is not None and exc is None:
            tpot = (end - d.first) / (n - 1) if n > 1 else None
            d.variant.gen.observe(d.first - d.start, tpot)
            if tpot is not None:
                m, labels = self.b.metrics, {"model": self.b.model, "variant": d.variant.name}
                m.tpot.observe(tpot, **labels)
                if tpot > self.tpot_s:
                    m.tpot_violations.inc(1, **labels)
        if d.req.sink is not None:
            _send(d.req, None)
        value = Generated(d.tokens, reason or "cancelled", d.variant.name, d.text.text,
                          d.logprobs if d.req.logprobs is not None else None)
        self.q.answer(d.req, value if exc is None else None, exc)

    def _alone(self, d: Decoding) -> None:
        """A variant without an engine: the whole answer, one token at a time."""
        reason = None
        try:
            runner: Any = d.variant.handle.runner()  # a generative runner: it decodes
            steps = runner.decode(list(d.req.prompt_ids))
            try:
                logits = next(steps)
                while True:
                    tok = d.choose(logits)
                    if d.first is None:
                        d.first = time.monotonic()
                        self.b.first_token(d.req, d.variant, d.first)
                    reason = d.add(tok, self.b.stop_ids, lambda s: _send(d.req, s))
                    if reason is not None or d.req.cancelled:
                        break
                    logits = steps.send(tok)
            finally:
                steps.close()
        except Exception as e:  # noqa: BLE001  (a model failure answers the request with 500)
            self._done(d, None, exc=e)
            return
        self._done(d, reason or "length")


def _send(req: Request, item: Any) -> None:
    if req.sink is not None and item != "":
        call_on(req.loop, req.sink.put_nowait, item)
