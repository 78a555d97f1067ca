"""Where core's registries find the built-in plugins.

Core sits below the packages that fill its registries (compression registers transforms,
backends registers backends), so it never imports them as code. Like entry points, it
names them: the first lookup in a registry imports the named package, which registers
its members on import. These names are the only references from core upward.
"""
from __future__ import annotations

import importlib

BUILTIN = {
    "transforms": ("reactinfer.compression",),
    "backends": ("reactinfer.backends",),
    "tasks": ("reactinfer.tasks.embedding", "reactinfer.tasks.causal_lm",
              "reactinfer.tasks.classification", "reactinfer.tasks.image_classification"),
}


def load_builtin(kind: str) -> None:
    """Import the packages that register the built-in `kind` (cheap after the first call)."""
    for module in BUILTIN[kind]:
        importlib.import_module(module)
