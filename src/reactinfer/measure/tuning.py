"""Thread count and batch size tuning, measured on this machine with the handle's own
backend (throughput on real evaluation text; tokenization included, as callers pay it)."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import UserError

if TYPE_CHECKING:
    from ..core.handle import ModelHandle


def _texts(texts: Sequence[str] | None, n: int) -> list[str]:
    from ..data import texts_for

    out = list(texts) if texts is not None else texts_for("eval", limit=n)
    if not out:
        raise UserError("tuning needs some texts")
    return out[:n]


def _throughput(handle: ModelHandle, texts: Sequence[str], batch_size: int) -> float:
    from ..tasks import get_task, tokenize

    runner = handle.runner()
    runner(tokenize(handle.tokenizer, list(texts[:batch_size]), handle.max_length))  # warm-up
    t0 = time.perf_counter()
    get_task(handle.task).evaluate(runner, handle.tokenizer, texts, batch_size,
                                   handle.max_length)
    return len(texts) / (time.perf_counter() - t0)


def _pick(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    best = max(rows, key=lambda r: r["items_per_s"])
    return {"best": best[key], "measurements": rows,
            "reason": f"{key}={best[key]}: {best['items_per_s']:.1f} items/s, the highest of "
                      f"{len(rows)} settings measured here"}


def tune_threads(handle: ModelHandle, texts: Sequence[str] | None = None,
                 batch_size: int = 32, counts: Sequence[int] | None = None,
                 n_texts: int = 64) -> dict[str, Any]:
    """Throughput per thread count; `best` is the count to pass as the `threads` option."""
    import torch

    cores = os.cpu_count() or 1
    counts = list(counts) if counts else sorted({1, max(1, cores // 2), cores})
    sample = _texts(texts, n_texts)
    before = torch.get_num_threads()  # torch's setting is process-wide: restore it
    rows = []
    try:
        for n in counts:
            h = handle.derive(backend_options={**handle.backend_options, "threads": int(n)})
            rows.append({"threads": int(n), "items_per_s": _throughput(h, sample, batch_size)})
    finally:
        torch.set_num_threads(before)
    return _pick(rows, "threads")


def tune_batch_size(handle: ModelHandle, texts: Sequence[str] | None = None,
                    sizes: Sequence[int] = (1, 4, 8, 16, 32, 64),
                    n_texts: int = 128) -> dict[str, Any]:
    """Throughput per batch size (LMs are capped at 8: their logits are (B, T, V))."""
    from ..tasks import get_task

    cap = get_task(handle.task).max_eval_batch
    if cap is not None:
        sizes = [s for s in sizes if s <= cap] or [1]
    sample = _texts(texts, n_texts)
    handle = handle.derive()  # one runner for all sizes
    rows = [{"batch_size": int(s), "items_per_s": _throughput(handle, sample, int(s))}
            for s in sizes]
    return _pick(rows, "batch_size")
