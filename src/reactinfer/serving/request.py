"""What a batcher queues and answers: a `Request` (its job, the event loop to answer on,
and its inputs), a generation's answer (`Generated`), and a refusal (`Rejected`)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tasks.sampling import Sampling
from .ladder import Job


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
    pixels: Any = None  # images: preprocessed (N, C, H, W) float32, in place of texts
    prompt_ids: Sequence[int] = ()
    sink: asyncio.Queue | None = None  # streamed token ids, then None
    arrival: float = field(default_factory=time.monotonic)
    length: int = 0  # characters, for length bucketing
    predicted: float = 0.0  # seconds to the answer, predicted at admission
    sampling: Sampling | None = None  # generation: how to pick tokens (None: greedy)
    stop: tuple[str, ...] = ()  # generation: the answer ends before any of these
    cancelled: bool = False  # the client left: the worker frees its sequence
    # generation: a token constraint of this sequence alone (a grammar: allows / mask /
    # is_end / accept, as backends/llamacpp_grammar.py), or None
    constraint: Any = None
    logprobs: int | None = None  # generation: record log-probabilities, with this many top


@dataclass
class Generated:
    tokens: list[int]
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    variant: str
    text: str = ""  # the answer's text (stop strings cut off)
    # per answer token (end of sequence excluded), when asked: (token, logprob, top
    # alternatives ((token, logprob), ...)) from tasks.sampling.token_logprobs
    logprobs: list[Any] | None = None
