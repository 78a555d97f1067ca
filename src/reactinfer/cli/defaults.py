"""Command-line defaults read from the library's own dataclasses (ServeConfig,
PlanSettings), so that a flag's default and the Python API's cannot drift apart."""
from __future__ import annotations

import dataclasses
from typing import Any


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name`."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")
