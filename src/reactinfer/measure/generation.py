"""Generation as it will be served: greedy tokens/s of one stream alone and of `streams`
streams at once, and the time to the first token (TTFT).

A runner with a continuous-batching engine (`decode_engine`, llama.cpp) is measured
through that engine, the one `react serve` decodes with: its N streams share each step.
A runner without one is served one decode step per stream in turn (each stream its own
KV cache), so its N streams are measured that way: round robin over `decode()`.
Prompts are distinct (held-out texts), so a prefix cache shares nothing between them.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import UserError

FIGURE = "greedy generation tokens/s"


def _engine_run(eng: Any, prompts: Sequence[list[int]], tokens: int) -> tuple[float, list[float]]:
    """All `prompts` started together on `eng`, `tokens` greedy tokens each: the wall
    seconds, and each stream's seconds to its first token."""
    t0 = time.perf_counter()
    sids = {eng.start(p, tokens): i for i, p in enumerate(prompts)}
    left = dict.fromkeys(sids, tokens)
    first: list[float] = [0.0] * len(prompts)
    try:
        while left:
            out = eng.step()
            now = time.perf_counter()
            for sid, logits in out.logits.items():
                if sid not in left:
                    continue
                if left[sid] == tokens:
                    first[sids[sid]] = now - t0
                left[sid] -= 1
                if left[sid]:
                    eng.feed(sid, int(np.argmax(logits)))
                else:
                    del left[sid]
    finally:
        for sid in sids:
            eng.release(sid)
    return time.perf_counter() - t0, first


def _round_robin(runner: Any, prompts: Sequence[list[int]], tokens: int
                 ) -> tuple[float, list[float]]:
    """The same without an engine: one decode step per stream in turn."""
    t0 = time.perf_counter()
    first: list[float] = [0.0] * len(prompts)
    runs = []
    for i, p in enumerate(prompts):  # each prompt is evaluated as its stream joins
        dec = runner.decode(list(p))
        runs.append([dec, next(dec), tokens - 1])
        first[i] = time.perf_counter() - t0
    while any(r[2] for r in runs):
        for r in runs:
            if r[2]:
                r[1] = r[0].send(int(np.argmax(r[1])))
                r[2] -= 1
    for r in runs:
        r[0].close()
    return time.perf_counter() - t0, first


def serving_speed(runner: Any, prompts: Sequence[list[int]], streams: int,
                  tokens: int = 32, repeats: int = 2) -> dict[str, Any]:
    """Tokens/s of greedy generation at 1 stream and at `streams` (aggregate), and TTFT
    (ms) of one stream alone and the slowest of `streams`; `prompts` are token ids, one
    per stream (cycled when fewer)."""
    if streams < 1 or tokens < 2:
        raise UserError(f"streams must be >= 1 and tokens >= 2, got {streams} and {tokens}")
    if not prompts or not all(prompts):
        raise UserError("generation speed needs non-empty prompts")
    batch = [list(prompts[i % len(prompts)]) for i in range(streams)]
    if hasattr(runner, "decode_engine"):
        eng = runner.decode_engine(streams)
        eng.cache_tokens = 0  # no prefix reuse between the runs: each pays its prompt
        how = "decode engine (continuous batching, as served)"

        def run(ps: Sequence[list[int]], n: int) -> tuple[float, list[float]]:
            return _engine_run(eng, ps, n)
    elif hasattr(runner, "decode"):
        how = "one decode step per stream in turn (no batching engine)"

        def run(ps: Sequence[list[int]], n: int) -> tuple[float, list[float]]:
            return _round_robin(runner, ps, n)
    else:
        raise UserError("this runner does not decode; generation speed needs a causal LM")
    run(batch[:1], 2)  # warm-up: the first run of a context allocates its buffers
    # the faster of `repeats` runs counts: one run on a shared CPU swings by tens of percent
    one_s, one_first = min(run(batch[:1], tokens) for _ in range(repeats))
    n_s, n_first = min(run(batch, tokens) for _ in range(repeats)) if streams > 1 \
        else (one_s, one_first)
    return {"figure": FIGURE, "streams": streams, "new_tokens": tokens, "how": how,
            "prompt_tokens": int(np.mean([len(p) for p in batch])),
            "tok_s_1": tokens / one_s, "tok_s_n": streams * tokens / n_s,
            "ttft_ms": one_first[0] * 1e3, "ttft_ms_n_max": max(n_first) * 1e3,
            "repeats": repeats}
