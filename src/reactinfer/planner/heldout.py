"""Held-out items the search never judged on: for the final re-measure and the repair's
check of its pick.

The search chooses its best among many trials on its own held-out items, so its figures
for the one chosen lean optimistic (the winner's curse), and a pick near the bound on
them is often outside it on the next sample. Where the data holds more held-out items
than the search uses (the built-in corpus's eval part holds about 1,900 texts; the search
judges on the first 1,000 for embeddings, 400 otherwise), the items after the search's
are the check.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..data import items_for

if TYPE_CHECKING:
    from ..core.handle import ModelHandle


class HeldOutHost(Protocol):
    """What these need of the planner (loop.Planner is one)."""

    s: Any  # PlanSettings
    base: ModelHandle
    task: Any  # the model's Task
    texts: Sequence[Any]  # the held-out items the search judges on
    memo: dict[Any, Any]  # what a run computes once

    def compare(self, reference: dict[str, Any], results: dict[str, Any],
                items: Sequence[Any]) -> dict[str, Any]: ...


def confirm_items(planner: HeldOutHost, n: int) -> tuple[list[Any], bool]:
    """Up to `n` held-out items, and whether the search never judged on them: the items
    after the search's where the data has at least half of `n` of them, else the
    search's own."""
    s = planner.s
    used = len(planner.texts)
    more = items_for(planner.base, "eval", s.data, used + n)[used:]
    if len(more) >= max(10, n // 2):
        return more, True
    return items_for(planner.base, "eval", s.data, n), False


def unseen_quality(planner: HeldOutHost, handle: ModelHandle) -> dict[str, Any] | None:
    """`handle`'s quality against the original on the items the re-measure will use, when
    the search never judged on them (None otherwise). The original's outputs on them are
    computed once per run."""
    items, unseen = confirm_items(planner, planner.s.confirm_n_eval or len(planner.texts))
    if not unseen:
        return None
    task, bs = planner.task, planner.s.batch_size
    key = ("unseen-reference", len(items))
    ref = planner.memo.get(key)
    if ref is None:
        base = planner.base
        ref = planner.memo[key] = task.evaluate(base.runner(), base.tokenizer, items, bs,
                                                base.max_length)
    out = task.evaluate(handle.runner(), handle.tokenizer, items, bs, handle.max_length)
    return planner.compare(ref, out, items)
