"""Helpers shared by the compression techniques: checking configs, finding layers by
name, calibration data and passes. Where a family keeps its blocks is models.arch's."""
from __future__ import annotations

import copy
import difflib
import fnmatch
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..core.errors import UserError
from ..models.arch import find_adapter

if TYPE_CHECKING:
    import torch

    from ..core.handle import ModelHandle


def check_fraction(name: str, value: float, what: str) -> None:
    """`value` must lie in (0, 1]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise UserError(f"{name}: {what} must be a fraction in (0, 1], got {value!r}")


def check_choice(name: str, field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise UserError(f"{name}: {field} must be one of {', '.join(map(str, choices))}, "
                        f"got {value!r}")


def check_names(name: str, field: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{name}: {field} must be a list of module names or glob patterns, "
                        f"got {value!r}")


def need_model(handle: ModelHandle, what: str) -> torch.nn.Module:
    if handle.model is None:
        raise UserError(f"{what} needs a torch model; {handle.name} is runtime-only "
                        f"({handle.backend}). Compress before choosing a backend.")
    return handle.model


def clone(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy: handlers never mutate the handle they received."""
    return copy.deepcopy(model)


def linear_at(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """The Linear at `name` (targets come from `linear_names`, so it is one)."""
    module = model.get_submodule(name)
    assert hasattr(module, "in_features"), name  # a Linear or a quantized stand-in
    return cast("torch.nn.Linear", module)


def linear_names(model: torch.nn.Module) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def resolve_names(model: torch.nn.Module, patterns: Sequence[str], candidates: Sequence[str],
                  what: str) -> set[str]:
    """Module names among `candidates` matched by `patterns` (exact names or globs such
    as `*.attention.*`). A pattern that matches nothing is a user error that lists the
    closest names, so a typo never silently quantizes a layer the user meant to keep."""
    chosen: set[str] = set()
    for pat in patterns:
        hits = {c for c in candidates if c == pat or fnmatch.fnmatchcase(c, pat)}
        if not hits:
            close = difflib.get_close_matches(pat, candidates, n=5, cutoff=0.4)
            hint = f"; similar: {', '.join(close)}" if close else \
                f"; e.g. {', '.join(list(candidates)[:4])}"
            raise UserError(f"{what}: no layer named {pat!r} in {type(model).__name__}{hint}")
        chosen |= hits
    return chosen


def set_module(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def calibration_texts(handle: ModelHandle, data: str | None, n: int,
                      part: str = "calibration") -> list[Any]:
    """The items of `part` for `handle`'s model (texts, or images for an image model)."""
    from ..data import items_for

    texts = items_for(handle, part, data, n)
    if not texts:
        raise UserError(f"no {part} items: the data is empty")
    return texts


def model_batches(handle: ModelHandle, texts: Sequence[str], batch_size: int = 16
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized torch batches the HF model's forward accepts."""
    import torch

    from ..tasks import get_task, iter_batches

    tok = handle.tokenizer
    if get_task(handle.task).generates and getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    for _, batch in iter_batches(tok, texts, batch_size, handle.max_length):
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


def run_model(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """One forward pass for calibration; decoders skip building a KV cache."""
    arch = find_adapter(model)
    return model(**batch, **(arch.forward_kwargs() if arch else {}))


def effective_params(model: torch.nn.Module) -> int:
    """Parameters including those held packed by quantized modules (which
    `parameters()` does not list), so a quantized model counts as many as its source."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        w = getattr(m, "weight", None)
        if callable(w) and not isinstance(w, torch.nn.Parameter):  # torch.ao packed Linear
            total += w().numel()
        elif hasattr(m, "qweight") and hasattr(m, "in_features"):  # WeightOnlyLinear
            lin: Any = m  # not a torch.nn.Linear: quantize.py's own module
            total += lin.in_features * lin.out_features
    return total
