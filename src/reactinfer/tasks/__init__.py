"""Tasks: embedding, causal-lm, classification, image-classification."""
from .base import (
    bound_decided,
    count_tokens,
    eval_batch,
    get_task,
    iter_batches,
    quality_drop,
    recall_floor,
    sample_batch,
    tokenize,
    within_bound,
)

__all__ = ["bound_decided", "count_tokens", "eval_batch", "get_task", "iter_batches",
           "quality_drop", "recall_floor", "sample_batch", "tokenize", "within_bound"]
