"""Real-time serving: OpenAI and KServe v2 endpoints over a dynamic batcher with deadlines,
load shedding, a response cache and the reactive variant ladder.

    from reactinfer.serve import ServeConfig, create_app, serve
    serve(["minilm"], port=8000, slo_ms=100)
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "ServeConfig": "reactinfer.serve.config:ServeConfig",
    "create_app": "reactinfer.serve.app:create_app",
    "serve": "reactinfer.serve.server:serve",
    "run_loadtest": "reactinfer.serve.loadtest:run_loadtest",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


from ..core.verbs import make_callable  # noqa: E402

make_callable(__name__, "serve")  # `reactinfer.serve(models, ...)` (core/verbs.py)
