"""Verbs whose public form takes anything `load` takes, over a library function that takes
a ModelHandle or a name (core sits below the loaders, so the wrapping lives here, in the
facade): a torch.nn.Module comes with load()'s keyword arguments (`task=`, `tokenizer=`,
`preprocess=`, `labels=`), which are passed to `load`."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _loaded(model: Any, kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`model` loaded when load()'s keyword arguments are among `kw` (they are taken out),
    else as it is; and the rest of `kw`."""
    from .models import LOAD_KEYS, load

    load_kw = {k: kw.pop(k) for k in LOAD_KEYS if k in kw}
    return (load(model, **load_kw) if load_kw else model), kw


def compress(model: Any, configs: Any | Iterable[Any], **load_kw: Any) -> Any:
    """Apply transform configs in order and return the new ModelHandle (the input is left
    unchanged). `model` is anything `reactinfer.load` takes (a name or path, a ModelHandle,
    or a torch.nn.Module with `task=` and `tokenizer=` / `preprocess=`)."""
    from .core.transform import compress as apply
    from .models import load

    return apply(load(model, **load_kw), configs)


def bench(model: Any, **kw: Any) -> dict[str, Any]:
    """Measure `model`: anything `load` takes, a torch.nn.Module with load()'s keyword
    arguments (`task=`, `tokenizer=` / `preprocess=`) too. The other keyword arguments are
    `reactinfer.measure.bench`'s (batch_size, data, n_eval, backend, metric, ...): see its
    docstring."""
    from .measure import bench as measure_bench

    model, kw = _loaded(model, kw)
    return measure_bench(model, **kw)
