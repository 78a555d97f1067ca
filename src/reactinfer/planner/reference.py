"""The original model a run judges every candidate against: the model as the user runs
it. A model loaded from an engine's own file (a GGUF) is that file as its engine runs it
(`Backend.as_is`), not the torch de-quantization of its weights: on smollm2's Q4_1 file
the two differ by a perplexity ratio of about 1.009, which would eat most of a 1% bound
before any candidate changed a thing. Anything else is the torch model itself."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..core.backend import list_backends
from .actions import Candidate

if TYPE_CHECKING:
    from ..core.handle import ModelHandle
    from .builder import Builder


def reference(loaded: ModelHandle, builder: Builder) -> tuple[Candidate, ModelHandle]:
    """The original's candidate and model: `loaded`'s engine file run as is where a
    backend runs it (the first that does, by name), else `loaded` on torch."""
    for name, backend in sorted(list_backends().items()):
        opts = backend.as_is(loaded)
        if opts is not None:
            cand = Candidate(backend=name, options=json.dumps(opts, sort_keys=True))
            return cand, builder.build(cand)
    return Candidate(), loaded


def as_run(cand: Candidate) -> str:
    """How the original runs, for the baseline's Thought ('' on torch)."""
    if cand == Candidate():
        return ""
    return (f" (as its own file runs on {cand.backend}: {cand.describe()}; every candidate's "
            "quality is judged against that, not the torch weights)")
