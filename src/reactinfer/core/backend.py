"""The backend protocol and registry (DESIGN.md, "How a backend plugs in").

A backend turns a ModelHandle into a Runner. A Runner takes one tokenized batch
(numpy int64 arrays: input_ids, attention_mask, maybe token_type_ids) and returns the
task's primary output as a float32 numpy array: sentence embeddings (B, D) for
`embedding`, logits (B, C) for `classification`, logits (B, T, V) for `causal-lm`.
Causal-LM runners also generate greedily (`generate`), and step by step (`decode`):
the logits one token at a time, for sampling and streaming.

Backends register by name; their heavy imports (onnxruntime, llama_cpp) happen inside
`available()` / `prepare()`, so `import reactinfer` never needs them.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .errors import UserError
from .plugins import load_builtin

if TYPE_CHECKING:
    from pathlib import Path

    from .handle import ModelHandle

Batch = dict[str, np.ndarray]


@runtime_checkable
class Runner(Protocol):
    def __call__(self, batch: Batch) -> np.ndarray: ...


# One generation, step by step: yields the last position's logits (V,) after the prompt,
# then after each token the caller sends in (`steps.send(token)`), so the caller picks
# every token (greedy or sampled) and can stream it before the next one is computed.
Decoding = Generator[np.ndarray, int, None]


class GenerativeRunner(Runner, Protocol):
    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of `prompt_ids`: only the new token ids."""
        ...

    def decode(self, prompt_ids: list[int]) -> Decoding:
        """The logits step by step (see `Decoding`)."""
        ...


# What some runners offer beyond the Runner protocol. Callers ask with isinstance against
# these, never getattr by name: a renamed method then fails the protocol tests
# (tests/unit/test_runner_protocols.py) instead of silently dropping the capability.

@runtime_checkable
class ScoringRunner(Protocol):
    """Scores a causal LM in the engine: per position (B, T-1), the NLL of the next token
    and the argmax, with no (B, T, V) logits (tasks/causal_lm.next_token_scores)."""

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class StepDecodingRunner(Protocol):
    """Offers a continuous-batching decode engine: `slots` sequences decoded together, one
    step at a time, of at most `step_tokens` tokens per step; sequences join and leave
    between steps (start / can_start / feed / step / release / running; see
    backends/llamacpp_engine.DecodeEngine). The server batches generations on it; a
    generative runner without one serves one request at a time. The engine may plan
    fewer slots and a shorter context per sequence than asked, to fit its KV cache in
    `kv_memory_gb` (default: a share of the memory available); it says so in `kv_plan`."""

    def decode_engine(self, slots: int, step_tokens: int = 512,
                      kv_memory_gb: float | None = None,
                      context: int | None = None, flash_attn: str = "auto") -> Any: ...


@runtime_checkable
class ServingContextRunner(Protocol):
    """Says how many tokens (prompt + answer) one served sequence may hold, when that is
    less than the model's own limit (a KV cache shared by the engine's slots)."""

    @property
    def serve_context(self) -> int: ...


def decode_by_recompute(runner: Runner, prompt_ids: list[int]) -> Decoding:
    """`Decoding` for a runner without a KV cache (an exported graph): every step runs
    the whole sequence so far and keeps the last position's logits."""
    ids = list(prompt_ids)
    while True:
        x = np.asarray([ids], dtype=np.int64)
        tok = yield runner({"input_ids": x, "attention_mask": np.ones_like(x)})[0, -1]
        ids.append(int(tok))


def greedy_tokens(steps: Decoding, max_new_tokens: int, suppress: int | None = None
                  ) -> list[int]:
    """Exactly `max_new_tokens` greedy tokens from `steps`, never `suppress` (the end of
    sequence: a benchmark's answer has a fixed length, as torch's min_new_tokens gives)."""
    out: list[int] = []
    logits = next(steps)
    while True:
        if suppress is not None:
            logits = logits.copy()
            logits[suppress] = -np.inf
        out.append(int(np.argmax(logits)))
        if len(out) == max_new_tokens:
            steps.close()
            return out
        logits = steps.send(out[-1])


@dataclass(frozen=True)
class EngineConfig:
    """One way a backend runs some tasks: a precision (number format) and the backend
    options that select it, with the facts that decide where it is offered. Each backend
    declares its own (`Backend.engine_configs`); `react bench --backend auto` measures them
    (measure/choose.py) and the planner's engine and number-format actions are built from
    them (planner/catalogue.py), so the two always offer the same ones.

    `format` is the number format it computes in (fp32, bf16, fp16, int8, or the engine's
    own, e.g. GGUF q8_0); a backend declares its preferred form of a format first (the
    planner's format actions use it). `native`: half precisions it needs in the CPU's ISA
    (hardware.NATIVE_HALF): offered only where the hardware profile has them, never
    emulated. `slow`: why auto selection measures it only when asked for (`include`); the
    planner budgets for it by `cost` instead (what a first trial costs, in measurements).
    `family` and `level`: the planner escalates a family, level n only after level n-1 paid.
    """

    backend: str
    name: str  # how the planner and reports call it, e.g. "openvino int8"
    tasks: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    format: str = "fp32"
    lossless: bool = False  # the same outputs as the torch model, to float rounding
    native: tuple[str, ...] = ()
    calibrated: bool = False  # needs calibration data (the calibration split)
    fallback: str | None = None  # option keeping named layers in higher precision
    family: str = ""
    level: int = 0
    cost: float = 1.0
    slow: str = ""

    def missing_native(self, isa: dict[str, bool]) -> str | None:
        """The half precision this configuration needs and `isa` lacks, or None."""
        from .hardware import native_flags

        return next((fmt for fmt in self.native if not native_flags(isa, fmt)), None)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts, as `react backends` lists them."""
        return {"name": self.name, "tasks": list(self.tasks), "options": dict(self.options),
                "format": self.format, "lossless": self.lossless, "native": list(self.native),
                "calibrated": self.calibrated, "fallback": self.fallback, "slow": self.slow}


class Backend:
    """Base class of every backend. A subclass sets `name` and `description` and implements
    `prepare`; everything else has a default, so callers never probe with getattr.

    - `available` / `why_unavailable`: whether its engine is importable (and a device is
      present), and what to install when it is not.
    - `capabilities`: the tasks it runs and its options (name -> kind or choices).
    - `engine_configs`: the precisions it runs for each task (EngineConfig), which automatic
      selection and the planner try; `not_for`: task -> why it declares none for a task it
      runs (a report says why it was not tried).
    - `precision_option`: the option that selects the number format, if any.
    - `writes_files`: `convert` writes engine files (ONNX graph, GGUF) into a work dir.
    - `convert`: turn a handle into one this backend runs, once. The default suits
      backends that run the torch model as it is: it checks the options and records them.
    - `rank_layers` (backends with a layer fallback option): the layers a conversion with
      those options quantizes, by how much each hurts; `layer_ranking` says how, in words.
    - `as_is`: the options that run the handle's own engine file unchanged, if it has one.
    - `build_cost`: what a conversion with those options costs, in float conversions of
      the same model to this engine (the planner times those and predicts the rest);
      `build_s_per_gb`: or, for a build that is no such multiple, a prior in seconds per
      GB of the model.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    precision_option: ClassVar[str | None] = None
    writes_files: ClassVar[bool] = False
    layer_ranking: ClassVar[str] = ""
    not_for: ClassVar[dict[str, str]] = {}

    def available(self) -> bool:
        return True

    def why_unavailable(self) -> str:
        return ""

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["embedding", "classification", "causal-lm"], "options": {},
                "files": [], "needs_torch_at_run_time": True}

    def engine_configs(self) -> list[EngineConfig]:
        return []

    def supports(self, handle: ModelHandle) -> bool:
        return handle.model is not None

    def convert(self, handle: ModelHandle, workdir: Path | None, **opts: Any) -> ModelHandle:
        if handle.model is None:
            raise UserError(f"backend {self.name!r} needs the torch model; this handle runs on "
                            f"{handle.backend!r} from {', '.join(handle.files)}")
        unknown = set(opts) - set(backend_options(self))
        if unknown:
            raise UserError(f"{self.name} backend: unknown option(s) {sorted(unknown)}; known: "
                            f"{', '.join(sorted(backend_options(self)))}")
        return handle.derive(backend=self.name, backend_options=opts)

    def prepare(self, handle: ModelHandle, **opts: Any) -> Runner:
        raise NotImplementedError(f"backend {self.name!r} does not implement prepare()")

    def as_is(self, handle: ModelHandle) -> dict[str, Any] | None:
        """The options with which this backend runs `handle`'s own engine file as it is
        (a GGUF on llama.cpp), or None. The planner takes that run as the original model:
        the reference every candidate's quality is judged against."""
        return None

    def build_cost(self, **opts: Any) -> tuple[float, float]:
        """What converting a model with `opts` costs, in float conversions of the same model
        to this engine (planning only): (the least, in full). The least is what is left when
        the conversion does less to meet a deadline (core/deadline.py), e.g. tunes fewer
        settings; a conversion with nothing to cut gives the same number twice."""
        return 1.0, 1.0

    def build_s_per_gb(self, **opts: Any) -> float | None:
        """For a build that is not a multiple of a float conversion (llama.cpp's quantizer
        reads a model's weights once and writes them in another type): its prior cost in
        seconds per GB of the original model's size, which the planner uses until it has
        timed such a build of this engine in the run; None: `build_cost` predicts it."""
        return None

    def rank_layers(self, handle: ModelHandle, items: Sequence[Any],
                    **opts: Any) -> dict[str, float]:
        """Layer name → sensitivity (higher: keep it in higher precision first) of the torch
        `handle` converted with `opts`, measured on calibration `items`."""
        raise UserError(f"backend {self.name!r} cannot rank layers for a precision fallback")


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend takes an instance of a Backend subclass "
                        f"(reactinfer.core.backend.Backend), not {type(backend).__name__}")
    if backend.name in _BACKENDS and _BACKENDS[backend.name] is not backend:
        raise ValueError(f"backend {backend.name!r} is registered twice")
    _BACKENDS[backend.name] = backend
    return backend


def backend_options(backend: Backend) -> dict[str, Any]:
    """The options `backend` takes (name -> kind or choices), from its capabilities()."""
    return dict(backend.capabilities().get("options", {}))


def check_options(backend: str, opts: dict[str, Any], known: Sequence[str],
                  choices: dict[str, Sequence[str]], at_least_one: Sequence[str]) -> None:
    """Refuse, in one line each, an option `backend` does not know, a value outside its
    choices, and a count below 1."""
    unknown = set(opts) - set(known)
    if unknown:
        raise UserError(f"{backend} backend: unknown option(s) {sorted(unknown)}; known: "
                        f"{', '.join(known)}")
    for key, allowed in choices.items():
        if key in opts and opts[key] not in allowed:
            raise UserError(f"{backend} {key} {opts[key]!r} is not one of {', '.join(allowed)}")
    for key in at_least_one:
        if opts.get(key) is not None and int(opts[key]) < 1:
            raise UserError(f"{backend} {key} must be at least 1, got {opts[key]}")


def engine_configs(task: str | None = None) -> list[EngineConfig]:
    """Every registered backend's declared configurations (for `task`, default: any), in
    registry order, available here or not."""
    return [c for b in list_backends().values() for c in b.engine_configs()
            if task is None or task in c.tasks]


def list_backends() -> dict[str, Backend]:
    load_builtin("backends")  # cheap: each backend's engine loads only in prepare()
    return dict(sorted(_BACKENDS.items()))


def get_backend(name: str) -> Backend:
    backends = list_backends()
    if name not in backends:
        raise UserError(f"unknown backend {name!r}; known: {', '.join(backends)}")
    backend = backends[name]
    if not backend.available():
        raise UserError(f"backend {name!r} is not available here: {backend.why_unavailable()}")
    return backend


def module_available(module: str) -> Callable[[], bool]:
    """An `available()` for backends that only need an importable module."""

    def check() -> bool:
        return importlib.util.find_spec(module) is not None

    return check
