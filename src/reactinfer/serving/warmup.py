"""Start-up measurement: before the server reports ready, every variant's runner is built
and its service time measured (per batch size for encoders, prefill and per-token time
for generation), so the ladder can order the variants by cost and admission can predict
from the first request on. Live batches refine these estimates afterwards (EWMA)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..tasks import get_task
from .config import ServeConfig
from .decode import engine_of, measure_engine
from .execute import generate_stream
from .ladder import Ladder, Variant


def warmup_images(preprocess: Any, n: int = 4) -> list[np.ndarray]:
    """Seeded uint8 images at the model's input size (so preprocessing adds little to
    the measured service time; live batches, which run preprocessed pixels, refine it)."""
    from ..core.images import CHANNELS

    rng = np.random.default_rng(0)
    c, side = CHANNELS[preprocess.channels], preprocess.size
    shape = (side, side) if c == 1 else (side, side, c)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def probe_pixels(preprocess: Any) -> np.ndarray:
    """One preprocessed image (1, C, H, W) for a probe call."""
    return preprocess(warmup_images(preprocess, 1))["pixel_values"]


def warmup_items(task: str, handle: Any, texts: Sequence[str]) -> Sequence[Any]:
    """What a variant is measured on: images for an image model, else the texts."""
    return warmup_images(handle.tokenizer) if get_task(task).takes_images else texts


def warmup_texts(max_batch: int) -> list[str]:
    """Sentence-to-paragraph sized texts, enough for the largest batch."""
    from ..data import texts_for

    return [t[:256] for t in texts_for("calibration", limit=max(64, max_batch))]


def warm_up(ladder: Ladder, task: str, texts: Sequence[str], config: ServeConfig) -> None:
    """Build every variant's runner now, not on the first request; measure each (unless
    `config.warmup` is off); order the ladder by cost."""
    for v in ladder.variants:
        v.handle.runner()
        # the engine first, warm-up or not: its KV plan sets the context that requests
        # are checked against
        eng = engine_of(v, config=config) if get_task(task).generates else None
        if not config.warmup:
            continue
        if get_task(task).generates:
            ids = v.handle.tokenizer(texts[0])["input_ids"][:32]
            if eng is not None:
                measure_engine(v, eng, ids)
            else:
                measure_generation(v, ids)
        else:
            measure_encoder(v, texts, config.max_batch)
    ladder.order_by_cost()


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
    """Time one greedy generation: the first token (prefill) and the mean of the rest."""
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in generate_stream(v.handle, prompt_ids, tokens, set()):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    v.gen.observe_alone(first - t0, (end - first) / (n - 1) if n > 1 else None)
