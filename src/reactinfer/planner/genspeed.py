"""The planner's speed figures for a model that generates: greedy generation as it will
be served, at one stream and at `PlanSettings.streams` (measure/generation.py), on
prompts from the held-out texts. Trials and the final re-measure both take them from
here, so the search and the headline use one definition (objective.py reads them)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..measure.generation import serving_speed

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

PROMPT_TOKENS = 32  # a short chat turn: the figure is about decoding, not prefill


def prompts(planner: Any) -> list[list[int]]:
    """One prompt per stream: the first held-out texts, cut to PROMPT_TOKENS tokens
    (computed once per run: every candidate decodes the very same prompts)."""
    key = ("generation-prompts", planner.s.streams)
    if key not in planner.memo:
        tok = planner.base.tokenizer
        ids = [tok(str(t))["input_ids"][:PROMPT_TOKENS] for t in planner.texts]
        planner.memo[key] = [p for p in ids if len(p) > 1][:planner.s.streams] or [[0, 1]]
    out: list[list[int]] = planner.memo[key]
    return out


def generation_figures(planner: Any, handle: ModelHandle) -> dict[str, Any] | None:
    """Tokens/s at 1 and N streams and TTFT of `handle`, or None for a model that does
    not generate."""
    if not planner.task.generates:
        return None
    return serving_speed(handle.runner(), prompts(planner), planner.s.streams,
                         planner.s.gen_tokens)
