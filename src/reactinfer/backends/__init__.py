"""Backends, one small module each; each registers itself on import.

Importing a backend module is cheap: its engine (onnxruntime, llama_cpp) is imported
only when it prepares a runner.
"""
from . import torch_eager  # noqa: F401


def to_backend(handle, name: str, **options):  # type: ignore[no-untyped-def]
    """Run `handle` on backend `name` with `options` (checked when the runner is prepared)."""
    from ..core.backend import get_backend

    get_backend(name)
    return handle.derive(backend=name, backend_options=options)
