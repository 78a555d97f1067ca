"""Sequence classification: logits (B, C); quality is top-1 agreement with the reference
(and accuracy when labels exist)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import Results, register_task, run_in_order
from .metrics import item_labels
from .stats import CI_KEY, proportion_ci


class Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits.float()


class ClassificationTask:
    name = "classification"
    quality_name = "top1_agreement"
    primary_output = "logits"
    takes_images = False
    item_noun = "texts"
    serve_output = "logits"
    generates = False
    votes = True
    bounds_recall = False
    default_max_drop = 0.01
    default_n_eval: int | None = None
    latency_runs = 50
    max_eval_batch: int | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return Logits(model)

    def evaluate(self, runner: Any, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> Results:
        out = {"logits": run_in_order(runner, tokenizer, texts, batch_size, max_length)}
        labels = item_labels(texts)  # JSONL texts with a `label` (data/readers.py)
        if labels is not None:
            out["labels"] = labels
        return out

    def compare(self, reference: Results, candidate: Results) -> dict[str, Any]:
        ref, cand = reference["logits"].argmax(-1), candidate["logits"].argmax(-1)
        same = (ref == cand).astype(np.float64)
        out: dict[str, Any] = {"top1_agreement": float(same.mean())}
        ci = {"top1_agreement": proportion_ci(same)}
        if "labels" in reference:
            right = (cand == reference["labels"]).astype(np.float64)
            out["accuracy"] = float(right.mean())
            out["reference_accuracy"] = float(np.mean(ref == reference["labels"]))
            ci["accuracy"] = proportion_ci(right)
        out[CI_KEY] = ci
        return out

    def drop(self, quality: dict[str, Any]) -> float:
        return 1.0 - quality["top1_agreement"]


register_task(ClassificationTask())
