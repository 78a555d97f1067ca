"""GGUF types made by llama.cpp's own quantizer (`llama_model_quantize`, as llama-quantize
runs it): the k-quants (Q6_K, Q5_K_M, Q4_K_M), IQ4_NL, and q8_0 / q4_0 with llama.cpp's
per-tensor choices (e.g. a 4-bit file keeps its output matrix at Q6_K), which gguf-py's
numpy quantizer (gguf_convert.py) does not make.

The source is the best file at hand, in this order:
1. the GGUF the model was loaded from, when it holds float weights (F32 / F16 / BF16);
2. an F16 GGUF written from the torch weights (gguf_convert), once per model object;
3. a quantized GGUF re-quantized (`allow_requantize`): the last resort, labelled as such,
   because its rounding errors add up.
No importance matrix: llama-cpp-python exposes the quantizer's `imatrix` input but no way
to compute one (llama-imatrix is a separate program that collects activations through an
eval callback), so the candidates are quantized without one.
"""
from __future__ import annotations

import ctypes
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import UserError
from .gguf_convert import convert_to_gguf

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

# outtype → llama.cpp's ftype name (LLAMA_FTYPE_MOSTLY_<name>)
LLAMA_QUANTS = {"q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q4_k_m": "Q4_K_M",
                "iq4_nl": "IQ4_NL", "q4_0": "Q4_0"}
_FLOAT_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}  # general.file_type of float files

# F16 sources written from torch weights, by model object: every quantized type of one
# model is made from the same file, written once (weak: a dropped model frees its entry)
_F16: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()
# (source file, outtype) → the quantized file: a candidate built again is not re-quantized
_MADE: dict[tuple[str, str], Path] = {}


def gguf_file_type(path: Path) -> str:
    """'F32', 'F16', 'BF16', or 'quantized (<ftype number>)' from the file's header."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    ftype = int(field.contents()) if field is not None else -1
    return _FLOAT_FILE_TYPES.get(ftype, f"quantized (ftype {ftype})")


def quant_source(handle: ModelHandle, unchanged: Path | None, scratch: Path
                 ) -> tuple[Path, str]:
    """The file to quantize from, and how it was had (for the manifest and the report)."""
    if unchanged is not None and gguf_file_type(unchanged) in _FLOAT_FILE_TYPES.values():
        return unchanged, f"the source GGUF ({gguf_file_type(unchanged)})"
    if handle.model is not None:
        path = _F16.get(handle.model)
        if path is None or not path.is_file():
            path = convert_to_gguf(handle, scratch / "source-f16.gguf", "f16")
            _F16[handle.model] = path
        return path, "an F16 GGUF written from the torch weights"
    if unchanged is not None:
        return unchanged, (f"re-quantized from the {gguf_file_type(unchanged)} source GGUF "
                           "(last resort: no float weights at hand)")
    raise UserError("quantizing with llama.cpp needs a GGUF file or the torch model; this "
                    "handle has neither")


def quantize_gguf(source: Path, out: Path, outtype: str, threads: int | None = None) -> Path:
    """`source` quantized to `outtype` by llama.cpp into `out` (reused if made before)."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    if outtype not in LLAMA_QUANTS:
        raise UserError(f"llama.cpp quantizer type {outtype!r} is not one of "
                        f"{', '.join(LLAMA_QUANTS)}")
    key = (str(source.resolve()), outtype)
    made = _MADE.get(key)
    if made is not None and made.is_file():
        return made
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMA_QUANTS[outtype]}")
    params.allow_requantize = gguf_file_type(source) not in _FLOAT_FILE_TYPES.values()
    if threads:
        params.nthread = int(threads)
    with suppress_stdout_stderr(disable=False):  # it logs every tensor to stderr
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source.name} to {outtype} ({rc})")
    _MADE[key] = out
    return out


def repacks_at_load() -> bool:
    """Whether this llama.cpp build repacks weights (Q4_0, IQ4_NL, ...) into its CPU
    layouts when it loads them (GGML's CPU "REPACK" extra buffer type, used by default):
    a fact the planner's priors and report state, not an option to set."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return "REPACK = 1" in info and bool(llama_cpp.llama_model_default_params().use_extra_bufts)
