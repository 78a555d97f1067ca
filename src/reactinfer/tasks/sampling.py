"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and
top-p (nucleus), from a generator seeded per request so that the same seed repeats the
answer. Shared by every backend's generation, so they all sample alike."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (the default: answers are reproducible without a seed);
    top_k 0 keeps every token; top_p 1 keeps the whole distribution."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be 0 or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or more, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def pick_token(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """The next token from last-position logits (V,)."""
    if s.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    ids = np.arange(len(z))
    if 0 < s.top_k < len(z):
        ids = np.argpartition(-z, s.top_k - 1)[:s.top_k]
    order = ids[np.argsort(-z[ids], kind="stable")]  # most likely first
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if s.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), s.top_p)) + 1  # smallest set reaching top_p
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


def token_logprobs(logits: np.ndarray, token: int, top: int = 0
                   ) -> tuple[int, float, tuple[tuple[int, float], ...]]:
    """The log-probability of `token` under the model's distribution (the raw logits (V,),
    before temperature or any constraint: what the model thinks, as OpenAI reports it),
    and the `top` most likely tokens with theirs, most likely first."""
    z = logits.astype(np.float64)
    m = z.max()
    lse = m + np.log(np.exp(z - m).sum())
    alts: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.argpartition(-z, min(top, len(z)) - 1)[:top]
        ids = ids[np.argsort(-z[ids], kind="stable")]
        alts = tuple((int(i), float(z[i] - lse)) for i in ids)
    return int(token), float(z[token] - lse), alts
