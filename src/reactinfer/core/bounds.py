"""Bounds on the numbers users give, checked in one place.

Every command and API function that takes one of these calls the same check before any
work starts, so `react optimize --max-drop 2` and `react bench --backend auto --max-drop 2`
are refused alike, at once, in the same words. The message names the CLI flag (what a
command-line user typed; API users recognise the keyword in it).
"""
from __future__ import annotations

import math

from .errors import UserError


def check_max_drop(value: float | None, flag: str = "--max-drop") -> None:
    """A relative quality drop against the original: 0 means identical, 0.01 allows 1 %.
    1 or more would accept any model at all, and a negative bound none."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or math.isnan(value) or not 0 <= value < 1:
        raise UserError(f"{flag} must be in [0, 1): a relative quality drop, e.g. 0.01 "
                        f"allows 1 %; got {value}")


def check_at_least(flag: str, value: float | None, minimum: float = 1) -> None:
    """`value` (None: not given, the default applies) must be at least `minimum`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or math.isnan(value) or value < minimum:
        raise UserError(f"{flag} must be at least {minimum:g}, got {value}")
