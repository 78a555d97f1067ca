"""Real-time serving: OpenAI and KServe v2 endpoints over a dynamic batcher with deadlines,
load shedding, a response cache and the reactive variant ladder.

    from reactinfer.serving import ServeConfig, create_app, serve
    serve(["minilm"], port=8000, slo_ms=100)
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "ServeConfig": "reactinfer.serving.config:ServeConfig",
    "create_app": "reactinfer.serving.app:create_app",
    "serve": "reactinfer.serving.server:serve",
    "run_loadtest": "reactinfer.serving.loadtest:run_loadtest",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
