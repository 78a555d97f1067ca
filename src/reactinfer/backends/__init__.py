"""Backends, one small module each; each registers itself on import.

Importing a backend module is cheap: its engine (onnxruntime, openvino, llama_cpp) is imported
only when it prepares a runner. `to_backend(handle, name, **options)` converts a model
for a backend once. Choosing and tuning a backend by measurement lives one layer up, in
`reactinfer.measure` (`choose_backend`, `tune_threads`, `tune_batch_size`).
"""
from . import llamacpp, onnxruntime, openvino, torch_compiled, torch_eager  # noqa: F401
from .convert import to_backend

__all__ = ["to_backend"]
