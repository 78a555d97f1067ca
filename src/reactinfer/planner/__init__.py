"""The ReAct planner: reason → act → observe, to the fastest model within a quality bound."""
from __future__ import annotations

from .._lazy import lazy_getattr

# resolved on first use: `react optimize` builds its parser from planner.settings without
# importing the loop (and torch)
_EXPORTS = {
    "Action": "reactinfer.planner.actions:Action",
    "Candidate": "reactinfer.planner.actions:Candidate",
    "optimize": "reactinfer.planner.api:optimize",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
