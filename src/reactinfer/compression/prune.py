"""Pruning: unstructured magnitude, 2:4 semi-structured, and structured pruning that
physically removes attention heads, FFN neurons and whole transformer layers from
Hugging Face models of the families in `models.arch` (BERT and Llama built in); the
family adapter says where the linears are and how the config records the new sizes.

Structured pruning is uniform across layers (every layer keeps the same number of heads
and neurons), because a Hugging Face config holds one size per model. The config is
updated so the pruned model is an ordinary, smaller model:
- Llama: `num_attention_heads`, `num_key_value_heads`, `head_dim`, `intermediate_size`,
  `num_hidden_layers` express everything; plain `from_pretrained` reloads it.
- BERT: `intermediate_size` and `num_hidden_layers` do; but transformers' BERT computes
  the head size as hidden_size / num_attention_heads and has no head_dim, so fewer heads
  of the same size cannot be expressed. Head-pruned BERTs record
  `config.react_structure = {"attention_heads": k, "head_dim": d}`; ReAct's loaders
  rebuild the smaller attention from it (`models.arch.from_pretrained_restructured`)
  and then run the ordinary BERT code. Plain `BertModel.from_pretrained` refuses such a directory
  (shape mismatch), it never loads it wrongly.

Masks (unstructured, 2:4) are stored as zeros in float weights: smaller when compressed,
not faster in dense kernels; the report says so.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch

from ..core.errors import UserError
from ..core.transform import TransformConfig, register_transform
from ..models.arch import FamilyAdapter, adapter_for
from ._common import (
    calibration_texts,
    check_choice,
    check_fraction,
    check_names,
    clone,
    linear_at,
    linear_names,
    model_batches,
    need_model,
    resolve_names,
    run_model,
)

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

IMPORTANCE = ("magnitude", "activation")


# -- configs -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PruneMagnitude(TransformConfig):
    """Unstructured: W_ij = 0 where |W_ij| < θ, θ chosen so `sparsity` of the weights of
    the Linear layers are zero, over all of them (`scope="global"`) or per layer."""
    sparsity: float = 0.5
    scope: str = "global"
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise UserError(f"PruneMagnitude: sparsity must be in [0, 1), got {self.sparsity!r}")
        check_choice("PruneMagnitude", "scope", self.scope, ("global", "layer"))
        check_names("PruneMagnitude", "exclude", self.exclude)


@dataclasses.dataclass(frozen=True)
class Prune2of4(TransformConfig):
    """Semi-structured 2:4: in every 4 consecutive input weights, the 2 smallest are 0."""
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        check_names("Prune2of4", "exclude", self.exclude)


@dataclasses.dataclass(frozen=True)
class _Structured(TransformConfig):
    keep: float = 0.5
    importance: str = "magnitude"
    n_samples: int = 64
    data: str | None = None

    def validate(self) -> None:
        name = type(self).__name__
        check_fraction(name, self.keep, "keep")
        check_choice(name, "importance", self.importance, IMPORTANCE)
        if self.n_samples < 1:
            raise UserError(f"{name}: n_samples must be >= 1, got {self.n_samples}")


@dataclasses.dataclass(frozen=True)
class PruneFFN(_Structured):
    """Remove FFN neurons: every layer keeps the `keep` fraction with the highest
    importance (weight magnitude, or mean |activation| on calibration data × weight)."""
    family_part: ClassVar[str | None] = "ffn"


@dataclasses.dataclass(frozen=True)
class PruneHeads(_Structured):
    """Remove attention heads: every layer keeps the `keep` fraction of its heads (for
    grouped-query attention: of the query heads in each key/value group)."""
    family_part: ClassVar[str | None] = "heads"


@dataclasses.dataclass(frozen=True)
class DropLayers(TransformConfig):
    """Remove whole transformer layers: keep the `keep` fraction, evenly spaced (first and
    last kept), or exactly the 0-based `layers` listed."""
    family_part: ClassVar[str | None] = "layers"
    keep: float | None = 0.5
    layers: tuple[int, ...] = ()

    def validate(self) -> None:
        if self.layers:
            if not all(isinstance(i, int) and i >= 0 for i in self.layers) \
                    or len(set(self.layers)) != len(self.layers):
                raise UserError(f"DropLayers: layers must be distinct 0-based indices, "
                                f"got {list(self.layers)}")
            if self.keep not in (None, 0.5):
                raise UserError("DropLayers: give keep or layers, not both")
        else:
            if self.keep is None:
                raise UserError("DropLayers: give keep (a fraction) or layers (indices)")
            check_fraction("DropLayers", self.keep, "keep")


# -- unstructured ----------------------------------------------------------------------------

def _prunable(model: torch.nn.Module, exclude: tuple[str, ...], what: str) -> list[str]:
    """Linear layers, less exclusions and heads tied to an embedding (pruning those would
    prune the embedding table too)."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    names = [n for n in linear_names(model) if id(linear_at(model, n).weight) not in tied]
    skip = resolve_names(model, exclude, names, what)
    return [n for n in names if n not in skip]


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of zeros among the weights of the Linear layers."""
    ws = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def _kth_abs(values: torch.Tensor, fraction: float) -> float:
    k = int(round(fraction * values.numel()))
    if k == 0:
        return -1.0  # nothing below it
    return float(values.abs().flatten().kthvalue(k).values)


@register_transform(PruneMagnitude)
def _prune_magnitude(handle: ModelHandle, cfg: PruneMagnitude) -> ModelHandle:
    model = need_model(handle, "PruneMagnitude")
    names = _prunable(model, cfg.exclude, "PruneMagnitude exclude")
    new = clone(model)
    weights = [linear_at(new, n).weight for n in names]
    theta = _kth_abs(torch.cat([w.detach().flatten() for w in weights]), cfg.sparsity) \
        if cfg.scope == "global" else None
    with torch.no_grad():
        for w in weights:
            t = theta if theta is not None else _kth_abs(w.detach(), cfg.sparsity)
            w.mul_(w.abs() > t)
    return handle.derive(model=new.eval(), metrics={**handle.metrics, "sparsity": sparsity(new)})


@register_transform(Prune2of4)
def _prune_2of4(handle: ModelHandle, cfg: Prune2of4) -> ModelHandle:
    model = need_model(handle, "Prune2of4")
    names = _prunable(model, cfg.exclude, "Prune2of4 exclude")
    bad = [n for n in names if linear_at(model, n).in_features % 4]
    if bad:
        raise UserError(f"Prune2of4: input features of {', '.join(bad[:4])} are not a multiple "
                        "of 4; exclude those layers")
    new = clone(model)
    with torch.no_grad():
        for n in names:
            w = linear_at(new, n).weight  # (N, K)
            groups = w.view(w.shape[0], -1, 4)  # (N, K/4, 4)
            smallest = groups.abs().argsort(-1)[..., :2]
            groups.scatter_(-1, smallest, 0.0)
    return handle.derive(model=new.eval(), metrics={**handle.metrics, "sparsity": sparsity(new)})


# -- structured: scoring helpers ---------------------------------------------------------------

def _family(model: torch.nn.Module, cfg: TransformConfig) -> FamilyAdapter:
    """The family adapter of `model`, which must allow reshaping `cfg.family_part`."""
    name = type(cfg).__name__
    arch = adapter_for(model, name)
    why = arch.why_not(cfg.family_part or "")
    if why:
        raise UserError(f"{name}: {why}")
    return arch


def _activation_norms(handle: ModelHandle, model: torch.nn.Module, cfg: _Structured,
                      pick: Callable[[torch.nn.Module], torch.nn.Linear]) -> list[torch.Tensor]:
    """Mean |input| per feature of `pick(layer)` for each layer, over real tokens only."""
    layers = adapter_for(model).blocks(model)
    sums = [torch.zeros(pick(layer).in_features, dtype=torch.float64) for layer in layers]
    count = [0]
    mask_now: list[torch.Tensor] = []

    def hook(i: int) -> Callable:
        def fn(_m: torch.nn.Module, inputs: tuple) -> None:
            # (B, T, F), or (B*T, F) where a family flattens tokens first (OPT's FFN)
            x = inputs[0].detach().abs().double().reshape(-1, sums[i].shape[0])  # (B*T, F)
            m = mask_now[0].reshape(-1, 1).to(x.dtype)  # (B*T, 1)
            sums[i] += (x * m).sum(0)
        return fn

    hooks = [pick(layer).register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for batch in model_batches(handle, calibration_texts(handle, cfg.data, cfg.n_samples)):
                mask_now[:] = [batch["attention_mask"]]
                count[0] += int(batch["attention_mask"].sum())
                run_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return [(s / max(count[0], 1)).float() for s in sums]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k).indices.sort().values  # keep the original order


# -- FFN ---------------------------------------------------------------------------------------

@register_transform(PruneFFN)
def _prune_ffn(handle: ModelHandle, cfg: PruneFFN) -> ModelHandle:
    model = need_model(handle, "PruneFFN")
    arch = _family(model, cfg)
    acts = _activation_norms(handle, model, cfg, lambda layer: arch.ffn(layer)[1]) \
        if cfg.importance == "activation" else None
    new = clone(model)
    layers = arch.blocks(new)
    size = arch.ffn(layers[0])[1].in_features  # uniform: the config's FFN width
    k = max(1, round(cfg.keep * size))
    for i, layer in enumerate(layers):
        ins, out = arch.ffn(layer)
        w_out = out.weight.detach().norm(dim=0)  # (I,)
        if acts is not None:
            scores = acts[i] * w_out
        else:
            scores = sum((lin.weight.detach().norm(dim=1) for lin in ins),
                         torch.zeros_like(w_out)) * w_out
        arch.keep_ffn(layer, _top(scores, k))
    arch.record_ffn(new.config, k)
    return handle.derive(model=new.eval())


# -- heads -------------------------------------------------------------------------------------

def _head_scores(arch: FamilyAdapter, layer: torch.nn.Module, d: int,
                 act: torch.Tensor | None) -> torch.Tensor:
    """One score per query head: weight magnitude of its Q (and K, V when one K/V per
    head) rows and O columns, or its mean |context| × ||O columns||."""
    q, k, v, o_lin = arch.attention(layer)
    o = o_lin.weight.detach()  # (H, n_heads * d)
    n = o.shape[1] // d
    o_norm = o.view(o.shape[0], n, d).norm(dim=(0, 2))  # (n,)
    if act is not None:
        return act.view(n, d).mean(-1) * o_norm
    qkv = [q] + ([k, v] if k.out_features == q.out_features else [])  # else K/V shared
    rows = sum((lin.weight.detach().view(n, d, -1).norm(dim=(1, 2)) ** 2 for lin in qkv),
               torch.zeros_like(o_norm))
    return (rows + o_norm**2).sqrt()


@register_transform(PruneHeads)
def _prune_heads(handle: ModelHandle, cfg: PruneHeads) -> ModelHandle:
    model = need_model(handle, "PruneHeads")
    arch = _family(model, cfg)
    acts = _activation_norms(handle, model, cfg, arch.attn_out) \
        if cfg.importance == "activation" else None
    new = clone(model)
    layers = arch.blocks(new)
    d = arch.layer_head_dim(layers[0])
    n_heads = arch.attn_out(layers[0]).in_features // d
    n_kv = arch.attention(layers[0])[1].out_features // d
    group = n_heads // n_kv  # query heads per key/value head
    per_group = max(1, round(cfg.keep * group)) if group > 1 else None
    k = per_group * n_kv if per_group else max(1, round(cfg.keep * n_heads))
    for i, layer in enumerate(layers):
        scores = _head_scores(arch, layer, d, None if acts is None else acts[i])
        if per_group:  # grouped-query attention: the same count kept in every group
            idx = torch.cat([_top(scores[g * group:(g + 1) * group], per_group) + g * group
                             for g in range(n_kv)])
            arch.keep_heads(layer, idx, d, None)
        else:  # one K/V head per query head: they go together
            idx = _top(scores, k)
            arch.keep_heads(layer, idx, d, idx)
    arch.record_heads(new.config, k, n_kv if per_group else k, d)
    return handle.derive(model=new.eval())


# -- layers --------------------------------------------------------------------------------------

def layers_to_keep(n_layers: int, cfg: DropLayers) -> list[int]:
    if cfg.layers:
        bad = [i for i in cfg.layers if i >= n_layers]
        if bad:
            raise UserError(f"DropLayers: the model has {n_layers} layers (0..{n_layers - 1}); "
                            f"{bad} do not exist")
        return sorted(cfg.layers)
    assert cfg.keep is not None
    k = max(1, round(cfg.keep * n_layers))
    if k == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})


@register_transform(DropLayers)
def _drop_layers(handle: ModelHandle, cfg: DropLayers) -> ModelHandle:
    model = need_model(handle, "DropLayers")
    arch = _family(model, cfg)
    keep = layers_to_keep(len(arch.blocks(model)), cfg)
    new = clone(model)
    arch.keep_blocks(new, keep)
    arch.record_layers(new.config, keep)
    return handle.derive(model=new.eval())
