"""Backends, one small module each; each registers itself on import.

Importing a backend module is cheap: its engine (onnxruntime, llama_cpp) is imported
only when it prepares a runner.
"""
from . import torch_eager  # noqa: F401
