"""Causal language models: logits (B, T, V). Quality is perplexity on held-out text,
its ratio to the reference's, and greedy-token agreement (does the candidate pick the
same next token as the reference at each position?)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core.backend import ScoringRunner
from .base import Results, iter_batches, register_task
from .stats import CI_KEY, ratio_ci

# The prompt every generation-speed measurement decodes from (bench, backend choice).
GEN_PROMPT = "Explain in one paragraph what a Python docstring is for."


class CausalLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).logits.float()


# Positions scored per block: log-softmax needs a few temporaries of (block, vocab)
# floats, so memory follows the block, never the (batch, length, vocab) of a whole batch.
SCORE_BLOCK = 64


def score_rows(x: np.ndarray, target: np.ndarray, block: int = SCORE_BLOCK
               ) -> tuple[np.ndarray, np.ndarray]:
    """Logit rows (N, V) and their target tokens (N,) → the NLL of each target (float32)
    and the argmax of each row (int32), `block` rows at a time."""
    n = len(x)
    nll, argmax = np.empty(n, np.float32), np.empty(n, np.int32)
    for s in range(0, n, block):
        b = np.asarray(x[s:s + block], dtype=np.float32)  # (b, V)
        m = b.max(-1, keepdims=True)
        lse = np.log(np.exp(b - m).sum(-1)) + m[:, 0]
        nll[s:s + block] = lse - b[np.arange(len(b)), target[s:s + block]]
        argmax[s:s + block] = b.argmax(-1)
    return nll, argmax


def scores_from_logits(logits: np.ndarray, input_ids: np.ndarray, block: int = SCORE_BLOCK
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Full logits (B, T, V) → per position (B, T-1): NLL of the next token and the argmax
    (position t predicts token t+1), for runners that return logits only."""
    bsz, t = input_ids.shape
    nll, argmax = np.zeros((bsz, t - 1), np.float32), np.zeros((bsz, t - 1), np.int32)
    for i in range(bsz):
        nll[i], argmax[i] = score_rows(logits[i, :-1], input_ids[i, 1:], block)
    return nll, argmax


def torch_next_token_scores(model: torch.nn.Module, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor, block: int = SCORE_BLOCK
                            ) -> tuple[np.ndarray, np.ndarray]:
    """`scores_from_logits` for a Hugging Face causal LM without its (B, T, V) logits: the
    body runs once, the LM head on about `block` rows (batch × positions) at a time, each
    block reduced at once.
    Models whose logits are more than head(hidden) (soft-capped, scaled) get full logits,
    reduced by blocks in torch."""
    target = input_ids[:, 1:]
    cfg = getattr(model, "config", None)
    get_head: Any = getattr(model, "get_output_embeddings", None)
    head: Any = get_head() if callable(get_head) else None
    body: Any = getattr(model, str(getattr(model, "base_model_prefix", "")), None)
    plain = head is not None and isinstance(body, torch.nn.Module) and not any(
        getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale"))
    if plain:
        assert head is not None and body is not None
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    else:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask,
                       use_cache=False).logits
    bsz, t = target.shape
    nll = torch.zeros((bsz, t), dtype=torch.float32)
    argmax = torch.zeros((bsz, t), dtype=torch.int32)
    step = max(1, block // max(bsz, 1))  # about `block` rows of logits at a time
    for s in range(0, t, step):
        e = min(s + step, t)  # the last position predicts nothing
        x = (head(hidden[:, s:e]) if plain else hidden[:, s:e]).float()
        picked = x.gather(-1, target[:, s:e, None])[..., 0]
        nll[:, s:e] = (torch.logsumexp(x, -1) - picked).cpu()
        argmax[:, s:e] = x.argmax(-1).to(torch.int32).cpu()
    return nll.numpy(), argmax.numpy()


def next_token_stats(logits: np.ndarray, input_ids: np.ndarray, mask: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per row: summed NLL of each next token, number of scored tokens, and the argmax
    prediction at each scored position. Right padding assumed (mask is 1…1 0…0)."""
    return _per_row(*scores_from_logits(logits, input_ids), mask)


def _per_row(nll: np.ndarray, argmax: np.ndarray, mask: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    valid = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    return (np.where(valid, nll, 0.0).sum(1), valid.sum(1),
            [argmax[i][valid[i]].astype(np.int32) for i in range(len(nll))])


def next_token_scores(runner: Any, batch: dict[str, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per position NLL and argmax from the runner: in the engine, by blocks, when it
    offers `score(batch)`; otherwise from its full logits, by blocks."""
    if isinstance(runner, ScoringRunner):
        return runner.score(batch)
    return scores_from_logits(runner(batch), batch["input_ids"])


class CausalLMTask:
    name = "causal-lm"
    quality_name = "perplexity_ratio"
    primary_output = "nll"  # per text (N,): what a metric callable gets
    takes_images = False
    item_noun = "texts"
    serve_output = "text_output"
    generates = True
    votes = False
    bounds_recall = False
    default_max_drop = 0.01
    # A causal LM costs a full-vocabulary forward per text (about 0.3-1 s per text for
    # smollm2 on 2 CPU cores), so bench's default is a sample that keeps `react bench
    # smollm2` to a few minutes (--n-eval all: every held-out text; encoders evaluate all
    # of them in seconds). A fixed count, not a time budget: the same command measures the
    # same texts on every machine.
    default_n_eval: int | None = 64
    latency_runs = 20
    max_eval_batch: int | None = 8  # full-vocabulary logits (B, T, 49k) are large

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return CausalLogits(model)

    def evaluate(self, runner: Any, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> Results:
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        nll = np.zeros(len(texts))
        count = np.zeros(len(texts), dtype=np.int64)
        argmax: list[np.ndarray] = [np.zeros(0, np.int32)] * len(texts)
        for idx, batch in iter_batches(tokenizer, texts, batch_size, max_length):
            n, c, a = _per_row(*next_token_scores(runner, batch), batch["attention_mask"])
            nll[idx], count[idx] = n, c
            for j, i in enumerate(idx):
                argmax[i] = a[j]
        return {"nll": nll, "tokens": count, "argmax": np.concatenate(argmax)}

    @staticmethod
    def perplexity(results: Results) -> float:
        return math.exp(results["nll"].sum() / max(int(results["tokens"].sum()), 1))

    def compare(self, reference: Results, candidate: Results) -> dict[str, Any]:
        ppl_ref, ppl = self.perplexity(reference), self.perplexity(candidate)
        quality: dict[str, Any] = {"perplexity": ppl, "reference_perplexity": ppl_ref,
                                   "perplexity_ratio": ppl / ppl_ref,
                                   "token_agreement": float("nan")}
        tokens = reference["tokens"]
        # the log of the ratio is a ratio of sums over texts: paired per-text NLL differences
        lo, hi = ratio_ci(candidate["nll"] - reference["nll"], tokens)
        ci = {"perplexity_ratio": [math.exp(lo), math.exp(hi)]}
        if len(reference["argmax"]) == len(candidate["argmax"]):
            same = (reference["argmax"] == candidate["argmax"]).astype(np.float64)
            quality["token_agreement"] = float(same.mean())
            run, ends = np.concatenate([[0.0], np.cumsum(same)]), np.cumsum(tokens)
            ci["token_agreement"] = ratio_ci(run[ends] - run[ends - tokens], tokens)
        quality[CI_KEY] = ci
        return quality

    def drop(self, quality: dict[str, Any]) -> float:
        return quality["perplexity_ratio"] - 1.0


register_task(CausalLMTask())
