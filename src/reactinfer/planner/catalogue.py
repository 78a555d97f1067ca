"""The default action catalogue. Actions whose transform or backend is not available here
are left out (with the reason kept in `unavailable_actions()`), so the planner only ever
tries what this installation can do; `for_model` leaves out, before the search, the
structural actions the model's family adapter does not allow (with the reason, for the
report), so a model of any family still gets every engine and number format.

The engine actions and the engine forms of the number-format actions are built from what
each backend declares it runs (Backend.engine_configs), the same declarations
`react bench --backend auto` measures (measure/choose.py): the two never disagree."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..core.backend import EngineConfig, engine_configs, list_backends
from ..core.errors import UserError
from ..core.hardware import NATIVE_HALF, HardwareProfile, hardware_profile
from ..core.transform import config_from_dict
from ..models.arch import family_refuses
from .actions import (
    TORCH_BACKENDS,
    Action,
    Candidate,
    Expect,
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


# every plan starts on the reference engine (eager PyTorch): it is the baseline, not an action
REFERENCE = Candidate().backend
# llama.cpp's GGUF types, served: generation reads every weight once per step, so fewer
# bits pay, and the types llama.cpp repacks into its CPU layouts at load (Q4_0, IQ4_NL,
# where the build has REPACK) run its fastest kernels. Priors only order the trials;
# every type is measured here.
_GGUF_PRIOR = {"source": ("its packaged", 1.0), "q8_0": ("q8_0", 1.4), "q6_k": ("Q6_K", 1.5),
               "q5_k_m": ("Q5_K_M", 1.6), "q4_k_m": ("Q4_K_M", 1.8),
               "iq4_nl": ("IQ4_NL", 1.9), "q4_0": ("q4_0", 2.0)}
_REPACKED = ("q4_0", "iq4_nl")


def _gguf_expect(c: EngineConfig) -> Expect:
    quant, gain = _GGUF_PRIOR.get(c.format, (c.format, 1.2))
    return _expect_llamacpp(quant, gain, c.format in _REPACKED)


# How an engine's configurations are expected to pay, by backend; the rest from the engine
# and number-format priors (actions.candidate_speed)
_ENGINE_EXPECT: dict[str, Callable[[EngineConfig], Expect]] = {"llama.cpp": _gguf_expect}


def engine_action(c: EngineConfig) -> Action:
    """The planner action that switches a candidate to engine configuration `c`."""
    expect = _ENGINE_EXPECT.get(c.backend, lambda _: _expect_engine_format)(c)
    return Action(c.name, c.family or c.backend, expect, backend=(c.backend, dict(c.options)),
                  tasks=c.tasks, lossless=c.lossless, level=c.level, cost=c.cost,
                  fallback=c.fallback)


def engine_actions() -> list[Action]:
    """One action per declared engine configuration but the reference's, lossless first."""
    configs = [c for c in engine_configs() if c.backend != REFERENCE]
    return [engine_action(c) for c in sorted(configs, key=lambda c: not c.lossless)]


def _forms(fmt: str, tasks: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each engine's form of number format `fmt` for `tasks`: its first declared
    configuration in that format (a backend declares its preferred form first)."""
    forms: dict[str, dict[str, Any]] = {}
    for c in engine_configs():
        if c.backend != REFERENCE and c.format == fmt and set(c.tasks) & set(tasks):
            forms.setdefault(c.backend, dict(c.options))
    return forms


def catalogue() -> list[Action]:
    text = ENCODERS + LM  # the number-format actions' tasks (Action's default)
    return [
        # CNNs: BatchNorm folds into the convolutions, exactly and for free: before anything
        Action("fold BatchNorm", "fold-bn", _expect_fold_bn, steps=({"type": "fold_bn"},),
               tasks=IMAGE, lossless=True, free=True),
        # engines, each at the precisions it declares: lossless choices first
        *engine_actions(),
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
        Action("int8 dynamic (per-channel)", "int8", _expect_engine_format,
               steps=({"type": "QuantizeDynamicInt8", "per_channel": True},), runtime=True,
               formats=_forms("int8", text), fallback="fp32_layers"),
        Action("torch weight-only int8", "torch-woq", _expect_int8("PyTorch weight-only"),
               steps=({"type": "QuantizeWeightOnly", "bits": 8},), runtime=True, tasks=LM),
        Action("bf16", "half", _expect_engine_format,
               steps=({"type": "CastHalf", "dtype": "bf16"},), runtime=True,
               formats=_forms("bf16", text)),
        Action("fp16", "half", _expect_engine_format,
               steps=({"type": "CastHalf", "dtype": "fp16"},), runtime=True, level=1,
               formats=_forms("fp16", text)),
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
    missing = _missing_native(*a.backend, hw) if a.backend is not None else None
    if missing:
        return f"no native {missing} on this CPU (no {' or '.join(NATIVE_HALF[missing])})"
    return None


def _missing_native(backend: str, options: dict[str, Any], hw: HardwareProfile) -> str | None:
    """The half precision the declared configuration with these options needs and this CPU
    lacks (OpenVINO refuses bf16 on a CPU without avx512_bf16 / amx_bf16 rather than
    emulate it slowly), or None."""
    for c in engine_configs():
        if c.backend == backend and c.options == options:
            return c.missing_native(hw.isa)
    return None


def _for_hardware(a: Action, hw: HardwareProfile) -> Action:
    """Drop the forms of a format action this CPU cannot run (OpenVINO's bf16 needs native
    bf16): the action then does not apply on that engine."""
    keep = {engine: opts for engine, opts in a.formats.items()
            if _missing_native(engine, opts, hw) is None}
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
        return ("the original is an engine file (an ONNX file, or a GGUF as llama.cpp runs "
                "it): transforms need the torch model; give the torch module or HF directory")
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
