"""Backends, one small module each; each registers itself on import.

Importing a backend module is cheap: its engine (onnxruntime, llama_cpp) is imported
only when it prepares a runner. `to_backend(handle, name, **options)` converts a model
for a backend once; `choose_backend` measures the candidates and picks one;
`tune_threads` / `tune_batch_size` measure what suits this machine.
"""
from . import llamacpp, onnxruntime, torch_compiled, torch_eager  # noqa: F401
from .convert import to_backend

__all__ = ["choose_backend", "to_backend", "tune_batch_size", "tune_threads"]


def __getattr__(name: str):  # the selection and tuning helpers pull in data and tasks
    if name == "choose_backend":
        from .auto import choose_backend

        return choose_backend
    if name in ("tune_threads", "tune_batch_size"):
        from . import tuning

        return getattr(tuning, name)
    raise AttributeError(f"module 'reactinfer.backends' has no attribute {name!r}")
