"""Speculative decoding's policy in the decode loop: prompt lookup (n-gram) drafts, and
when to propose them.

A greedy sequence proposes the tokens that followed the latest earlier occurrence of
its last n tokens (prompt + answer; n from NGRAM_MAX down to NGRAM_MIN): in input-
grounded work (copy, rewrite, extract, edit code) the answer repeats the prompt, and one
decode verifies several tokens (llamacpp_engine.py evaluates them with logits at every
position). The loop picks each token from its row exactly as without a draft, and stops
at the first that differs from the draft, so the answer is token for token the one
without speculation.

A draft costs its extra positions in the step whether they are right or not, so its
length follows what the sequence's drafts earned: a sequence's first draft has
START_TOKENS tokens; one accepted whole doubles the next (up to `draft_tokens`), one
refused from its (a+1)-th token makes the next a+1 long. On a busy engine the step is
already compute-bound, so "auto" proposes only while at most `max_streams` sequences are
decoding, and a sequence whose acceptance (an EWMA of accepted / proposed) falls below
`min_accept` pauses: it proposes again, START_TOKENS long, once REPROBE_TOKENS tokens
have passed since its last draft (an answer that starts in its own words and then
quotes its input gets its drafts back).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..backends.llamacpp_engine import common_prefix
from ..core.errors import UserError

MODES = ("auto", "off", "lookup", "draft")  # lookup, draft: always propose, whatever the load
NGRAM_MAX, NGRAM_MIN = 3, 1
MAX_STREAMS = 2  # auto: no drafts when more sequences decode together
MIN_ACCEPT = 0.3  # auto: a sequence below this acceptance EWMA pauses its drafts ...
REPROBE_TOKENS = 16  # ... until this many tokens have passed since its last draft
ACCEPT_ALPHA = 0.3  # weight of the latest verification in that EWMA
START_TOKENS = 4  # a sequence's first draft (and a paused one's next): then as earned
TOKENS_PER_CALL_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


def check_mode(mode: str, draft_tokens: int) -> None:
    if mode not in MODES:
        raise UserError(f"serve: speculate must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(draft_tokens, int) or not 1 <= draft_tokens <= 32:
        raise UserError(f"serve: draft_tokens must be an integer in 1..32, got {draft_tokens!r}")


def check_vocabulary(target: Any, draft: Any, names: tuple[str, str]) -> None:
    """A draft model's tokens must mean what the target's mean: the same vocabulary size
    and, at a few ids spread over it, the same token texts (runners with `n_vocab` and
    `token_texts`)."""
    if draft.n_vocab != target.n_vocab:
        raise UserError(f"serve --draft: {names[1]} has {draft.n_vocab} tokens, {names[0]} "
                        f"{target.n_vocab}; a draft model must share the served model's "
                        "vocabulary (same tokenizer)")
    n = target.n_vocab
    ids = sorted({min(n - 1, i) for i in (0, 1, 2, 3, n // 7, n // 3, n // 2, 2 * n // 3,
                                          n - 2, n - 1)})
    for i, a, b in zip(ids, target.token_texts(ids), draft.token_texts(ids), strict=True):
        if a != b:
            raise UserError(f"serve --draft: token {i} is {b!r} in {names[1]} but {a!r} in "
                            f"{names[0]}; a draft model must share the served model's "
                            "vocabulary (same tokenizer)")


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


class Proposer(Protocol):
    """Where drafts come from: a draft of up to k tokens after each sequence's last token
    (all asked at once, so a draft model batches them), and a sequence that leaves."""

    def propose(self, wants: Sequence[tuple[Any, int]]) -> list[list[int]]: ...

    def release(self, d: Any) -> None: ...


class Lookup:
    """Prompt lookup: the tokens after the latest earlier occurrence of the last n-gram."""

    def __init__(self, draft: Any = None):
        pass

    def propose(self, wants: Sequence[tuple[Any, int]]) -> list[list[int]]:
        return [lookup(list(d.req.prompt_ids) + d.tokens, k) for d, k in wants]

    def release(self, d: Any) -> None:
        pass


class DraftModel:
    """A smaller model with the target's vocabulary proposes its own greedy tokens. It
    decodes on a llama.cpp engine of its own (as many slots as the target's), where each
    sequence that proposes keeps a sequence in step with it: rewound to the tokens both
    hold, it evaluates what the target accepted since, then k tokens; all of them at once,
    so one draft step serves every sequence. It leaves with its target sequence."""

    def __init__(self, draft: Any):
        if draft is None:
            raise UserError("serve: speculate='draft' needs a draft model (--draft MODEL)")
        self.runner = draft  # the draft model's runner: it makes decode engines
        self.seqs: dict[int, tuple[Any, int, list[int]]] = {}  # id(d) -> (engine, sid, held)

    def _engine(self, d: Any) -> Any:
        """The draft engine beside `d`'s target engine (made once, kept by the variant)."""
        v = d.variant
        eng = v.draft_engine
        if eng is None:
            target = v.engine
            eng = v.draft_engine = self.runner.decode_engine(  # its context: the target's
                target.slots, target.step_tokens, context=target.n_ctx,
                flash_attn=target.flash_attn)
        return eng

    def propose(self, wants: Sequence[tuple[Any, int]]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in wants]
        todo: dict[int, tuple[Any, int, list[int], int]] = {}  # i -> (engine, sid, held, k)
        for i, (d, k) in enumerate(wants):
            ctx = list(d.req.prompt_ids) + d.tokens
            if id(d) in self.seqs:
                eng, sid, held = self.seqs[id(d)]
                keep = common_prefix(held, ctx, len(ctx) - 1)  # the last token makes logits
                eng.resume(sid, keep, ctx[keep:])
                held[keep:] = ctx[keep:]
            else:
                eng = self._engine(d)
                # room for the whole answer and a draft after its last token
                more = d.req.job.new_tokens + len(d.req.prompt_ids) - len(ctx) + k
                if not eng.can_start(len(ctx) + more):
                    continue  # no free slot, or too long for the draft's context: no draft
                sid, held = eng.start(ctx, more), list(ctx)
                self.seqs[id(d)] = (eng, sid, held)
            todo[i] = (eng, sid, held, k)
        while todo:  # one draft step for all, until each has its k tokens
            for eng in {id(t[0]): t[0] for t in todo.values()}.values():
                logits = eng.step().logits
                for i, (e, sid, held, k) in list(todo.items()):
                    if e is not eng or sid not in logits:
                        continue
                    out[i].append(tok := int(logits[sid].argmax()))
                    if len(out[i]) == k:
                        del todo[i]
                    else:
                        eng.feed(sid, tok)
                        held.append(tok)
        return out

    def release(self, d: Any) -> None:
        seq = self.seqs.pop(id(d), None)
        if seq is not None:
            seq[0].release(seq[1])


# Where drafts come from, by name (ServeConfig.speculate names one, or "auto" picks).
PROPOSERS: dict[str, Callable[[Any], Proposer]] = {"lookup": Lookup, "draft": DraftModel}


@dataclass
class Speculation:
    """Which sequences propose a draft, how long, and from where: `draft` (the runner
    of a draft model, when given) makes "auto" propose from it, else by prompt lookup."""

    mode: str = "auto"
    draft_tokens: int = 16
    max_streams: int = MAX_STREAMS
    min_accept: float = MIN_ACCEPT
    draft: Any = None
    source: str = field(init=False, default="")
    proposer: Proposer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        check_mode(self.mode, self.draft_tokens)
        if self.mode != "off":
            self.source = self.mode if self.mode in PROPOSERS else \
                ("draft" if self.draft is not None else "lookup")
            self.proposer = PROPOSERS[self.source](self.draft)

    def eligible(self, d: Any) -> bool:
        """A greedy sequence without a grammar (its pick from each row is the argmax)."""
        return d.sampling.greedy and d.req.constraint is None

    def wanted(self, d: Any, decoding: int) -> int:
        """How many tokens `d`'s next draft may have (0: none), `decoding` running."""
        if self.proposer is None or not self.eligible(d):
            return 0
        start = min(START_TOKENS, self.draft_tokens)
        k = d.draft_len or start
        if self.mode == "auto":
            if decoding > self.max_streams:
                return 0
            if d.accept_rate < self.min_accept:  # paused: a short probe now and then
                if len(d.tokens) - d.drafted_at < REPROBE_TOKENS:
                    return 0
                k = start
        left = d.req.job.new_tokens - len(d.tokens) - 1  # more would be cut by max_tokens
        return max(0, min(k, left))

    def propose_all(self, ds: Sequence[Any], decoding: int) -> list[list[int]]:
        """The drafts after each sequence's last token ([] for none)."""
        ks = [self.wanted(d, decoding) for d in ds]
        wants = [(d, k) for d, k in zip(ds, ks, strict=True) if k]
        if not wants:
            return [[] for _ in ds]
        assert self.proposer is not None
        got = iter(self.proposer.propose(wants))
        return [next(got) if k else [] for k in ks]

    def propose(self, d: Any, decoding: int) -> list[int]:
        """The draft after `d`'s last token ([] for none)."""
        return self.propose_all([d], decoding)[0]

    def release(self, d: Any) -> None:
        """`d` left: what its drafts held goes."""
        if self.proposer is not None:
            self.proposer.release(d)

    def failed(self, ds: Sequence[Any]) -> str:
        """The proposer raised (a draft model whose engine cannot start, say): `ds`
        decode without a draft, and later drafts come by prompt lookup ("auto" with a
        draft model), else none come: a broken proposer must not cost every step an
        exception. What happens now, in words."""
        for d in ds:
            try:
                self.release(d)
            except Exception:  # noqa: BLE001  (what the broken proposer held is dropped)
                pass
        if self.mode == "auto" and self.source == "draft":
            self.source, self.proposer = "lookup", Lookup()
            return "drafts come by prompt lookup from now on"
        self.source, self.proposer = "", None
        return "no drafts from now on"

    def verified(self, d: Any, proposed: int, accepted: int) -> None:
        """One draft checked: the sequence's acceptance EWMA moves, and its next draft's
        length follows (doubled when all was accepted, else one past what was)."""
        d.accept_rate += ACCEPT_ALPHA * (accepted / proposed - d.accept_rate)
        d.draft_len = min(2 * proposed, self.draft_tokens) if accepted == proposed \
            else accepted + 1
        d.drafted_at = len(d.tokens)


def record(metrics: Any, labels: dict[str, str], emitted: int, proposed: int,
           accepted: int, source: str = "lookup") -> None:
    """One sequence's share of a decode step into /metrics (drafts by their source:
    "lookup" or "draft")."""
    metrics.spec_tokens_per_call.observe(emitted, **labels)
    if proposed:
        by = {**labels, "source": source}
        metrics.spec_proposed.inc(proposed, **by)
        metrics.spec_accepted.inc(accepted, **by)
        metrics.spec_accept_rate.set(metrics.spec_accepted.get(**by)
                                     / metrics.spec_proposed.get(**by), **by)
