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

from ..core.hardware import NATIVE_HALF, HardwareProfile, native_flags
from . import cnn
from .record import Trial

ObservationLog = list[Trial]


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
    # the candidate the action is applied to, and the one it leads to (None: not known)
    base: Candidate = Candidate()
    cand: Candidate | None = None

    def family_results(self, family: str) -> list[Trial]:
        return [t for t in self.log if t.family == family]

    def format_overshoot(self, fmt: str) -> Trial | None:
        """The last trial in number format `fmt` (any engine) that went over the bound."""
        over = [t for t in self.log if t.over_bound
                and number_format(Candidate.from_json(t.candidate)) == fmt]
        return over[-1] if over else None

    def structural_overshoot(self) -> Trial | None:
        """The structural trial that overshot the quality bound the most, if any."""
        worst: Trial | None = None
        most = 0.0
        for t in self.log:
            obs = t.observation
            if (t.family.startswith("prune-") and obs
                    and "quality drop" in t.reason and ">" in t.reason
                    and (worst is None or obs["quality_drop"] > most)):
                worst, most = t, obs["quality_drop"]
        return worst


Expect = Callable[[Context], tuple[float, str]]


@dataclasses.dataclass(frozen=True)
class Action:
    """`steps` are transform config dicts appended to the recipe; `runtime=True` marks steps
    that change the torch model's number format (they stay last, and need a torch backend).
    `backend` switches the backend (and options). `formats` expresses a number format for
    the engine at hand: on a candidate whose backend is a key, the action merges those
    backend options instead (bf16 is a `CastHalf` step on torch, precision "bf16" on
    OpenVINO). Actions in a `family` escalate: level n is only tried once level n-1 was
    kept. `cost` says how long a first trial is expected to take, in measurements; steps
    with a `time_budget_s` add that."""

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
    formats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # the backend option that keeps named layers in higher precision (e.g. "fp32_layers"):
    # when a trial of this action overshoots the quality bound, planner/repair.py searches
    # the smallest set of its most sensitive layers to keep there
    fallback: str | None = None
    # needs no data and no training and changes no output (BatchNorm folding): tried before
    # anything else, the first time it applies
    free: bool = False

    def apply(self, cand: Candidate, runtime_kinds: set[str]) -> Candidate | None:
        """The candidate this action leads to, or None where it does not apply."""
        configs = cand.configs()
        structural = [c for c in configs if c["type"] not in runtime_kinds]
        runtime = [c for c in configs if c["type"] in runtime_kinds]
        target = (cand.backend, self.formats[cand.backend]) if cand.backend in self.formats \
            else self.backend
        if target is not None:
            name, opts = target
            if runtime and name not in TORCH_BACKENDS:
                return None  # torch-format quantization cannot be exported to another engine
            # session options carry over; a layer fallback or the precision of int8's float
            # rest belongs to the precision it was chosen with: a step to another precision
            # starts without it, one that keeps the precision (int8 → int8 with its float
            # rest in bf16) keeps the layers the repair found
            have = cand.backend_options()
            same = name == cand.backend and opts.get("precision") == have.get("precision")
            kept = {k: v for k, v in have.items() if same or k not in PRECISION_BOUND} \
                if name == cand.backend else {}
            merged = {**kept, **opts}
            new = dataclasses.replace(cand, backend=name,
                                      options=json.dumps(merged, sort_keys=True))
            return new if new != cand else None
        if self.steps and all(any(_same_step(s, c) for c in structural) for s in self.steps):
            return None  # already in the recipe: a step is applied once per candidate
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
# backend options that belong to the precision they were chosen with (not carried over)
PRECISION_BOUND = FALLBACK_OPTIONS + ("rest",)


def _same_step(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same transform with the same settings; a time budget cut to fit does not count."""
    def strip(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k != "time_budget_s"}
    return strip(a) == strip(b)


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
    return f" Earlier in this family: {last.action} was {last.decision} ({last.full_reason})."


# ---------------------------------------------------------------------------------------
# Expectations: a gain factor on the objective and the reason, from the hardware profile,
# the model's shape, and what was observed. They only order the search; every step is
# measured, and kept only if it pays.
# ---------------------------------------------------------------------------------------

# What an engine and a number format are expected to give on a CPU, relative to eager
# PyTorch fp32: priors that only order the trials (measured on 2-core AVX-512 machines for
# MiniLM, issue #13: ONNX Runtime fp32 ×2.0 and OpenVINO fp32 ×2.3 over sentence-transformers'
# encode, on top of which int8 gave ×1.9 / ×2.4 with VNNI and OpenVINO bf16 ×1.7 with
# avx512_bf16). Every step is still measured here and kept only if it pays.
ENGINE_SPEED = {"torch": 1.0, "torch-compile": 1.1, "onnxruntime": 1.35, "openvino": 1.5}
ENGINE_NOTE = {
    "torch": "eager PyTorch runs each op on its own.",
    "torch-compile": "torch.compile fuses element-wise work around the GEMMs; a modest, "
                     "lossless gain on CPU, after a one-off compile that is not counted in "
                     "steady-state speed.",
    "onnxruntime": "ONNX Runtime fuses attention, GELU/SiLU and LayerNorm into single kernels "
                   "and is lossless in fp32.",
    "openvino": "OpenVINO compiles the graph for this CPU's ISA (oneDNN kernels, fused "
                "attention) and is lossless in fp32.",
}
# int8 GEMM gain over the engine's fp32: (AMX int8, VNNI, neither)
_INT8_SPEED = {"openvino": (3.0, 2.4, 1.2), "onnxruntime": (2.0, 1.8, 1.15)}
_INT8_TORCH = (1.8, 1.5, 1.1)
# native half-precision GEMM gain over fp32: (AMX, AVX-512)
_HALF_SPEED = {"openvino": (2.5, 1.7)}
_HALF_TORCH = (1.6, 1.3)
# int8's expected gain is weighed by this against near-lossless steps when ordering them: on
# MiniLM at a 0.01 bound ONNX Runtime int8 reached top-10 recall 0.89-0.91 and OpenVINO int8
# 0.944-0.945 (both under the 0.95 floor), while OpenVINO bf16 kept 0.994 (issue #13, and
# benchmarks/results/planner_minilm.md). A format that went over the bound here is
# discounted further (×0.25), from what was measured.
INT8_RISK = 0.5
# stored size over fp32: int8 keeps embeddings and norms in float; OpenVINO's bf16 is an
# inference precision (the IR keeps the float weights)
_SIZE = {"int8": 3.5, "bf16": 2.0, "fp16": 2.0}


def number_format(cand: Candidate) -> str:
    """The number format a candidate computes in: fp32, bf16, fp16, int8, or woq."""
    precision = cand.backend_options().get("precision")
    if precision:
        return "int8" if str(precision).startswith("int8") else str(precision)
    for c in cand.configs():
        if c["type"] == "CastHalf":
            return str(c.get("dtype", "bf16"))
        if c["type"] == "QuantizeDynamicInt8":
            return "int8"
        if c["type"] == "QuantizeWeightOnly":
            return "woq"
    return "fp32"


def format_speed(hw: HardwareProfile, engine: str, fmt: str) -> tuple[float, str]:
    """Expected speed of `fmt` over fp32 on `engine` on this CPU, and why."""
    isa = hw.isa
    if fmt in NATIVE_HALF:
        if hw.gpu and engine in TORCH_BACKENDS:
            return 1.8, f"A GPU is present: {fmt} halves memory traffic and uses tensor cores."
        have = native_flags(isa, fmt)
        if not have:
            return 0.8, (f"No native {fmt} GEMM on this CPU (no {' or '.join(NATIVE_HALF[fmt])}): "
                         f"{fmt} is likely slower than fp32 here.")
        amx, avx512 = _HALF_SPEED.get(engine, _HALF_TORCH)
        g = amx if any(n.startswith("amx") for n in have) else avx512
        return g, (f"Native {fmt} ({', '.join(have)}) on this CPU → {fmt} on {engine} expected "
                   f"×{g:.1f} over fp32.")
    if fmt == "int8":
        amx, vnni, plain = _INT8_SPEED.get(engine, _INT8_TORCH)
        if isa.get("amx_int8"):
            return amx, (f"AMX int8 tiles (amx_int8) → int8 on {engine} expected ×{amx:.1f} "
                         "over fp32.")
        if isa.get("vnni"):
            which = "avx_vnni" if isa.get("avx_vnni") and not isa.get("avx512") else "AVX-512 VNNI"
            return vnni, (f"int8 dot products ({which}) → int8 on {engine} expected ×{vnni:.1f} "
                          "over fp32; quality must be checked.")
        return plain, ("No VNNI/AMX on this CPU → int8 GEMMs gain little here; int8 still cuts "
                       f"memory traffic: ×{plain:.2f} expected, after the lossless steps.")
    return 1.0, ""


def candidate_speed(hw: HardwareProfile, cand: Candidate) -> tuple[float, str]:
    """Expected speed of a candidate's engine and number format over eager PyTorch fp32."""
    g, why = format_speed(hw, cand.backend, number_format(cand))
    return ENGINE_SPEED.get(cand.backend, 1.0) * g, why


def _expect_engine_format(ctx: Context) -> tuple[float, str]:
    """An engine or number-format step: the expected speed of the candidate it leads to
    over that of its base, from the hardware profile (size: stored bytes)."""
    assert ctx.cand is not None, "engine/format expectations need the candidate"
    new_fmt, old_fmt = number_format(ctx.cand), number_format(ctx.base)
    engine = ctx.cand.backend
    convs = "convs" in ctx.model_facts  # an image model: convolutions, not attention
    note = (cnn.ENGINE_NOTE if convs else ENGINE_NOTE).get(engine, "") \
        if engine != ctx.base.backend else ""
    if ctx.objective == "size":
        g = _size(ctx.cand) / _size(ctx.base)
        return g, (f"{new_fmt} on {engine} stores ×{g:.2f} fewer bytes than the base's "
                   f"{old_fmt}. {note}").strip()
    new, why = candidate_speed(ctx.hardware, ctx.cand)
    old, _ = candidate_speed(ctx.hardware, ctx.base)
    g = new / old
    over = ctx.format_overshoot(new_fmt) if new_fmt != old_fmt else None
    if over is not None and g > 1:  # what was observed outweighs the prior
        g = 1 + (g - 1) * 0.25
        why += (f" But {new_fmt} went over the bound as {over.action} "
                f"({over.full_reason}): it may here too, so lossless steps come first.")
    elif new_fmt == "int8" and old_fmt != "int8" and g > 1:
        if convs:  # depthwise convolutions gain little from int8: Amdahl over their shares
            fmt = format_speed(ctx.hardware, engine, "int8")[0]
            weighed, extra = cnn.int8_weigh(ctx.model_facts, fmt)
            g, why = g * weighed / fmt, why + extra
        g = 1 + (g - 1) * INT8_RISK
        why += (f" int8 often costs a {'CNN' if convs else 'transformer'} more than a tight "
                f"bound allows, so its gain is weighed at ×{INT8_RISK} against near-lossless "
                "steps.")
    return g, (f"{note} {why} Prior over eager PyTorch fp32: ×{new:.2f} for "
               f"{engine} {new_fmt}, ×{old:.2f} for the base's "
               f"{ctx.base.backend} {old_fmt}.").replace("  ", " ").strip()


def _size(cand: Candidate) -> float:
    fmt = number_format(cand)
    if fmt == "bf16" and cand.backend == "openvino":
        return 1.0
    return _SIZE.get(fmt, 1.0)


def _expect_fold_bn(ctx: Context) -> tuple[float, str]:
    """BatchNorm folding: exact and free; pays where the engine does not fold it itself."""
    if ctx.objective == "size":
        return 1.0, "Folding BatchNorm removes 4 numbers per channel: the size barely changes."
    return cnn.fold_expect(ctx.model_facts, ctx.base.backend)


def _expect_int8(engine: str) -> Expect:
    """Weight-only int8 in eager PyTorch (LMs): its own kernels, not the GEMM priors."""
    def expect(ctx: Context) -> tuple[float, str]:
        if ctx.objective == "size":
            return 3.5, f"int8 weights are 4× smaller than fp32; {engine} quantizes Linear layers."
        return 1.1, (f"{engine} int8 reads a quarter of the weight bytes, which pays when "
                     "decoding is memory-bound; its GEMMs dequantize on the fly.")
    return expect


def _expect_prune(what: str, fraction: float) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        share = ctx.model_facts.get("ffn_share", 0.66) if what == "FFN neurons" else \
            1 - ctx.model_facts.get("ffn_share", 0.66) if what == "attention heads" else 1.0
        gain = 1 / max(1e-3, 1 - share * fraction)
        worst = ctx.structural_overshoot()
        if worst is not None:  # what was observed outweighs the FLOP count
            gain = 1 + (gain - 1) * 0.25
            assert worst.observation is not None  # only measured trials overshoot
            lost = worst.observation["quality_drop"]
            return gain, (f"{worst.action} already lost {lost:.3f} of quality, over the "
                          "bound even after recovery training, so pruning "
                          f"{what} is unlikely to stay within it; kept for after the other "
                          "actions." + _observed(ctx, "prune-" + what.split()[0].lower()))
        return gain, (f"Structured pruning of {what} physically shrinks the dense GEMMs"
                      f"{_share_clause(ctx.model_facts, what, share)}, so removing "
                      f"{fraction:.0%} should give about ×{gain:.2f}; recovery distillation "
                      "on the train split limits the quality loss."
                      + _observed(ctx, "prune-" + what.split()[0].lower()))
    return expect


def _share_clause(facts: dict[str, Any], what: str, share: float) -> str:
    """': the FFN holds 66% of the FLOPs' from the model's shape; nothing where the shape
    is not known (no claim is made up)."""
    if what == "layers":
        return f": each layer holds 1/{facts['layers']} of the FLOPs" if facts.get("layers") \
            else ""
    if "ffn_share" not in facts:
        return ""
    holds = {"FFN neurons": "the FFN holds", "attention heads": "attention projections hold"}
    return f": {holds[what]} {share:.0%} of the FLOPs"


def _expect_prune_channels(fraction: float) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        ideal = 1 / (1 - fraction) ** 2  # a convolution's MACs scale with in × out channels
        gain = 1 + (ideal - 1) * 0.5  # measured on resnet18-digits: ×1.34 at 30 %, ×1.85 at 50 %
        worst = ctx.structural_overshoot()
        if worst is not None:
            gain = 1 + (gain - 1) * 0.25
        return gain, (f"Channel pruning removes {fraction:.0%} of every convolution's output "
                      f"channels (residual and depthwise groups together), so the MACs fall "
                      f"about ×{ideal:.1f}; small convolutions gain less in wall time, about "
                      f"×{gain:.2f}. A pruned CNN is near chance until recovered: distillation "
                      "from the original on the train images, then BatchNorm recalibration."
                      + _observed(ctx, "prune-channels"))
    return expect


def _expect_llamacpp(quant: str, gain: float, repacked: bool = False) -> Expect:
    def expect(ctx: Context) -> tuple[float, str]:
        from ..backends.gguf_quantize import repacks_at_load

        why = (f"Generation reads every weight once per step: llama.cpp with {quant} weights "
               "reads fewer bytes per token, with hand-tuned SIMD kernels.")
        if repacked and repacks_at_load():
            why += (f" This llama.cpp build repacks {quant} into its interleaved CPU layout "
                    "at load (REPACK), its fastest CPU kernels.")
        return gain, why
    return expect


def _expect_sparse(ctx: Context) -> tuple[float, str]:
    return 0.95, ("Unstructured/2:4 sparsity leaves the dense shapes as they are: without sparse "
                  "kernels on this CPU it should not speed up; one measurement to confirm.")
