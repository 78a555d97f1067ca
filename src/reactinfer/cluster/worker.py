"""What a cluster worker does with a model, independent of Ray.

A worker gets a *model source* (a built-in name or path it loads itself, or a
ModelHandle shipped through the object store), builds the runner once, and turns a
list of texts into one output per text. Outputs are registered per task, so adding
a task means adding an `Output`, not an if-chain. Row failures are isolated: if a
batch fails, its rows are retried one by one and only the failing ones get an error.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..core.backend import GenerativeRunner
from ..core.errors import UserError

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

ModelSource = Any  # str (built-in name, path, artifact dir) or ModelHandle


def resolve(source: ModelSource, threads: int | None = None) -> ModelHandle:
    """The handle for `source`, loaded here if it is a name or path."""
    from ..backends.torch_eager import set_threads
    from ..models import load

    set_threads(threads)  # per-actor thread budget: workers must not oversubscribe cores
    return load(source)


def variant_of(handle: ModelHandle) -> str:
    """Model name + a digest of what makes this variant: source weights, transforms,
    backend and its options. Two runs with equal variants used the same model."""
    what = {"source": handle.source.get("sha256"), "transforms": list(handle.transforms),
            "backend": handle.backend, "options": handle.backend_options}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"{handle.name}@{digest[:12]}"


@dataclass(frozen=True)
class Output:
    """How one task's result is computed per row and stored (an Arrow column, plus any
    columns derived from it)."""

    column: str
    arrow_type: Callable[[], Any]
    # (handle, texts, batch_size) -> list with one value per text
    run: Callable[[ModelHandle, Sequence[str], int], list[Any]]
    # (handle, values with None for failed rows) -> {column: Arrow array}
    derived: Callable[[ModelHandle, list[Any]], dict[str, Any]] | None = None

    def columns(self, handle: ModelHandle, values: list[Any]) -> dict[str, Any]:
        """The output's Arrow columns for one block's values (None: the row failed)."""
        import pyarrow as pa

        out = {self.column: pa.array(values, type=self.arrow_type())}
        if self.derived is not None:
            out.update(self.derived(handle, values))
        return out


def _embed(handle: ModelHandle, texts: Sequence[str], batch_size: int) -> list[Any]:
    from ..tasks.base import run_in_order

    out = run_in_order(handle.runner(), handle.tokenizer, texts, batch_size, handle.max_length)
    return list(out.astype(np.float32))  # (N, D) rows


def _logits(handle: ModelHandle, texts: Sequence[str], batch_size: int) -> list[Any]:
    return _embed(handle, texts, batch_size)  # same ordered run; the runner returns (B, C)


def _generate(handle: ModelHandle, texts: Sequence[str], batch_size: int,
              max_new_tokens: int = 32) -> list[Any]:
    runner, tok = cast(GenerativeRunner, handle.runner()), handle.tokenizer
    out = []
    for t in texts:  # greedy generation is per prompt (the KV cache makes it cheap)
        ids = tok(t, truncation=True, max_length=handle.max_length)["input_ids"]
        out.append(tok.decode(runner.generate(ids, max_new_tokens), skip_special_tokens=True))
    return out


def _top5(handle: ModelHandle, values: list[Any]) -> dict[str, Any]:
    """top5_ids and top5_labels (best first) of each row's logits; None where it failed.
    Labels are the model's class names (given, or the built-in's), or the class ids for a
    model without them."""
    import pyarrow as pa

    from ..models.vision import model_labels
    from ..tasks.image_classification import top_classes

    ok = [i for i, v in enumerate(values) if v is not None]
    ids: list[Any] = [None] * len(values)
    names: list[Any] = [None] * len(values)
    if ok:
        top, top_names = top_classes(np.stack([values[i] for i in ok]),
                                     model_labels(handle))
        for j, i in enumerate(ok):
            ids[i], names[i] = top[j].tolist(), top_names[j]
    return {"top5_ids": pa.array(ids, type=pa.list_(pa.int64())),
            "top5_labels": pa.array(names, type=pa.list_(pa.string()))}


def _list_f32() -> Any:
    import pyarrow as pa

    return pa.list_(pa.float32())


def _string() -> Any:
    import pyarrow as pa

    return pa.string()


OUTPUTS: dict[str, Output] = {
    "embedding": Output("embedding", _list_f32, _embed),
    "classification": Output("logits", _list_f32, _logits),
    # rows are image paths: the model's ImagePreprocess opens them
    "image-classification": Output("logits", _list_f32, _logits, _top5),
    "causal-lm": Output("generated", _string, _generate),
}


def run_rows(handle: ModelHandle, texts: Sequence[str], batch_size: int
             ) -> tuple[list[Any], list[str | None]]:
    """One output per text plus one error (None when fine) per text. A failing batch
    is retried row by row so one bad row never takes its neighbours down."""
    spec = OUTPUTS[handle.task]
    if not texts:
        return [], []
    try:
        return spec.run(handle, texts, batch_size), [None] * len(texts)
    except Exception:  # noqa: BLE001 - isolate below, row by row, and report per row
        values: list[Any] = []
        errors: list[str | None] = []
        for t in texts:
            try:
                values.append(spec.run(handle, [t], 1)[0])
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - a row's failure is data, not a crash
                values.append(None)
                why = str(e) if isinstance(e, UserError) else \
                    f"model failed on this row: {type(e).__name__}: {e}"  # UserError: the row's
                errors.append(why[:500])  # own fault, said plainly (an unreadable image)
        return values, errors


class ModelWorker:
    """A plain class Ray turns into an actor (ray_api.actor_class): one model copy, run
    on given rows. Shard, ensemble and probe runs use it; batch uses Ray Data instead."""

    def __init__(self, source: ModelSource, threads: int | None = None,
                 batch_size: int = 32):
        self.handle = resolve(source, threads)
        self.batch_size = batch_size
        self.variant = variant_of(self.handle)

    def info(self) -> dict[str, Any]:
        import os

        return {"pid": os.getpid(), "variant": self.variant, "task": self.handle.task}

    def probe(self, texts: Sequence[str], repeats: int = 2) -> float:
        """Rows/s on `texts` after one warm-up pass (the capability Cᵢ)."""
        import time

        run_rows(self.handle, texts, self.batch_size)
        t = time.perf_counter()
        for _ in range(repeats):
            run_rows(self.handle, texts, self.batch_size)
        return repeats * len(texts) / (time.perf_counter() - t)

    def run(self, ids: np.ndarray, texts: Sequence[str]) -> dict[str, Any]:
        """Outputs for `texts` (stacked when numeric), with timing: `seconds` of compute
        and `finished` (wall clock, for finish-time balance across workers)."""
        import time

        t = time.perf_counter()
        rows, errors = run_rows(self.handle, texts, self.batch_size)
        values: Any = rows
        if rows and all(isinstance(v, np.ndarray) for v in rows):
            values = np.stack(rows).astype(np.float32)  # (N, D)
        return {"ids": np.asarray(ids), "values": values, "errors": errors,
                "seconds": time.perf_counter() - t, "finished": time.time()}
