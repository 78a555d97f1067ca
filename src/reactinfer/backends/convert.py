"""One entry point from a model to a backend: `to_backend(handle, name, **options)`.

Backends that run from their own files (ONNX Runtime, llama.cpp) export / convert once
here and put the files in `handle.files`, so `Artifact.save` carries them and
`reactinfer.load(artifact)` runs them; torch backends just record the name and options.
The planner treats (backend, options) as one action through this function.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.backend import get_backend
from ..core.errors import UserError

if TYPE_CHECKING:
    from ..core.handle import ModelHandle


_SCRATCH: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory for converted files (ONNX exports, GGUF conversions),
    removed when the process exits: a planner run tries many conversions and must not
    leave model copies behind. Save a handle (Artifact.save) to keep its files."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    if not _SCRATCH:
        atexit.register(remove_scratch)
    _SCRATCH.append(d)
    return d


def remove_scratch() -> None:
    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def to_backend(handle: ModelHandle, name: str, workdir: str | Path | None = None,
               **options: Any) -> ModelHandle:
    """A new handle that runs on backend `name` with `options` (the input is unchanged).

    Options per backend (see `react backends`): torch: threads, device (auto, cpu, cuda);
    torch-compile: threads, mode, device; onnxruntime: precision (fp32, int8-dynamic,
    int8-static, fp16), opt_level, threads, inter_op_threads, provider, reduce_range,
    calibration_items, calibration_method, fp32_layers; openvino: precision (fp32, bf16,
    int8), hint (latency, throughput), threads, calibration_items, fp32_layers,
    overflow_fix; llama.cpp: outtype
    (source, f16, q8_0, q4_0, ...), threads, n_ctx. Files go to `workdir` (by default a
    temporary directory removed when the process exits: save the handle as an artifact to
    keep them).
    """
    from ..models import load

    handle = load(handle)
    backend = get_backend(name)
    if not backend.supports(handle):
        raise UserError(f"backend {name!r} does not run this model ({handle.task}, "
                        f"{handle.source.get('kind')}"
                        f"{', no torch model' if handle.model is None else ''})")
    options = {k: v for k, v in options.items() if v is not None}
    out = None
    if backend.writes_files:
        out = Path(workdir) if workdir is not None else \
            scratch_dir(f"react-{name.replace('.', '')}-")
        out.mkdir(parents=True, exist_ok=True)
    return backend.convert(handle, out, **options)
