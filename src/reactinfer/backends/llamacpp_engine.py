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
A sequence reserves KV cells for its prompt plus its new tokens when it starts; `start`
refuses when they are not free, so a step never runs out of cache. `release` frees its
cells (`llama_memory_seq_rm`) and its slot.
"""
from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Seq:
    slot: int
    pending: list[int]  # tokens to evaluate: the prompt's rest, or the last sampled token
    reserve: int  # KV cells it may fill (prompt + new tokens), within its stream
    pos: int = 0  # next position


@dataclass
class EngineStep:
    """What one step made: the last-position logits (V,) of every sequence that is
    ready to sample, by sequence id (views of llama.cpp's buffer, valid until the next
    step: no copies), how many tokens the step evaluated, and the seconds spent in
    `llama_decode` itself (the rest of a step is Python)."""

    logits: dict[int, np.ndarray] = field(default_factory=dict)
    tokens: int = 0
    decode_s: float = 0.0


class DecodeEngine:
    """Slots on one llama.cpp context sharing the model's mmap'ed weights."""

    def __init__(self, model: Any, n_vocab: int, threads: int, n_ctx_seq: int, slots: int,
                 step_tokens: int = 512):
        import llama_cpp

        self._lib, self._model = llama_cpp, model  # the model must outlive the context
        if step_tokens <= slots:
            raise ValueError(f"step_tokens ({step_tokens}) must exceed slots ({slots})")
        self.n_vocab, self.slots, self.step_tokens = n_vocab, slots, step_tokens
        self.n_ctx = n_ctx_seq  # the most tokens (prompt + answer) of one sequence
        self.n_batch = step_tokens
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_seq_max, p.kv_unified = n_ctx_seq * slots, slots, False
        p.n_batch = p.n_ubatch = self.n_batch  # one step is one ubatch
        p.n_threads = p.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(model.model, p)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {n_ctx_seq} tokens "
                               f"for each of {slots} sequences")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._seqs: dict[int, _Seq] = {}
        self._free = list(range(slots))
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
        return bool(self._free) and reserve <= self.n_ctx

    @property
    def running(self) -> int:
        return len(self._seqs)

    def start(self, prompt_ids: Sequence[int], max_new_tokens: int) -> int:
        """A new sequence; its id. Its prompt is evaluated by the next steps."""
        reserve = len(prompt_ids) + max_new_tokens
        if not prompt_ids or not self.can_start(reserve):
            raise ValueError(f"no slot or KV room for {reserve} tokens (call can_start)")
        sid = self._free.pop(0)
        self._seqs[sid] = _Seq(sid, list(prompt_ids), reserve)
        self.reserved += reserve
        return sid

    def feed(self, sid: int, token: int) -> None:
        """The token sampled for `sid`: the next step evaluates it."""
        seq = self._seqs[sid]
        assert not seq.pending and seq.pos < seq.reserve, "fed twice or past its reservation"
        seq.pending.append(int(token))

    def release(self, sid: int) -> None:
        """The sequence leaves: its KV cells and slot are free for the next step."""
        seq = self._seqs.pop(sid, None)
        if seq is None:
            return
        self._lib.llama_memory_seq_rm(self._mem, sid, -1, -1)
        self.reserved -= seq.reserve
        self._free.append(sid)
        self._free.sort()

    # -- one step ------------------------------------------------------------------------
    def step(self) -> EngineStep:
        """One llama_decode: a token for each decoding sequence, then prompt chunks (in
        order of joining) up to `step_tokens` in all. Logits come back for every sequence
        whose pending tokens were all evaluated."""
        b, n, out = self._batch, 0, EngineStep()
        wants: list[tuple[int, int]] = []  # (sequence, batch index of its last token)
        decoding = [s for s in self._seqs.values() if len(s.pending) == 1]
        joining = [s for s in self._seqs.values() if len(s.pending) > 1]
        budget = self.step_tokens - len(decoding)  # > 0: step_tokens > slots
        for seq in decoding + joining:
            take = 1 if len(seq.pending) == 1 else min(len(seq.pending), budget)
            if take <= 0:
                continue
            if len(seq.pending) > 1:
                budget -= take
            for j, tok in enumerate(seq.pending[:take]):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, seq.pos + j, 1
                b.seq_id[n][0] = seq.slot
                last = j == take - 1 and take == len(seq.pending)
                b.logits[n] = 1 if last else 0
                if last:
                    wants.append((seq.slot, n))
                n += 1
            seq.pos += take
            del seq.pending[:take]
        if n == 0:
            return out
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = self._lib.llama_decode(self._ctx, b)
        out.decode_s = time.perf_counter() - t0
        if rc != 0:  # admission reserved the cells, so this is a bug, not a full cache
            raise RuntimeError(f"llama_decode failed ({rc}) with {n} tokens")
        for sid, i in wants:
            ptr = self._lib.llama_get_logits_ith(self._ctx, i)
            out.logits[sid] = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
        out.tokens = n
        return out
