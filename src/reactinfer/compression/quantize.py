"""Quantization of Linear layers: dynamic int8 (torch kernels), static int8 with
calibration (simulated: quantize-dequantize of weights and activations), weight-only
int8 / int4 group-wise (packed integer storage, de-quantized on the fly), fp16 / bf16
with layers kept in fp32, and a per-layer sensitivity report.

All of these are `replay_on_load`: an artifact keeps the float weights from before them
plus the recipe, and re-applies it when loaded (every step here is deterministic, the
calibration corpus included), so no non-standard tensor format is ever written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812

from ..core.errors import UserError
from ..core.transform import TransformConfig, register_transform
from ._common import (
    calibration_texts,
    check_choice,
    check_names,
    clone,
    linear_at,
    linear_names,
    model_batches,
    need_model,
    resolve_names,
    run_model,
    set_module,
)

if TYPE_CHECKING:
    from ..core.handle import ModelHandle


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao.quantization warns that it is deprecated on every call; it still is the
    # only eager int8 GEMM path in CPU torch, so keep it and keep the logs readable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        yield


# -- configs -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class QuantizeDynamicInt8(TransformConfig):
    """int8 weights, activations quantized per batch at run time (torch.ao dynamic)."""
    replay_on_load = True
    per_channel: bool = False
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        check_names("QuantizeDynamicInt8", "exclude", self.exclude)


@dataclasses.dataclass(frozen=True)
class QuantizeStaticInt8(TransformConfig):
    """int8 weights (per-channel or per-tensor) and int8 activations with ranges fixed by
    calibration. Simulated (QDQ in float): eager torch has no static int8 kernels for
    Hugging Face transformer blocks, so this measures the quality, not the speed."""
    replay_on_load = True
    observer: str = "minmax"  # or "percentile"
    percentile: float = 99.99
    per_channel: bool = True
    n_samples: int = 128
    data: str | None = None
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        check_choice("QuantizeStaticInt8", "observer", self.observer, ("minmax", "percentile"))
        if not 50 < self.percentile <= 100:
            raise UserError(f"QuantizeStaticInt8: percentile must be in (50, 100], "
                            f"got {self.percentile}")
        if self.n_samples < 1:
            raise UserError(f"QuantizeStaticInt8: n_samples must be >= 1, got {self.n_samples}")
        check_names("QuantizeStaticInt8", "exclude", self.exclude)


@dataclasses.dataclass(frozen=True)
class QuantizeWeightOnly(TransformConfig):
    """int8 (symmetric) or int4 (asymmetric) weights in groups of `group_size` input
    features (None: one scale per output channel); activations stay float."""
    replay_on_load = True
    bits: int = 8
    group_size: int | None = 32
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        check_choice("QuantizeWeightOnly", "bits", self.bits, (4, 8))
        if self.group_size is not None and (not isinstance(self.group_size, int)
                                            or self.group_size < 2 or self.group_size % 2):
            raise UserError(f"QuantizeWeightOnly: group_size must be an even integer >= 2 "
                            f"(or null for per-channel), got {self.group_size!r}")
        check_names("QuantizeWeightOnly", "exclude", self.exclude)


@dataclasses.dataclass(frozen=True)
class CastHalf(TransformConfig):
    """fp16 or bf16 weights and activations; modules matching `keep_fp32` stay fp32."""
    replay_on_load = True
    dtype: str = "bf16"
    keep_fp32: tuple[str, ...] = ()

    def validate(self) -> None:
        check_choice("CastHalf", "dtype", self.dtype, ("fp16", "bf16"))
        check_names("CastHalf", "keep_fp32", self.keep_fp32)


# -- integer helpers -----------------------------------------------------------------------

def fake_quant_weight(w: torch.Tensor, per_channel: bool, bits: int = 8) -> torch.Tensor:
    """Symmetric round-to-nearest quantize-dequantize of a (N, K) weight."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().amax(1, keepdim=True) if per_channel else w.abs().amax()
    scale = (amax / qmax).clamp(min=1e-12)
    return (w / scale).round().clamp(-qmax, qmax) * scale


def fake_quant_act(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric uint8 quantize-dequantize with a fixed range (zero always representable)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


class WeightOnlyLinear(torch.nn.Module):
    """A Linear whose weight is stored as int8, or int4 packed two per byte, with float
    scales per group; it is de-quantized to float for each matmul."""

    qweight: torch.Tensor  # buffers, declared for type checkers
    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(self, linear: torch.nn.Linear, bits: int, group_size: int | None):
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        n, k = w.shape
        g = group_size or k
        self.in_features, self.out_features, self.bits, self.group_size = k, n, bits, g
        wg = w.view(n, k // g, g)  # (N, G, g)
        if bits == 8:
            scale = (wg.abs().amax(-1) / 127).clamp(min=1e-12)  # (N, G)
            q = (wg / scale[..., None]).round().clamp(-127, 127).to(torch.int8)
            self.register_buffer("zero", torch.zeros(0))
        else:  # asymmetric int4: [min, max] of each group onto 0..15
            lo, hi = wg.amin(-1), wg.amax(-1)
            scale = ((hi - lo) / 15).clamp(min=1e-12)
            q4 = ((wg - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8)
            q4 = q4.view(n, k)
            q = q4[:, 0::2] | (q4[:, 1::2] << 4)  # (N, K/2): two nibbles per byte
            self.register_buffer("zero", lo.contiguous())
        self.register_buffer("qweight", q.reshape(n, -1).contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach())

    def dequantize(self) -> torch.Tensor:
        n, k, g = self.out_features, self.in_features, self.group_size
        if self.bits == 8:
            q = self.qweight.view(n, k // g, g).float()
            return (q * self.scale[..., None]).view(n, k)
        q = torch.stack((self.qweight & 15, self.qweight >> 4), -1).view(n, k // g, g).float()
        return (q * self.scale[..., None] + self.zero[..., None]).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}")


class QDQLinear(torch.nn.Module):
    """Simulated static int8: fake-quantized weight, input fake-quantized with a range
    fixed at calibration."""

    def __init__(self, linear: torch.nn.Linear, per_channel: bool, lo: float, hi: float):
        super().__init__()
        self.weight = torch.nn.Parameter(fake_quant_weight(linear.weight.detach(), per_channel))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach())
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quant_act(x, self.lo, self.hi), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, act_range=({self.lo:.4g}, {self.hi:.4g})"


def _dynamic_qconfig(per_channel: bool) -> Any:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    return per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig


def _dynamic_linear(linear: torch.nn.Linear, per_channel: bool) -> torch.nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    lin = clone(linear)
    lin.qconfig = _dynamic_qconfig(per_channel)
    with _quiet():
        return DynLinear.from_float(lin)


# -- handlers -------------------------------------------------------------------------------

def _targets(model: torch.nn.Module, exclude: tuple[str, ...], what: str) -> list[str]:
    names = linear_names(model)
    skip = resolve_names(model, exclude, names, what)
    return [n for n in names if n not in skip]


@register_transform(QuantizeDynamicInt8)
def _dynamic_int8(handle: ModelHandle, cfg: QuantizeDynamicInt8) -> ModelHandle:
    model = need_model(handle, "QuantizeDynamicInt8")
    targets = _targets(model, cfg.exclude, "QuantizeDynamicInt8 exclude")
    from torch.ao.quantization import quantize_dynamic

    new = clone(model)
    qconfig = _dynamic_qconfig(cfg.per_channel)
    with _quiet():
        quantize_dynamic(new, {name: qconfig for name in targets}, dtype=torch.qint8,
                         inplace=True)
    return handle.derive(model=new.eval())


def _check_groups(model: torch.nn.Module, targets: list[str], group_size: int | None) -> None:
    if group_size is None:
        return
    bad = [(n, linear_at(model, n).in_features) for n in targets
           if linear_at(model, n).in_features % group_size]
    if bad:
        shown = ", ".join(f"{n} ({k})" for n, k in bad[:4])
        raise UserError(f"QuantizeWeightOnly: group_size {group_size} does not divide the input "
                        f"features of {len(bad)} layer(s): {shown}; choose a divisor, or "
                        "exclude those layers")


@register_transform(QuantizeWeightOnly)
def _weight_only(handle: ModelHandle, cfg: QuantizeWeightOnly) -> ModelHandle:
    model = need_model(handle, "QuantizeWeightOnly")
    targets = _targets(model, cfg.exclude, "QuantizeWeightOnly exclude")
    _check_groups(model, targets, cfg.group_size)
    new = clone(model)
    for name in targets:
        set_module(new, name, WeightOnlyLinear(linear_at(new, name), cfg.bits, cfg.group_size))
    return handle.derive(model=new.eval())


def collect_input_ranges(handle: ModelHandle, model: torch.nn.Module, names: list[str],
                         texts: list[str], observer: str = "minmax",
                         percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """Range of each named Linear's input over calibration texts: min / max, or the
    `percentile` (and 100 - percentile) of a sample of the values (robust to outliers)."""
    stats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    gen = torch.Generator().manual_seed(0)

    def hook(name: str) -> Callable:
        def fn(_m: torch.nn.Module, inputs: tuple, _out: Any) -> None:
            x = inputs[0].detach().float().flatten()
            if observer == "minmax":
                stats[name].append(torch.stack((x.min(), x.max())))
            else:  # a fixed-size random sample keeps quantile() cheap and memory flat
                idx = torch.randint(0, x.numel(), (min(x.numel(), 1 << 15),), generator=gen)
                stats[name].append(x[idx])
        return fn

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            for batch in model_batches(handle, texts):
                run_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    ranges = {}
    for n, vals in stats.items():
        if observer == "minmax":
            v = torch.stack(vals)
            ranges[n] = (float(v[:, 0].min()), float(v[:, 1].max()))
        else:
            v = torch.cat(vals)
            q = torch.quantile(v, torch.tensor([1 - percentile / 100, percentile / 100]))
            ranges[n] = (float(q[0]), float(q[1]))
    return ranges


@register_transform(QuantizeStaticInt8)
def _static_int8(handle: ModelHandle, cfg: QuantizeStaticInt8) -> ModelHandle:
    model = need_model(handle, "QuantizeStaticInt8")
    targets = _targets(model, cfg.exclude, "QuantizeStaticInt8 exclude")
    texts = calibration_texts(handle, cfg.data, cfg.n_samples)
    ranges = collect_input_ranges(handle, model, targets, texts, cfg.observer, cfg.percentile)
    new = clone(model)
    for name in targets:
        lo, hi = ranges[name]
        set_module(new, name, QDQLinear(linear_at(new, name), cfg.per_channel, lo, hi))
    return handle.derive(model=new.eval())


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _to_float32_inputs(_m: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def f(v: Any) -> Any:
        return v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    return tuple(f(a) for a in args), {k: f(v) for k, v in kwargs.items()}


def _make_back_cast(dtype: torch.dtype) -> Callable:
    def back(_m: torch.nn.Module, _args: tuple, _kw: dict, out: Any) -> Any:
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.to(dtype)
        return out
    return back


@register_transform(CastHalf)
def _cast_half(handle: ModelHandle, cfg: CastHalf) -> ModelHandle:
    model = need_model(handle, "CastHalf")
    names = [n for n, _ in model.named_modules() if n]
    keep = resolve_names(model, cfg.keep_fp32, names, "CastHalf keep_fp32")
    dtype = _DTYPES[cfg.dtype]
    new = clone(model).to(dtype)
    # kept modules run in fp32 on fp32 inputs and hand half precision back to the rest
    for name in sorted(keep):
        if any(name.startswith(k + ".") for k in keep):
            continue  # inside another kept module: the outer one casts
        m = new.get_submodule(name).float()
        m.register_forward_pre_hook(_to_float32_inputs, with_kwargs=True)
        m.register_forward_hook(_make_back_cast(dtype), with_kwargs=True)
    return handle.derive(model=new.eval())


# -- sensitivity ------------------------------------------------------------------------------

_LAYER_QUANTIZERS: dict[type, Callable[[torch.nn.Linear, Any, torch.Tensor], torch.nn.Module]] = {
    QuantizeDynamicInt8: lambda lin, cfg, x: _dynamic_linear(lin, cfg.per_channel),
    QuantizeWeightOnly: lambda lin, cfg, x: WeightOnlyLinear(lin, cfg.bits, cfg.group_size),
    # the batch's own range stands in for the calibrated one
    QuantizeStaticInt8: lambda lin, cfg, x: QDQLinear(lin, cfg.per_channel, float(x.min()),
                                                      float(x.max())),
    CastHalf: lambda lin, cfg, x: _HalfLinear(lin, _DTYPES[cfg.dtype]),
}


class _HalfLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = clone(linear).to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).float()


def layer_sensitivity(handle: ModelHandle, method: TransformConfig | None = None,
                      data: str | None = None, n_samples: int = 64) -> list[dict[str, Any]]:
    """SQNR (dB) of each Linear's output when only that layer is quantized with `method`
    (default: dynamic int8 per-tensor), on calibration texts. Every layer sees the float
    model's activations, so the numbers isolate each layer. Sorted worst first."""
    method = method or QuantizeDynamicInt8()
    if type(method) not in _LAYER_QUANTIZERS:
        raise UserError(f"sensitivity supports {', '.join(t.__name__ for t in _LAYER_QUANTIZERS)}"
                        f"; got {type(method).__name__}")
    model = need_model(handle, "sensitivity")
    names = _targets(model, getattr(method, "exclude", ()), "sensitivity exclude")
    if isinstance(method, QuantizeWeightOnly):
        _check_groups(model, names, method.group_size)
    make = _LAYER_QUANTIZERS[type(method)]
    signal = {n: 0.0 for n in names}
    noise = {n: 0.0 for n in names}

    def hook(name: str) -> Callable:
        def fn(m: torch.nn.Linear, inputs: tuple, out: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            q = make(m, method, x)(x).float()
            ref = out.detach().float()
            signal[name] += float((ref.double() ** 2).sum())
            noise[name] += float(((ref.double() - q.double()) ** 2).sum())
        return fn

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            for batch in model_batches(handle, calibration_texts(handle, data, n_samples)):
                run_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    # the sums above are reactinfer.testing.sqnr_db accumulated over batches
    rows = []
    for n in names:
        lin = linear_at(model, n)
        db = float("inf") if noise[n] == 0 else 10 * float(torch.log10(
            torch.tensor(signal[n] / noise[n])))
        rows.append({"layer": n, "sqnr_db": db, "shape": [lin.out_features, lin.in_features],
                     "params": lin.weight.numel()})
    return sorted(rows, key=lambda r: r["sqnr_db"])
