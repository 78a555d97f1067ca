"""How a model that generates is measured in a trial: only what decides something.

Its speed is generation as served (genspeed.py), so the batch-1 latency runs decide
nothing and are not run. Its quality pass (perplexity ratio and greedy-token agreement
against the original, the one pass that also gives the scoring figures) is sized in
tokens of held-out text, not in texts and not to the budget: the same fixed amount for
every model and budget, enough to tell the GGUF formats apart. What that resolves is
the 95% interval each trial records (`quality["ci95"]`, paired per-text differences,
tasks/stats.py), which the report prints beside the ratio.

On smollm2's built-in held-out texts (~30 tokens each) 2,048 tokens are 71 texts, and
against its packaged Q4_1 file they tell the formats apart (95% intervals): q8_0 0.999
[0.994, 1.004], q6_k 0.999 [0.989, 1.009], q4_k_m 1.084 [1.059, 1.109], q4_0 1.253
[1.184, 1.325]; a 1% bound is decided at about ±0.5% near 1 (q8_0's interval).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

QUALITY_TOKENS = 2048  # tokens of held-out text per trial (a text scores all but its first)
MIN_TEXTS = 10  # the planner's floor: a mean over fewer texts is not a figure


def judged_as_served(task: Any) -> bool:
    """Whether trials of this task's models skip the batch-1 latency runs and size their
    quality pass in tokens (a model that generates: its speed is generation)."""
    return bool(getattr(task, "generates", False))


def text_tokens(tokenizer: Any, texts: Sequence[Any], max_length: int) -> list[int]:
    """Each text's scored tokens as the quality pass sees them (cut at `max_length`)."""
    return [min(len(tokenizer(str(t))["input_ids"]), max_length) for t in texts]


def quality_texts(texts: Sequence[Any], tokenizer: Any, max_length: int,
                  tokens: int = QUALITY_TOKENS) -> tuple[list[Any], int]:
    """The first texts that hold at least `tokens` tokens (at least MIN_TEXTS of them,
    all when they hold fewer), and how many tokens they hold."""
    total = n = 0
    for text in texts:  # tokenized one by one: the texts after the last are not needed
        n += 1
        total += text_tokens(tokenizer, [text], max_length)[0]
        if total >= tokens and n >= MIN_TEXTS:
            break
    return list(texts[:n]), total
