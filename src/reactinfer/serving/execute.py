"""Running a variant: decoding token by token (any backend), and encoding texts (or classifying
preprocessed images) in calls of at most `max_batch`. The batcher's worker and the
start-up measurement (warmup.py) both call a model through these."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..tasks.sampling import Sampling, pick_token


def generate_stream(handle: Any, prompt_ids: Sequence[int], max_new_tokens: int,
                    stop_ids: set[int], sampling: Sampling | None = None,
                    rng: np.random.Generator | None = None) -> Iterator[int]:
    """Tokens one at a time, each yielded as soon as it is picked (so callers stream it),
    from the runner's step-by-step `decode` (every generative backend has one; see
    core/backend.py); greedy unless `sampling` says otherwise."""
    s = sampling or Sampling()
    rng = rng if rng is not None else s.rng()
    steps = handle.runner().decode(list(prompt_ids))
    try:
        logits = next(steps)
        for i in range(max_new_tokens):
            tok = pick_token(logits, s, rng)
            yield tok
            if tok in stop_ids or i == max_new_tokens - 1:
                return
            logits = steps.send(tok)
    finally:
        steps.close()


def run_encoder(handle: Any, texts: Sequence[str], max_batch: int, tok_lock: threading.Lock,
                observe: Callable[[int, float], None]) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (N, ...) in input order and each text's token count (N,). Longest texts
    go first, bucketed by token count as `react bench` runs them (`iter_batches`), so each
    call pads little; `observe(n, seconds)` gets each call's size and time (tokenizing
    included: the first call's tokenizes every text)."""
    from ..tasks import iter_batches

    runner = handle.runner()
    batches = iter_batches(handle.tokenizer, texts, max_batch, handle.max_length)
    out: np.ndarray | None = None
    counts = np.zeros(len(texts), dtype=np.int64)
    while True:
        t0 = time.perf_counter()
        with tok_lock:
            item = next(batches, None)
        if item is None:
            break
        idx, batch = item
        y = runner(batch)
        dt = time.perf_counter() - t0
        counts[idx] = batch["attention_mask"].sum(1)
        observe(len(idx), dt)
        if out is None:
            out = np.empty((len(texts),) + y.shape[1:], dtype=np.float32)
        out[idx] = y
    assert out is not None
    return out, counts


def run_pixels(handle: Any, pixels: np.ndarray, max_batch: int,
               observe: Callable[[int, float], None]) -> np.ndarray:
    """Outputs (N, ...) of preprocessed images (N, C, H, W), in calls of at most
    `max_batch`; `observe(n, seconds)` gets each call's size and time."""
    runner = handle.runner()
    parts = []
    for s in range(0, len(pixels), max_batch):
        t0 = time.perf_counter()
        parts.append(np.asarray(runner({"pixel_values": pixels[s:s + max_batch]}),
                                dtype=np.float32))
        observe(len(parts[-1]), time.perf_counter() - t0)
    return np.concatenate(parts)
