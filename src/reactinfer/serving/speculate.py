"""Speculative decoding's policy in the decode loop: prompt lookup (n-gram) drafts, and
when to propose them.

A greedy sequence proposes the tokens that followed the latest earlier occurrence of
its last n tokens (prompt + answer; n from NGRAM_MAX down to NGRAM_MIN): in input-
grounded work (copy, rewrite, extract, edit code) the answer repeats the prompt, and one
decode verifies several tokens (llamacpp_engine.py evaluates them with logits at every
position). The loop picks each token from its row exactly as without a draft, and stops
at the first that differs from the draft, so the answer is token for token the one
without speculation.

A draft costs its extra positions in the step whether they are right or not. On a busy
engine the step is already compute-bound, so "auto" proposes only while at most
`max_streams` sequences are decoding, and a sequence whose acceptance (an EWMA of
accepted / proposed) falls below `min_accept` stops proposing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import UserError

MODES = ("auto", "off", "lookup")  # lookup: always propose, whatever the load
NGRAM_MAX, NGRAM_MIN = 3, 1
MAX_STREAMS = 2  # auto: no drafts when more sequences decode together
MIN_ACCEPT = 0.3  # auto: a sequence below this acceptance EWMA stops proposing
ACCEPT_ALPHA = 0.3  # weight of the latest verification in that EWMA
TOKENS_PER_CALL_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


def check_mode(mode: str, draft_tokens: int) -> None:
    if mode not in MODES:
        raise UserError(f"serve: speculate must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(draft_tokens, int) or not 1 <= draft_tokens <= 32:
        raise UserError(f"serve: draft_tokens must be an integer in 1..32, got {draft_tokens!r}")


def lookup(tokens: Sequence[int], k: int, n_max: int = NGRAM_MAX,
           n_min: int = NGRAM_MIN) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the last n tokens
    (the longest n that occurs first); [] when none occurs."""
    size = len(tokens)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        tail = list(tokens[size - n:])
        last = tail[-1]
        for end in range(size - 2, n - 2, -1):  # end: where an earlier occurrence ends
            if tokens[end] == last and list(tokens[end - n + 1:end + 1]) == tail:
                return list(tokens[end + 1:end + 1 + k])
    return []


@dataclass
class Speculation:
    """Which sequences propose a draft, and how long."""

    mode: str = "auto"
    draft_tokens: int = 6
    max_streams: int = MAX_STREAMS
    min_accept: float = MIN_ACCEPT

    def __post_init__(self) -> None:
        check_mode(self.mode, self.draft_tokens)

    def eligible(self, d: Any) -> bool:
        """A greedy sequence without a grammar (its pick from each row is the argmax)."""
        return d.sampling.greedy and d.req.constraint is None

    def propose(self, d: Any, decoding: int) -> list[int]:
        """The draft after `d`'s last token ([] for none), `decoding` sequences running."""
        if self.mode == "off" or not self.eligible(d):
            return []
        if self.mode == "auto" and (decoding > self.max_streams
                                    or d.accept_rate < self.min_accept):
            return []
        left = d.req.job.new_tokens - len(d.tokens) - 1  # more would be cut by max_tokens
        if left <= 0:
            return []
        return lookup(list(d.req.prompt_ids) + d.tokens, min(self.draft_tokens, left))

    @staticmethod
    def verified(d: Any, proposed: int, accepted: int) -> None:
        """One draft checked: the sequence's acceptance EWMA moves."""
        d.accept_rate += ACCEPT_ALPHA * (accepted / proposed - d.accept_rate)


def record(metrics: Any, labels: dict[str, str], emitted: int, proposed: int,
           accepted: int) -> None:
    """One sequence's share of a decode step into /metrics."""
    metrics.spec_tokens_per_call.observe(emitted, **labels)
    if proposed:
        metrics.spec_proposed.inc(proposed, **labels)
        metrics.spec_accepted.inc(accepted, **labels)
        metrics.spec_accept_rate.set(metrics.spec_accepted.get(**labels)
                                     / metrics.spec_proposed.get(**labels), **labels)
