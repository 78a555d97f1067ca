"""Sentence embeddings: mean pooling over tokens, then L2 normalisation
(what sentence-transformers does for all-MiniLM-L6-v2)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import Results, register_task, run_in_order
from .stats import CI_KEY, bootstrap_ci, mean_ci


class MeanPooled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)


def neighbour_recall(reference: np.ndarray, candidate: np.ndarray, k: int = 10,
                     n_queries: int = 200) -> float:
    """Do the same documents come back for the same queries? Mean overlap of top-k
    neighbours (self excluded) under reference and candidate embeddings."""
    return float(recall_per_query(reference, candidate, k, n_queries).mean())


def recall_per_query(reference: np.ndarray, candidate: np.ndarray, k: int = 10,
                     n_queries: int = 200) -> np.ndarray:
    """`neighbour_recall` of each query (the first `n_queries` items)."""
    n = len(reference)
    k = min(k, n - 1)
    if k < 1:
        return np.ones(1)
    q = min(n_queries, n)

    def topk(e: np.ndarray) -> np.ndarray:
        sims = e[:q] @ e.T  # (q, n)
        sims[np.arange(q), np.arange(q)] = -np.inf
        return np.argpartition(-sims, k, axis=1)[:, :k]

    a, b = topk(reference), topk(candidate)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])


class EmbeddingTask:
    name = "embedding"
    quality_name = "mean_cosine"
    primary_output = "embeddings"
    takes_images = False
    item_noun = "texts"
    serve_output = "embedding"
    generates = False
    votes = False
    bounds_recall = True
    default_max_drop = 0.005
    default_n_eval: int | None = None
    latency_runs = 50
    max_eval_batch: int | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return MeanPooled(model)

    def evaluate(self, runner: Any, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> Results:
        return {"embeddings": run_in_order(runner, tokenizer, texts, batch_size, max_length)}

    def compare(self, reference: Results, candidate: Results) -> dict[str, Any]:
        ref, cand = reference["embeddings"], candidate["embeddings"]
        ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(1e-12)
        cand_n = cand / np.linalg.norm(cand, axis=1, keepdims=True).clip(1e-12)
        cos = np.asarray(np.sum(ref_n * cand_n, axis=1, dtype=np.float64))  # as the CI
        recall = recall_per_query(ref_n, cand_n)
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "top10_recall": float(recall.mean()),
                CI_KEY: {"mean_cosine": mean_ci(cos), "top10_recall": bootstrap_ci(recall)}}

    def drop(self, quality: dict[str, Any]) -> float:
        return 1.0 - quality["mean_cosine"]


register_task(EmbeddingTask())
