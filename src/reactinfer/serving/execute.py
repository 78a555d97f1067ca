"""Running a variant: decoding token by token (torch), and encoding texts (or classifying
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
    """Decoding one token at a time with the KV cache (torch models), so callers can
    stream each token as it is made; greedy unless `sampling` says otherwise. Backends
    without a step API (and without a decode engine, see decode.py) generate greedily
    in one call."""
    s = sampling or Sampling()
    rng = rng if rng is not None else s.rng()
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
            tok = pick_token(out.logits[0, -1].float().cpu().numpy(), s, rng)
            yield tok
            if tok in stop_ids or i == max_new_tokens - 1:
                return
            out = model(input_ids=torch.tensor([[tok]], device=device),
                        past_key_values=out.past_key_values, use_cache=True)


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
