"""Verbs whose public form takes anything `load` takes, over a library function that takes
a ModelHandle (core sits below the loaders, so the wrapping lives here, in the facade)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def compress(model: Any, configs: Any | Iterable[Any], **load_kw: Any) -> Any:
    """Apply transform configs in order and return the new ModelHandle (the input is left
    unchanged). `model` is anything `reactinfer.load` takes (a name or path, a ModelHandle,
    or a torch.nn.Module with `task=` and `tokenizer=` / `preprocess=`)."""
    from .core.transform import compress as apply
    from .models import load

    return apply(load(model, **load_kw), configs)
