"""Model loading and the built-in zoo."""
from .loaders import load, register_loader, sha256_file
from .zoo import BUILTINS, DEFAULT_MODEL

__all__ = ["BUILTINS", "DEFAULT_MODEL", "load", "register_loader", "sha256_file"]
