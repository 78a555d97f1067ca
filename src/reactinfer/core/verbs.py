"""Public verbs that share their name with a subpackage (`reactinfer.bench`,
`reactinfer.compress`, `reactinfer.serve`).

Python binds `reactinfer.bench` to the *subpackage* whenever it is first imported, which
would shadow the lazily exported *function* of the same name, depending on import order.
Making the subpackage callable keeps `reactinfer.bench(...)` working either way, without
importing heavy modules at `import reactinfer`.
"""
from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(package: str, function: str) -> None:
    """Calling module `package` calls its attribute `function`."""

    class _Verb(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function)(*args, **kwargs)

    sys.modules[package].__class__ = _Verb
