"""Causal language models: logits (B, T, V). Quality is perplexity on held-out text,
its ratio to the reference's, and greedy-token agreement (does the candidate pick the
same next token as the reference at each position?)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import Results, iter_batches, register_task

# The prompt every generation-speed measurement decodes from (bench, backend choice).
GEN_PROMPT = "Explain in one paragraph what a Python docstring is for."


class CausalLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).logits.float()


def next_token_stats(logits: np.ndarray, input_ids: np.ndarray, mask: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per row: summed NLL of each next token, number of scored tokens, and the argmax
    prediction at each scored position. Right padding assumed (mask is 1…1 0…0)."""
    x = logits[:, :-1].astype(np.float32)  # (B, T-1, V): position t predicts token t+1
    target = input_ids[:, 1:]  # (B, T-1)
    valid = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    m = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(-1)) + m[..., 0]  # (B, T-1)
    picked = np.take_along_axis(x, target[..., None], -1)[..., 0]
    nll = np.where(valid, lse - picked, 0.0).sum(1)
    argmax = x.argmax(-1)
    return nll, valid.sum(1), [argmax[i][valid[i]].astype(np.int32) for i in range(len(x))]


class CausalLMTask:
    name = "causal-lm"
    quality_name = "perplexity_ratio"

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
            logits = runner(batch)
            n, c, a = next_token_stats(logits, batch["input_ids"], batch["attention_mask"])
            nll[idx], count[idx] = n, c
            for j, i in enumerate(idx):
                argmax[i] = a[j]
        return {"nll": nll, "tokens": count, "argmax": np.concatenate(argmax)}

    @staticmethod
    def perplexity(results: Results) -> float:
        return math.exp(results["nll"].sum() / max(int(results["tokens"].sum()), 1))

    def compare(self, reference: Results, candidate: Results) -> dict[str, float]:
        ppl_ref, ppl = self.perplexity(reference), self.perplexity(candidate)
        agree = float(np.mean(reference["argmax"] == candidate["argmax"])) \
            if len(reference["argmax"]) == len(candidate["argmax"]) else float("nan")
        return {"perplexity": ppl, "reference_perplexity": ppl_ref,
                "perplexity_ratio": ppl / ppl_ref, "token_agreement": agree}

    def drop(self, quality: dict[str, float]) -> float:
        return quality["perplexity_ratio"] - 1.0


register_task(CausalLMTask())
