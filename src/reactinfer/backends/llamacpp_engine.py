"""A decode engine on one llama.cpp context: continuous batching for the server.

Sequences occupy slots (llama.cpp sequence ids) of one context, each with its own KV
stream of `n_ctx_seq` cells (not the unified cache: with one cache shared by all
sequences, the logits of a sequence decoded beside others differed from its logits
alone by up to 0.85 on smollm2's Q4_1 GGUF, enough to change greedy answers; with a
stream per sequence they are bit-identical, tested).
Each `step()` is one `llama_decode` of at most `step_tokens` tokens (vLLM's
`max_num_batched_tokens`): one token for every decoding sequence first, then the prompt
tokens of joining sequences, oldest first, in the rest of the budget (chunked prefill).
A burst of new prompts is evaluated in few, large steps (large batches evaluate a token
for less: the time to the last one's first token falls), and a long prompt still stalls
the running sequences for one bounded step at a time.
With a stream per sequence, llama.cpp splits a step into one pass over the weights per run
of consecutive sequence ids (`split_equal`, sequential): a step lays its tokens out in
slot order, and a new sequence takes the lowest empty slot, so 8 decoding sequences are
one pass, not up to 8.
A sequence reserves KV cells for its prompt plus its new tokens when it starts; `start`
refuses when they are not free, so a step never runs out of cache. `release` frees its
slot.

Prefix cache (llama.cpp server's `cache_prompt`, vLLM's automatic prefix caching): a
released slot keeps its KV and the tokens it holds. A new sequence takes the slot
whose tokens share the longest prefix with its prompt, drops only the tail
(`llama_memory_seq_rm`) and evaluates the rest; when that prefix lives in a running
sequence's stream, the stream is copied (`llama_memory_seq_cp` across streams copies a
whole stream, at the next decode), and a prompt whose prefix is still being evaluated
by an earlier sequence waits for it when that saves at least WAIT_MIN_TOKENS tokens
(8 chats arriving together with one system prompt evaluate it once). Idle slots keep at
most `cache_tokens` tokens in all (least recently used go first; the KV streams are
allocated up front, so this bounds what is kept, not what is allocated). Per-sequence
streams make a reused prefix give the very logits it would give evaluated afresh
(tested).

Speculative decoding: `feed` may add proposed tokens (a draft) after the sampled one;
the step evaluates them all in the same decode with logits at every position (what the
target model says after each), and the caller keeps the longest right prefix with
`accept`, which drops the rest from the KV stream (`llama_memory_seq_rm`). A draft
model's own engine follows its target with `resume` (rewind to what both hold, then
evaluate what the target accepted since).
"""
from __future__ import annotations

import ctypes
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A prompt waits a step for an earlier one to evaluate a shared prefix only when that saves
# at least this many tokens over the best prefix at hand now. Waiting costs it one step (a
# decode step of the running streams, 10-60 ms on a CPU) and a copy of the stream (~20 ms
# for 2,048 cells of a small model); evaluating a prompt token costs 1.5-5 ms (smollm2:
# 1.7 ms from q4_0, 4.3 from Q4_1, 2 cores), so 16 tokens pay for the wait. 8 chats whose
# questions share their first word do not wait for each other; 8 that share a system
# prompt of 30 tokens (smollm2's own) evaluate it once, not 8 times.
WAIT_MIN_TOKENS = 16
# llama.cpp's flash attention, by name: "auto" is llama.cpp's own default (on for CPUs);
# llama-cpp-python's `Llama` turns it off, and greedy text can part where tokens nearly tie
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


@dataclass
class _Seq:
    slot: int
    pending: list[int]  # tokens to evaluate: the prompt's rest, or the last sampled token
    reserve: int  # KV cells it may fill (prompt + new tokens), within its stream
    pos: int = 0  # next position
    done: list[int] = field(default_factory=list)  # the tokens in its KV stream, in order
    wait: _Seq | None = None  # an earlier sequence still evaluating this one's prefix
    need: int = 0  # while waiting: how many of its prompt's tokens `wait` will hold
    draft: int = 0  # of `pending`, how many are proposed tokens after the sampled one


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int | None = None) -> int:
    """The length of the common prefix of token sequences a and b, at most `limit`."""
    n = min(len(a), len(b), len(a) if limit is None else limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class EngineStep:
    """What one step made: the last-position logits (V,) of every sequence that is
    ready to sample, by sequence id (views of llama.cpp's buffer, valid until the next
    step: no copies), how many tokens the step evaluated, and the seconds spent in
    `llama_decode` itself (the rest of a step is Python). Prefix cache, since the last
    step: prompts looked up, prompts that reused a cached prefix, prompt tokens reused.
    A sequence fed a draft of k tokens also has `drafts[sid]` = (the draft evaluated,
    k + 1 logits rows: after its sampled token, then after each draft token);
    `drafted` counts the draft tokens of the step."""

    logits: dict[int, np.ndarray] = field(default_factory=dict)
    drafts: dict[int, tuple[list[int], list[np.ndarray]]] = field(default_factory=dict)
    tokens: int = 0
    drafted: int = 0
    decode_s: float = 0.0
    lookups: int = 0
    hits: int = 0
    saved: int = 0


class DecodeEngine:
    """Slots on one llama.cpp context sharing the model's mmap'ed weights."""

    def __init__(self, model: Any, n_vocab: int, threads: int, n_ctx_seq: int, slots: int,
                 step_tokens: int = 512, cache_tokens: int | None = None,
                 flash_attn: str = "auto"):
        import llama_cpp

        self._lib, self._model = llama_cpp, model  # the model must outlive the context
        if step_tokens <= slots:
            raise ValueError(f"step_tokens ({step_tokens}) must exceed slots ({slots})")
        if flash_attn not in FLASH_ATTN:
            raise ValueError(f"flash_attn must be one of {', '.join(FLASH_ATTN)}, not "
                             f"{flash_attn!r}")
        self.flash_attn = flash_attn
        self.n_vocab, self.slots, self.step_tokens = n_vocab, slots, step_tokens
        self.n_ctx = n_ctx_seq  # the most tokens (prompt + answer) of one sequence
        self.n_batch = step_tokens
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_seq_max, p.kv_unified = n_ctx_seq * slots, slots, False
        p.n_batch = p.n_ubatch = self.n_batch  # one step is one ubatch
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = FLASH_ATTN[flash_attn]
        self._ctx = llama_cpp.llama_init_from_model(model.model, p)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {n_ctx_seq} tokens "
                               f"for each of {slots} sequences")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._seqs: dict[int, _Seq] = {}
        # free slots -> the tokens their KV streams still hold, least recently used first
        self._idle: OrderedDict[int, list[int]] = OrderedDict((i, []) for i in range(slots))
        self.cache_tokens = n_ctx_seq * slots if cache_tokens is None else cache_tokens
        if self.cache_tokens < 0:
            raise ValueError(f"cache_tokens must be >= 0, not {cache_tokens}")
        # f16 K and V (llama.cpp's default cache type) of every layer, for one token
        n_head = max(1, llama_cpp.llama_model_n_head(model.model))
        self.kv_bytes_per_token = (4 * llama_cpp.llama_model_n_layer(model.model)
                                   * llama_cpp.llama_model_n_embd(model.model)
                                   * llama_cpp.llama_model_n_head_kv(model.model) // n_head)
        self.kv_plan: Any = None  # the runner's KVPlan (kv_plan.py) that sized this engine
        self._stats = [0, 0, 0]  # lookups, hits, tokens saved: since the last step
        self.reserved = 0

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None and getattr(self, "_ctx", None):
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            self._ctx = None

    # -- sequences ---------------------------------------------------------------------
    def can_start(self, reserve: int) -> bool:
        """A slot is free, and its KV stream holds `reserve` tokens."""
        return bool(self._idle) and reserve <= self.n_ctx

    @property
    def running(self) -> int:
        return len(self._seqs)

    @property
    def cached_tokens(self) -> int:
        """Tokens whose KV idle slots keep for later prompts."""
        return sum(len(t) for t in self._idle.values())

    def start(self, prompt_ids: Sequence[int], max_new_tokens: int) -> int:
        """A new sequence; its id. Its prompt is evaluated by the next steps, less the
        longest prefix some slot's KV stream already holds."""
        reserve = len(prompt_ids) + max_new_tokens
        if not prompt_ids or not self.can_start(reserve):
            raise ValueError(f"no slot or KV room for {reserve} tokens (call can_start)")
        prompt = list(prompt_ids)
        limit = len(prompt) - 1 if self.cache_tokens else 0  # the last token makes logits
        best, n = -1, 0  # an idle slot first: reused in place, no copy
        for slot, toks in self._idle.items():
            if (m := common_prefix(toks, prompt, limit)) > n:
                best, n = slot, m
        src, later, n_later = None, None, n
        for other in self._seqs.values():  # a running one's prompt, evaluated or to be
            ready = other.done if other.wait is None else []
            if (m := common_prefix(ready, prompt, limit)) > n:
                src, n = other, m
            if (m := common_prefix(other.done + other.pending, prompt, limit)) > n_later:
                later, n_later = other, m
        if later is not None and n_later - n >= WAIT_MIN_TOKENS:
            src, n = later, n_later  # worth a step's wait: it evaluates them for both
        if src is None and best >= 0:
            sid = best
            del self._idle[sid]
        else:  # the lowest empty slot (runs of consecutive ids: see step), else the LRU one
            sid = min((i for i, t in self._idle.items() if not t),
                      default=next(iter(self._idle)))
            del self._idle[sid]
            self._lib.llama_memory_seq_rm(self._mem, sid, -1, -1)
        seq = self._seqs[sid] = _Seq(sid, prompt, reserve)
        self.reserved += reserve
        if src is None:
            self._reuse(seq, prompt[:n], copy_from=None)
        else:
            seq.wait, seq.need = src, n
            self._resolve(seq)
        return sid

    def _reuse(self, seq: _Seq, prefix: list[int], copy_from: int | None) -> None:
        """Start `seq` after `prefix`, whose KV is in its stream (or in `copy_from`'s)."""
        n = len(prefix)
        if n and copy_from is not None:
            self._lib.llama_memory_seq_cp(self._mem, copy_from, seq.slot, -1, -1)
        self._lib.llama_memory_seq_rm(self._mem, seq.slot, n, -1)
        seq.done, seq.pos, seq.wait = prefix, n, None
        del seq.pending[:n]
        self._stats[0] += 1
        self._stats[1] += n > 0
        self._stats[2] += n

    def _resolve(self, seq: _Seq) -> bool:
        """A waiting sequence takes its prefix once the earlier one has evaluated it (or
        left: then from its idle slot if still there); False while it still waits."""
        src = seq.wait
        assert src is not None
        alive = self._seqs.get(src.slot) is src
        need = min(seq.need, common_prefix(src.done + src.pending, seq.pending,
                                           len(seq.pending) - 1))
        if alive and (src.wait is not None or len(src.done) < need):
            return False
        toks = src.done if alive else self._idle.get(src.slot, [])
        n = common_prefix(toks, seq.pending, len(seq.pending) - 1)
        self._reuse(seq, seq.pending[:n], copy_from=src.slot)
        return True

    def feed(self, sid: int, token: int, draft: Sequence[int] = ()) -> None:
        """The token sampled for `sid`: the next step evaluates it, and the proposed
        tokens of `draft` after it (as many as its reservation still holds)."""
        seq = self._seqs[sid]
        assert not seq.pending and seq.pos < seq.reserve, "fed twice or past its reservation"
        extra = [int(t) for t in draft[:max(0, seq.reserve - seq.pos - 1)]]
        seq.pending += [int(token)] + extra
        seq.draft = len(extra)

    def accept(self, sid: int, n: int) -> None:
        """Of the draft the last step evaluated for `sid`, the first `n` tokens were right:
        the rest leave its KV stream (the next step writes over their positions)."""
        seq = self._seqs[sid]
        drop, seq.draft = seq.draft - n, 0
        assert 0 <= drop and not seq.pending, "accept once, after the step, before feed"
        if drop:
            seq.pos -= drop
            del seq.done[-drop:]
            self._lib.llama_memory_seq_rm(self._mem, seq.slot, seq.pos, -1)

    def resume(self, sid: int, keep: int, tokens: Sequence[int]) -> None:
        """Rewind `sid` to the first `keep` tokens of its KV stream (the rest leave it),
        then the next steps evaluate `tokens` after them, with logits after the last: a
        draft model's sequence catching up with what its target accepted."""
        seq = self._seqs[sid]
        assert seq.wait is None and not seq.pending and tokens, "resume after a step"
        assert 0 <= keep <= len(seq.done) and keep + len(tokens) <= seq.reserve
        if keep < len(seq.done):
            del seq.done[keep:]
            self._lib.llama_memory_seq_rm(self._mem, seq.slot, keep, -1)
        seq.pos, seq.draft, seq.pending = keep, 0, [int(t) for t in tokens]

    def release(self, sid: int) -> None:
        """The sequence leaves: its slot is free for the next step, and keeps its KV for
        later prompts within `cache_tokens` (the least recently used go first)."""
        seq = self._seqs.pop(sid, None)
        if seq is None:
            return
        self.reserved -= seq.reserve
        self._idle[sid] = seq.done if seq.wait is None else []
        total = self.cached_tokens
        for slot, toks in list(self._idle.items()):
            if total <= self.cache_tokens:
                break
            if toks:
                self._lib.llama_memory_seq_rm(self._mem, slot, -1, -1)
                self._idle[slot], total = [], total - len(toks)

    # -- one step ------------------------------------------------------------------------
    def step(self) -> EngineStep:
        """One llama_decode: a token for each decoding sequence, then prompt chunks (in
        order of joining) up to `step_tokens` in all. Logits come back for every sequence
        whose pending tokens were all evaluated."""
        b, n, out = self._batch, 0, EngineStep()
        wants: list[tuple[int, int]] = []  # (sequence, batch index of its last token)
        ready = [s for s in self._seqs.values() if s.wait is None or self._resolve(s)]
        out.lookups, out.hits, out.saved = self._stats
        self._stats = [0, 0, 0]
        decoding = [s for s in ready if len(s.pending) == 1 + s.draft]
        joining = [s for s in ready if len(s.pending) > 1 + s.draft]
        over = sum(len(s.pending) for s in decoding) - self.step_tokens + 1
        for seq in decoding:  # drafts give way to one token per sequence and a prompt's
            cut = min(seq.draft, max(0, over))
            if cut:
                del seq.pending[-cut:]
                seq.draft, over = seq.draft - cut, over - cut
        budget = self.step_tokens - sum(len(s.pending) for s in decoding)  # > 0
        takes: list[tuple[_Seq, int]] = []  # (sequence, its tokens in this step)
        for seq, prefill in [(s, False) for s in decoding] + [(s, True) for s in joining]:
            take = min(len(seq.pending), budget) if prefill else len(seq.pending)
            if take > 0:
                takes.append((seq, take))
                budget -= take if prefill else 0
        # in slot order: llama.cpp runs a step on per-sequence streams in passes over runs of
        # consecutive sequence ids (split_equal), so 8 sequences in any other order cost up
        # to 8 passes over the weights (smollm2 Q4_1, 8 tokens: 43 ms sorted, 84 reversed;
        # benchmarks/llamacpp_engine.py)
        takes.sort(key=lambda t: t[0].slot)
        drafted: list[tuple[_Seq, int]] = []  # (sequence, batch index of its sampled token)
        for seq, take in takes:
            if seq.draft:
                drafted.append((seq, n))
            for j, tok in enumerate(seq.pending[:take]):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, seq.pos + j, 1
                b.seq_id[n][0] = seq.slot
                last = j == take - 1 and take == len(seq.pending)
                b.logits[n] = 1 if last or seq.draft else 0
                if last:
                    wants.append((seq.slot, n - seq.draft))
                n += 1
            seq.pos += take
            seq.done += seq.pending[:take]
            del seq.pending[:take]
        if n == 0:
            return out
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = self._lib.llama_decode(self._ctx, b)
        out.decode_s = time.perf_counter() - t0
        if rc != 0:  # admission reserved the cells, so this is a bug, not a full cache
            for seq in self._seqs.values():  # what their streams hold is unknown now
                self._lib.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                seq.done = []
            raise RuntimeError(f"llama_decode failed ({rc}) with {n} tokens")
        for sid, i in wants:
            out.logits[sid] = self._row(i)
        for seq, i in drafted:
            rows = [self._row(i + j) for j in range(seq.draft + 1)]
            out.drafts[seq.slot] = (seq.done[-seq.draft:], rows)
            out.drafted += seq.draft
        out.tokens = n
        return out

    def _row(self, i: int) -> np.ndarray:
        """The logits (V,) of batch index i, in place."""
        ptr = self._lib.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,))
