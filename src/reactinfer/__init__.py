"""ReAct: make a trained model's inference fast and cheap on the hardware at hand, with
the quality loss measured against the original and bounded.

    import reactinfer as ri
    h = ri.load("minilm")
    report = ri.bench(h, batch_size=32)

Attributes are imported lazily so `import reactinfer` stays fast.
"""
from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "load": "reactinfer.models:load",
    "compress": "reactinfer.core.transform:compress",
    "bench": "reactinfer.bench:bench",
    "Artifact": "reactinfer.core.artifact:Artifact",
    "serve": "reactinfer.serve.server:serve",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
