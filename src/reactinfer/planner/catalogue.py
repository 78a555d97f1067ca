"""The default action catalogue. Actions whose transform or backend is not available here
are left out (with the reason kept in `unavailable_actions()`), so the planner only ever
tries what this installation can do; `for_model` leaves out, before the search, the
structural actions the model's family adapter does not allow (with the reason, for the
report), so a model of any family still gets every engine and number format."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.backend import list_backends
from ..core.errors import UserError
from ..core.hardware import NATIVE_HALF, HardwareProfile, hardware_profile, native_flags
from ..core.transform import config_from_dict
from ..models.arch import family_refuses
from .actions import (
    TORCH_BACKENDS,
    Action,
    _expect_engine_format,
    _expect_fold_bn,
    _expect_int8,
    _expect_llamacpp,
    _expect_prune,
    _expect_prune_channels,
    _expect_sparse,
)

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

ENCODERS = ("embedding", "classification")
LM = ("causal-lm",)
# image models: only the actions that know convolutions (no head or FFN pruning, no text
# distillation, no dynamic int8 of Linear layers)
IMAGE = ("image-classification",)


def _recovery(steps: int = 300, time_budget_s: float = 150.0) -> dict[str, Any]:
    """Recovery distillation from the original model on the train split (never eval)."""
    return {"type": "Distill", "steps": steps, "time_budget_s": time_budget_s,
            "progress": False}


def catalogue() -> list[Action]:
    return [
        # CNNs: BatchNorm folds into the convolutions, exactly and for free: before anything
        Action("fold BatchNorm", "fold-bn", _expect_fold_bn, steps=({"type": "fold_bn"},),
               tasks=IMAGE, lossless=True, free=True),
        # lossless engine choices first
        Action("onnxruntime fp32", "ort", _expect_engine_format,
               backend=("onnxruntime", {"precision": "fp32"}), tasks=ENCODERS + IMAGE,
               lossless=True),
        Action("openvino fp32", "openvino", _expect_engine_format,
               backend=("openvino", {"precision": "fp32"}), tasks=ENCODERS + IMAGE,
               lossless=True),
        # compiling for each new input shape happens while it is measured: ~3 measurements
        Action("torch.compile", "compile", _expect_engine_format, backend=("torch-compile", {}),
               tasks=ENCODERS, lossless=True, cost=3.0),
        Action("llama.cpp (packaged GGUF)", "llamacpp-source",
               _expect_llamacpp("its packaged", 5.0),
               backend=("llama.cpp", {"outtype": "source"}), tasks=LM),
        Action("llama.cpp q8_0", "llamacpp", _expect_llamacpp("q8_0", 3.0),
               backend=("llama.cpp", {"outtype": "q8_0"}), tasks=LM),
        Action("llama.cpp q4_0", "llamacpp", _expect_llamacpp("q4_0", 4.0),
               backend=("llama.cpp", {"outtype": "q4_0"}), tasks=LM, level=1),
        # structural: physically smaller dense models, with recovery distillation
        Action("prune FFN 25% + distil", "prune-ffn", _expect_prune("FFN neurons", 0.25),
               steps=({"type": "PruneFFN", "keep": 0.75, "importance": "activation"},
                      _recovery())),
        Action("prune FFN 50% + distil", "prune-ffn", _expect_prune("FFN neurons", 0.5),
               steps=({"type": "PruneFFN", "keep": 0.5, "importance": "activation"},
                      _recovery()), level=1),
        Action("prune heads 25% + distil", "prune-attention", _expect_prune("attention heads",
                                                                            0.25),
               steps=({"type": "PruneHeads", "keep": 0.75}, _recovery())),
        Action("drop 1/6 layers + distil", "prune-layers", _expect_prune("layers", 1 / 6),
               steps=({"type": "DropLayers", "keep": 5 / 6}, _recovery())),
        Action("drop 1/3 layers + distil", "prune-layers", _expect_prune("layers", 1 / 3),
               steps=({"type": "DropLayers", "keep": 4 / 6}, _recovery()), level=1),
        # CNNs: channels out, KD from the model they came out of (the student recipe form:
        # a user's CNN cannot be reloaded by name as a teacher), BatchNorm re-estimated
        Action("prune channels 30% + distil + BN recalibration", "prune-channels",
               _expect_prune_channels(0.3),
               steps=({**_recovery(), "lr": 2e-3, "batch_size": 64,
                       "student": ({"type": "PruneChannels", "ratio": 0.3},)},
                      {"type": "RecalibrateBatchNorm"}), tasks=IMAGE),
        # number formats: an engine with its format, and the format for the engine at hand
        # (the trace names the form each trial took)
        Action("onnxruntime int8 dynamic", "ort-int8", _expect_engine_format,
               backend=("onnxruntime", {"precision": "int8-dynamic"}), tasks=ENCODERS,
               fallback="fp32_layers"),
        # static int8 of the convolutions, calibrated on the calibration split (QDQ; weights
        # per channel, the backend's default: an option here would outlive the precision)
        Action("onnxruntime int8 static (per-channel)", "ort-int8", _expect_engine_format,
               backend=("onnxruntime", {"precision": "int8-static"}),
               tasks=IMAGE, fallback="fp32_layers"),
        # NNCF post-training quantization, calibrated on the calibration split
        Action("openvino int8", "openvino-int8", _expect_engine_format,
               backend=("openvino", {"precision": "int8"}), tasks=ENCODERS + IMAGE,
               fallback="fp32_layers"),
        # what int8 leaves in float (attention, norms, kept layers) in bf16: faster where
        # the CPU has bf16 native (benchmarks/results/minilm_limit.md)
        Action("openvino int8 (bf16 rest)", "openvino-int8", _expect_engine_format,
               backend=("openvino", {"precision": "int8", "rest": "bf16"}), tasks=ENCODERS,
               fallback="fp32_layers"),
        Action("openvino bf16", "openvino-bf16", _expect_engine_format,
               backend=("openvino", {"precision": "bf16"}), tasks=ENCODERS + IMAGE),
        Action("int8 dynamic (per-channel)", "int8", _expect_engine_format,
               steps=({"type": "QuantizeDynamicInt8", "per_channel": True},), runtime=True,
               formats={"onnxruntime": {"precision": "int8-dynamic"},
                        "openvino": {"precision": "int8"}},
               fallback="fp32_layers"),
        Action("torch weight-only int8", "torch-woq", _expect_int8("PyTorch weight-only"),
               steps=({"type": "QuantizeWeightOnly", "bits": 8},), runtime=True, tasks=LM),
        Action("bf16", "half", _expect_engine_format,
               steps=({"type": "CastHalf", "dtype": "bf16"},), runtime=True,
               formats={"openvino": {"precision": "bf16"}}),
        Action("fp16", "half", _expect_engine_format,
               steps=({"type": "CastHalf", "dtype": "fp16"},), runtime=True, level=1),
        Action("2:4 sparsity", "sparse", _expect_sparse,
               steps=({"type": "Prune2of4"},), tasks=ENCODERS),
    ]


def _why_unavailable(a: Action, hw: HardwareProfile) -> str | None:
    for step in a.steps:
        try:
            config_from_dict(step)
        except (UserError, TypeError) as e:
            return str(e)
    if a.backend is not None:
        backends = list_backends()
        b = backends.get(a.backend[0])
        if b is None:
            return f"backend {a.backend[0]} is not part of this installation"
        if not b.available():
            return f"backend {a.backend[0]}: {b.why_unavailable()}"
    missing = _not_native(a.backend[1], hw) if a.backend is not None else None
    if missing:
        return f"no native {missing} on this CPU (no {' or '.join(NATIVE_HALF[missing])})"
    return None


def _not_native(options: dict[str, Any], hw: HardwareProfile) -> str | None:
    """The half precision an engine's options ask for (`precision`, or OpenVINO int8's
    `rest`) that this CPU lacks: OpenVINO refuses bf16 on a CPU without avx512_bf16 /
    amx_bf16 rather than emulate it slowly."""
    for key in ("precision", "rest"):
        p = options.get(key)
        if p in NATIVE_HALF and not native_flags(hw.isa, p):
            return str(p)
    return None


def _runs_here(options: dict[str, Any], hw: HardwareProfile) -> bool:
    return _not_native(options, hw) is None


def _for_hardware(a: Action, hw: HardwareProfile) -> Action:
    """Drop the forms of a format action this CPU cannot run (OpenVINO's bf16 needs native
    bf16): the action then does not apply on that engine."""
    keep = {engine: opts for engine, opts in a.formats.items() if _runs_here(opts, hw)}
    return a if keep == a.formats else dataclasses.replace(a, formats=keep)


def default_actions(hw: HardwareProfile | None = None) -> list[Action]:
    """The catalogue's actions this installation and CPU (`hw`, default: this one) can run."""
    hw = hw or hardware_profile()
    return [_for_hardware(a, hw) for a in catalogue() if _why_unavailable(a, hw) is None]


def unavailable_actions(hw: HardwareProfile | None = None,
                        task: str | None = None) -> dict[str, str]:
    """The catalogue's actions (for `task`, default: any) this installation and CPU cannot
    run, and why."""
    hw = hw or hardware_profile()
    return {a.name: why for a in catalogue() if task is None or task in a.tasks
            if (why := _why_unavailable(a, hw)) is not None}


def _why_not_for(a: Action, model: Any) -> str | None:
    """Why a structural action cannot reshape `model` (its steps, and the student recipe a
    distillation step builds, name the family part they reshape), or None. A model with no
    torch weights (a user's ONNX file) takes engine and number-format actions only."""
    torch_only = a.steps or (a.backend is not None and a.backend[0] in TORCH_BACKENDS)
    if model is None and torch_only:
        return ("the model is an engine graph with no torch weights (an ONNX file): "
                "transforms need the torch model; give the torch module or HF directory")
    for step in a.steps:
        for s in (step, *step.get("student", ())):
            part = type(config_from_dict(s)).family_part
            why = family_refuses(model, part) if part else None
            if why:
                return why
    return None


def for_model(actions: Sequence[Action], handle: ModelHandle) -> tuple[list[Action],
                                                                      dict[str, str]]:
    """The actions for `handle`'s task, less the structural ones its family cannot take:
    those are left out before the search, with the reason (name → why)."""
    kept, left_out = [], {}
    for a in actions:
        if handle.task not in a.tasks:
            continue
        why = _why_not_for(a, handle.model)
        if why:
            left_out[a.name] = why
        else:
            kept.append(a)
    return kept, left_out
