"""Real-time serving: OpenAI and KServe v2 endpoints over a dynamic batcher with deadlines,
load shedding, a response cache and the reactive variant ladder.

    from reactinfer.serve import ServeConfig, create_app, serve
    serve(["minilm"], port=8000, slo_ms=100)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServeConfig": "reactinfer.serve.config:ServeConfig",
    "create_app": "reactinfer.serve.app:create_app",
    "serve": "reactinfer.serve.server:serve",
    "run_loadtest": "reactinfer.serve.loadtest:run_loadtest",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reactinfer.serve' has no attribute {name!r}")
    module, _, attr = _EXPORTS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


class _CallableModule(type(importlib)):  # type: ignore[misc]
    """`reactinfer.serve` is both this package and the `serve()` function: importing a
    submodule rebinds the package attribute, so the package itself must be callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .server import serve

        return serve(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
