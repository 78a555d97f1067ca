"""torch.compile of the task-wrapped module, with dynamic shapes (batches vary in size and
length), on the CPU or a CUDA GPU (`device`, as for the torch backend). Compilation
happens on the first calls; the runner records how long they took in `warmup_s` so
benchmarks report it apart from steady-state speed."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..core.backend import Backend, Batch, EngineConfig, register_backend
from ..core.errors import UserError
from .device import DEVICES, resolve_device
from .torch_eager import TorchRunner, set_threads

if TYPE_CHECKING:
    import torch

    from ..core.handle import ModelHandle

MODES = ("default", "reduce-overhead", "max-autotune")


class CompiledRunner(TorchRunner):
    # what is compiled is the module that returns logits: quality is scored from those, by
    # blocks, so that the eval measures the compiled model's speed, not eager's
    score = None  # type: ignore[assignment]

    def __init__(self, handle: ModelHandle, mode: str, device: str = "cpu"):
        self.mode = mode
        super().__init__(handle, device)
        self.warmup_s = 0.0  # seconds spent in calls that compiled (first call per shape kind)
        self._calls = 0

    def build(self, module: torch.nn.Module) -> torch.nn.Module:
        import torch

        return cast(torch.nn.Module, torch.compile(module, dynamic=True, mode=self.mode))

    def __call__(self, batch: Batch) -> np.ndarray:
        t0 = time.perf_counter()
        out = super().__call__(batch)
        self._calls += 1
        if self._calls <= 2:  # first call compiles; a second may recompile for dynamic dims
            self.warmup_s += time.perf_counter() - t0
        return out


class TorchCompiledBackend(Backend):
    name = "torch-compile"
    description = ("torch.compile (inductor, dynamic shapes; CPU, or CUDA when present); "
                   "compile time reported apart")

    not_for = {"causal-lm": "generation changes the input shape every token, so the graph "
                            "recompiles while it decodes (llama.cpp runs causal LMs)"}

    def available(self) -> bool:
        import shutil

        return shutil.which("cc") is not None or shutil.which("gcc") is not None

    def why_unavailable(self) -> str:
        return "" if self.available() else "torch.compile on CPU needs a C compiler (gcc)"

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["embedding", "classification", "causal-lm"],
                "options": {"threads": "int", "mode": list(MODES), "device": list(DEVICES)},
                "files": [], "needs_torch_at_run_time": True}

    def engine_configs(self) -> list[EngineConfig]:
        # compiling happens while it is measured: ~3 measurements for the planner's budget
        return [EngineConfig(self.name, "torch.compile", ("embedding", "classification"),
                             lossless=True, family="compile", cost=3.0, slow=(
                                 "compiling takes minutes on a small CPU; measure it alone "
                                 "with `react bench MODEL --backend torch-compile` (Python: "
                                 "choose_backend(..., include=['torch-compile']))"))]

    def prepare(self, handle: ModelHandle, threads: int | None = None, mode: str = "default",
                device: str = "auto", **opts: Any) -> CompiledRunner:
        if opts:
            raise UserError(f"torch-compile backend: unknown option(s) {sorted(opts)}; "
                            "known: threads, mode, device")
        if mode not in MODES:
            raise UserError(f"torch-compile mode {mode!r} is not one of {', '.join(MODES)}")
        assert handle.model is not None  # supports() admitted only handles with a model
        set_threads(threads)
        return CompiledRunner(handle, mode, resolve_device(device, handle.model))


register_backend(TorchCompiledBackend())
