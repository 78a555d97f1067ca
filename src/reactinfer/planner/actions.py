"""Planner actions: one transform (or a short fixed sequence, e.g. prune → distil) or one
backend/precision/threads choice, applied to a candidate recipe.

A candidate is a recipe, not a model: `Candidate(transforms, backend, options)`; the
loop builds models from recipes when it must measure them. Each action also says why it
might pay on this machine (`expect`), which is what the planner's Thought is made from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..core.hardware import HardwareProfile

ObservationLog = list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A recipe: structural transforms, then runtime transforms, then a backend."""

    transforms: tuple[str, ...] = ()  # JSON-encoded config dicts, in order
    backend: str = "torch"
    options: str = "{}"  # JSON-encoded backend options

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def configs(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.transforms]

    def backend_options(self) -> dict[str, Any]:
        return json.loads(self.options)

    def to_json(self) -> dict[str, Any]:
        return {"transforms": self.configs(), "backend": self.backend,
                "backend_options": self.backend_options()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Candidate:
        return cls(tuple(json.dumps(t, sort_keys=True) for t in d["transforms"]), d["backend"],
                   json.dumps(d.get("backend_options", {}), sort_keys=True))

    def describe(self) -> str:
        steps = [c["type"] for c in self.configs()]
        opts = self.backend_options()
        backend = self.backend + (f"({', '.join(f'{k}={v}' for k, v in opts.items())})"
                                  if opts else "")
        return " → ".join(steps + [backend])


@dataclasses.dataclass(frozen=True)
class Context:
    """What the planner knows when it reasons: the machine, the model, the goal, and the
    observations so far."""

    hardware: HardwareProfile
    task: str
    objective: str
    model_facts: dict[str, Any]
    log: ObservationLog

    def family_results(self, family: str) -> list[dict[str, Any]]:
        return [t for t in self.log if t.get("family") == family]

    def structural_overshoot(self) -> dict[str, Any] | None:
        """The structural trial that overshot the quality bound the most, if any."""
        worst = None
        for t in self.log:
            obs = t.get("observation")
            if (t.get("family", "").startswith("prune-") and obs
                    and "quality drop" in t.get("reason", "") and ">" in t["reason"]
                    and (worst is None or obs["quality_drop"]
                         > worst["observation"]["quality_drop"])):
                worst = t
        return worst


Expect = Callable[[Context], tuple[float, str]]


@dataclasses.dataclass(frozen=True)
class Action:
    """`steps` are transform config dicts appended to the recipe; `runtime=True` marks steps
    that change the torch model's number format (they stay last, and need a torch backend).
    `backend` switches the backend (and options). Actions in a `family` escalate: level n is
    only tried once level n-1 was kept. `cost` says how long a first trial is expected to
    take, in measurements; steps with a `time_budget_s` add that."""

    name: str
    family: str
    expect: Expect
    steps: tuple[dict[str, Any], ...] = ()
    backend: tuple[str, dict[str, Any]] | None = None
    runtime: bool = False
    level: int = 0
    tasks: tuple[str, ...] = ("embedding", "classification", "causal-lm")
    lossless: bool = False
    # what a first trial of this action costs, in measurements of a model (the time budget
    # predicts from it until a trial of its family was measured): more than 1 where
    # building is slow or measuring includes a one-off (torch.compile compiles then)
    cost: float = 1.0
    # the backend option that keeps named layers in higher precision (e.g. "fp32_layers"):
    # when a trial of this action overshoots the quality bound, planner/repair.py searches
    # the smallest set of its most sensitive layers to keep there
    fallback: str | None = None

    def apply(self, cand: Candidate, runtime_kinds: set[str]) -> Candidate | None:
        """The candidate this action leads to, or None where it does not apply."""
        configs = cand.configs()
        structural = [c for c in configs if c["type"] not in runtime_kinds]
        runtime = [c for c in configs if c["type"] in runtime_kinds]
        if self.backend is not None:
            name, opts = self.backend
            if runtime and name not in TORCH_BACKENDS:
                return None  # torch-format quantization cannot be exported to another engine
            # session options carry over; a layer fallback belongs to the precision it was
            # searched for, so a new precision step starts without it
            kept = {k: v for k, v in cand.backend_options().items()
                    if k not in FALLBACK_OPTIONS} if name == cand.backend else {}
            merged = {**kept, **opts}
            new = dataclasses.replace(cand, backend=name,
                                      options=json.dumps(merged, sort_keys=True))
            return new if new != cand else None
        if self.runtime:
            if cand.backend not in TORCH_BACKENDS or any(
                    c["type"] == s["type"] for c in runtime for s in self.steps):
                return None
            configs = structural + runtime + list(self.steps)
        else:  # structural steps go before any runtime step: prune → distil → quantize
            configs = structural + list(self.steps) + runtime
        return dataclasses.replace(
            cand, transforms=tuple(json.dumps(c, sort_keys=True) for c in configs))


TORCH_BACKENDS = ("torch", "torch-compile")
# backend options that name layers kept in higher precision (Action.fallback), for reports
FALLBACK_OPTIONS = ("fp32_layers",)


def model_facts(model: Any) -> dict[str, Any]:
    """Shape facts the Thoughts reason with: layers, width, FFN share of the FLOPs."""
    from ..models.arch import find_adapter

    cfg = getattr(model, "config", None)
    adapter = find_adapter(model)
    if cfg is None or adapter is None:
        return {}
    d = getattr(cfg, "hidden_size", 0)
    ff = getattr(cfg, adapter.ffn_config, 0)
    layers = getattr(cfg, "num_hidden_layers", 0)
    ffn = (len(adapter.ffn_in) + 1) * d * ff  # e.g. Llama: gate, up and down projections
    attn = 4 * d * d
    return {"layers": layers, "hidden": d, "ffn": ff,
            "heads": getattr(cfg, "num_attention_heads", 0),
            "ffn_share": ffn / (ffn + attn) if ffn + attn else 0.0}


def _observed(ctx: Context, family: str) -> str:
    done = ctx.family_results(family)
    if not done:
        return ""
    last = done[-1]
    return f" Earlier in this family: {last['action']} was {last['decision']} ({last['reason']})."


# ---------------------------------------------------------------------------------------
# Expectations: a gain factor on the objective and the reason, from the hardware profile,
# the model's shape, and what was observed. They only order the search; every step is
# measured, and kept only if it pays.
# ---------------------------------------------------------------------------------------

def _expect_ort_fp32(ctx: Context) -> tuple[float, str]:
    if ctx.objective == "size":
        return 1.0, "ONNX Runtime fp32 stores the same weights; no size gain expected."
    return 1.35, (f"ONNX Runtime fuses attention, GELU/SiLU and LayerNorm into single kernels and "
                  f"is lossless; on {ctx.hardware.cores_logical} CPU threads that usually beats "
                  "eager PyTorch, so try it first: it costs no quality.")


def _expect_int8(engine: str) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        isa = ctx.hardware.isa
        if ctx.objective == "size":
            return 3.5, f"int8 weights are 4× smaller than fp32; {engine} quantizes Linear layers."
        if isa.get("vnni") or isa.get("amx"):
            return 1.8, (f"This CPU has VNNI/AMX int8 dot products, so {engine} int8 GEMMs should "
                         "run well ahead of fp32; quality must be checked.")
        return 1.15, (f"This CPU has AVX2 but no VNNI/AMX: int8 GEMMs gain little over fp32 here, "
                      f"but {engine} int8 also halves memory traffic; worth one measurement, "
                      "after the lossless steps.")
    return expect


def _expect_prune(what: str, fraction: float) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        share = ctx.model_facts.get("ffn_share", 0.66) if what == "FFN neurons" else \
            1 - ctx.model_facts.get("ffn_share", 0.66) if what == "attention heads" else 1.0
        gain = 1 / max(1e-3, 1 - share * fraction)
        worst = ctx.structural_overshoot()
        if worst is not None:  # what was observed outweighs the FLOP count
            gain = 1 + (gain - 1) * 0.25
            lost = worst["observation"]["quality_drop"]
            return gain, (f"{worst['action']} already lost {lost:.3f} of quality, over the "
                          "bound even after recovery training, so pruning "
                          f"{what} is unlikely to stay within it; kept for after the other "
                          "actions." + _observed(ctx, "prune-" + what.split()[0].lower()))
        prior = {"FFN neurons": "the FFN holds", "attention heads": "attention projections hold",
                 "layers": "each layer holds"}[what]
        amount = f"{share:.0%} of the FLOPs" if what != "layers" else \
            f"1/{ctx.model_facts.get('layers', '?')} of the FLOPs"
        return gain, (f"Structured pruning of {what} physically shrinks the dense GEMMs: {prior} "
                      f"{amount}, so removing {fraction:.0%} should give about ×{gain:.2f}; "
                      f"recovery distillation on the train split limits the quality loss."
                      + _observed(ctx, "prune-" + what.split()[0].lower()))
    return expect


def _expect_half(dtype: str) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        if ctx.hardware.gpu:
            return 1.8, f"A GPU is present: {dtype} halves memory traffic and uses tensor cores."
        if ctx.objective == "size":
            return 2.0, f"{dtype} halves the stored weights."
        isa = ctx.hardware.isa
        native = ("amx_bf16", "avx512_bf16") if dtype == "bf16" else ("avx512_fp16",)
        have = [name for name in native if isa.get(name)]
        if have:
            return 1.3, f"This CPU has native {dtype} instructions ({', '.join(have)})."
        return 0.8, (f"No native {dtype} GEMM on this CPU (no {' or '.join(native)}): eager "
                     f"{dtype} is likely slower than fp32; measured last, for completeness.")
    return expect


def _expect_compile(ctx: Context) -> tuple[float, str]:
    return 1.1, ("torch.compile fuses element-wise work around the GEMMs; a modest, lossless gain "
                 "on CPU, after a one-off compile that is not counted in steady-state speed.")


def _expect_llamacpp(quant: str, gain: float) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        return gain, (f"For causal LMs at batch 1 decoding is memory-bound: llama.cpp with {quant} "
                      "weights reads far fewer bytes per token and uses hand-tuned AVX2 kernels.")
    return expect


def _expect_sparse(ctx: Context) -> tuple[float, str]:
    return 0.95, ("Unstructured/2:4 sparsity leaves the dense shapes as they are: without sparse "
                  "kernels on this CPU it should not speed up; one measurement to confirm.")
