"""Model loading and the built-in zoo: one registry of loaders (Hugging Face directories,
GGUF and ONNX files, artifacts, torch modules), each registered on import."""
from . import onnx_file  # noqa: F401  (registers the .onnx loader)
from .loaders import LOAD_KEYS, load, register_loader
from .zoo import BUILTINS, DEFAULT_MODEL

__all__ = ["BUILTINS", "DEFAULT_MODEL", "LOAD_KEYS", "load", "register_loader"]
