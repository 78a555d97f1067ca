"""ReAct: make a trained model's inference fast and cheap on the hardware at hand, with
the quality loss measured against the original and bounded.

    import reactinfer as ri
    h = ri.load("minilm")
    report = ri.bench(h, batch_size=32)
    result = ri.optimize("minilm", max_drop=0.01, budget_s=300, out="react-out/minilm")

The verbs are plain functions (`load`, `compress`, `optimize`, `bench`, `serve`); no
subpackage shares their names. They are imported on first use, so `import reactinfer`
stays fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names resolve lazily
    from ._verbs import bench, compress
    from .core.artifact import Artifact
    from .models import load
    from .planner import optimize
    from .serving.server import serve

__version__ = "0.1.0"

_EXPORTS = {
    "load": "reactinfer.models:load",
    "compress": "reactinfer._verbs:compress",
    "optimize": "reactinfer.planner.api:optimize",
    "bench": "reactinfer._verbs:bench",
    "Artifact": "reactinfer.core.artifact:Artifact",
    "serve": "reactinfer.serving.server:serve",
}
__all__ = ["Artifact", "bench", "compress", "load", "optimize", "serve"]  # = _EXPORTS


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
