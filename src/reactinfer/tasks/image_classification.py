"""Image classification: logits (B, C) from pixel batches (B, C, H, W).

Items are image paths, uint8 arrays, PIL images, or objects with `.image` (and `.label`,
the class id, when known: data/images.py makes them). The handle's `tokenizer` slot holds
the model's `ImagePreprocess`, so the measuring harness runs images through the same path
as texts: `tokenize(preprocess, items)` gives {"pixel_values": ...}.

Quality against the reference: top-1 agreement, top-5 overlap, KL(reference ‖ candidate)
of the softmax, and accuracy when every item has a label.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import UserError
from .base import Results, register_task
from .metrics import item_labels


class ImageLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values)
        logits = out.logits if hasattr(out, "logits") else out
        return logits.float()


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class ids of the k largest logits per row (in no particular order)."""
    k = min(k, logits.shape[-1])
    return np.argpartition(-logits, k - 1, axis=-1)[:, :k]


def top_classes(logits: np.ndarray, labels: Sequence[str] | None, k: int = 5
                ) -> tuple[np.ndarray, list[list[str]]]:
    """(N, k) int64 class ids of the k largest logits per row, best first (ties: the lower
    id), and their names; a model without names (`labels` None) gets its ids as text."""
    k = min(k, logits.shape[-1])
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k].astype(np.int64)  # (N, k)
    names = [[labels[i] if labels is not None and i < len(labels) else str(i) for i in row]
             for row in ids.tolist()]
    return ids, names


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def image_quality(ref_logits: np.ndarray, cand_logits: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean top-5 overlap (|top5_ref ∩ top5_cand| / 5) and mean
    KL(ref ‖ cand) in nats."""
    if ref_logits.shape != cand_logits.shape:
        raise UserError(f"reference logits {ref_logits.shape} and candidate logits "
                        f"{cand_logits.shape} differ: not the same classes or items")
    k = min(5, ref_logits.shape[-1])
    ref5, cand5 = topk(ref_logits, k), topk(cand_logits, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(ref5, cand5, strict=True)]
    lp, lq = log_softmax(ref_logits.astype(np.float64)), log_softmax(cand_logits.astype(np.float64))
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    return {"top1_agreement": float(np.mean(ref_logits.argmax(-1) == cand_logits.argmax(-1))),
            "top5_overlap": float(np.mean(overlap)), "kl_divergence": max(kl, 0.0)}


class ImageClassificationTask:
    name = "image-classification"
    quality_name = "top1_agreement"
    primary_output = "logits"
    takes_images = True
    item_noun = "images"
    serve_output = "logits"
    generates = False
    votes = False
    bounds_recall = False
    default_max_drop = 0.01
    default_n_eval: int | None = None
    latency_runs = 50
    max_eval_batch: int | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return ImageLogits(model)

    def evaluate(self, runner: Any, tokenizer: Any, texts: Sequence[Any], batch_size: int,
                 max_length: int = 0) -> Results:
        """Run every item in input order; `tokenizer` is the ImagePreprocess."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if not len(texts):
            raise UserError("no images to run: the data is empty")
        parts = [runner(tokenizer(texts[i:i + batch_size]))
                 for i in range(0, len(texts), batch_size)]
        out: Results = {"logits": np.concatenate(parts).astype(np.float32)}
        labels = item_labels(texts)
        if labels is not None:
            out["labels"] = labels
        return out

    def compare(self, reference: Results, candidate: Results) -> dict[str, float]:
        out = image_quality(reference["logits"], candidate["logits"])
        if "labels" in reference:
            labels = reference["labels"]
            out["accuracy"] = float(np.mean(candidate["logits"].argmax(-1) == labels))
            out["reference_accuracy"] = float(np.mean(reference["logits"].argmax(-1) == labels))
        return out

    def drop(self, quality: dict[str, float]) -> float:
        return 1.0 - quality["top1_agreement"]


register_task(ImageClassificationTask())
