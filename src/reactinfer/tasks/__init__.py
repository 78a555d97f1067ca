"""Tasks: embedding, causal-lm, classification."""
from .base import get_task, iter_batches, recall_floor, tokenize, within_bound

__all__ = ["get_task", "iter_batches", "recall_floor", "tokenize", "within_bound"]
