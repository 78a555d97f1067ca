"""Tasks: embedding, causal-lm, classification."""
from .base import get_task, iter_batches, tokenize

__all__ = ["get_task", "iter_batches", "tokenize"]
