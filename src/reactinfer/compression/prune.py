"""Pruning: unstructured magnitude, 2:4 semi-structured, and structured pruning that
physically removes attention heads, FFN neurons and whole transformer layers from
BERT-family and Llama-family Hugging Face models.

Structured pruning is uniform across layers (every layer keeps the same number of heads
and neurons), because a Hugging Face config holds one size per model. The config is
updated so the pruned model is an ordinary, smaller model:
- Llama: `num_attention_heads`, `num_key_value_heads`, `head_dim`, `intermediate_size`,
  `num_hidden_layers` express everything; plain `from_pretrained` reloads it.
- BERT: `intermediate_size` and `num_hidden_layers` do; but transformers' BERT computes
  the head size as hidden_size / num_attention_heads and has no head_dim, so fewer heads
  of the same size cannot be expressed. Head-pruned BERTs record
  `config.react_structure = {"attention_heads": k, "head_dim": d}`; ReAct's loaders
  rebuild the smaller attention from it (`from_pretrained_restructured`) and then run
  the ordinary BERT code. Plain `BertModel.from_pretrained` refuses such a directory
  (shape mismatch), it never loads it wrongly.

Masks (unstructured, 2:4) are stored as zeros in float weights: smaller when compressed,
not faster in dense kernels; the report says so.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import UserError
from ..core.transform import TransformConfig, register_transform
from ._common import (blocks, calibration_texts, check_choice, check_fraction, check_names,
                      clone, family, linear_names, model_batches, need_model, resolve_names,
                      run_model)

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


@dataclasses.dataclass(frozen=True)
class PruneHeads(_Structured):
    """Remove attention heads: every layer keeps the `keep` fraction of its heads (for
    grouped-query attention: of the query heads in each key/value group)."""


@dataclasses.dataclass(frozen=True)
class DropLayers(TransformConfig):
    """Remove whole transformer layers: keep the `keep` fraction, evenly spaced (first and
    last kept), or exactly the 0-based `layers` listed."""
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
    names = [n for n in linear_names(model) if id(model.get_submodule(n).weight) not in tied]
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
    weights = [new.get_submodule(n).weight for n in names]
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
    bad = [n for n in names if model.get_submodule(n).in_features % 4]
    if bad:
        raise UserError(f"Prune2of4: input features of {', '.join(bad[:4])} are not a multiple "
                        "of 4; exclude those layers")
    new = clone(model)
    with torch.no_grad():
        for n in names:
            w = new.get_submodule(n).weight  # (N, K)
            groups = w.view(w.shape[0], -1, 4)  # (N, K/4, 4)
            smallest = groups.abs().argsort(-1)[..., :2]
            groups.scatter_(-1, smallest, 0.0)
    return handle.derive(model=new.eval(), metrics={**handle.metrics, "sparsity": sparsity(new)})


# -- structured: surgery helpers ---------------------------------------------------------------

def _rows(lin: torch.nn.Linear, idx: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None,
                          dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[idx])
    return new


def _cols(lin: torch.nn.Linear, idx: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None,
                          dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def _ffn(fam: str, layer: torch.nn.Module) -> tuple[list[torch.nn.Linear], torch.nn.Linear]:
    """(input projections whose rows are neurons, output projection whose columns are)."""
    if fam == "bert":
        return [layer.intermediate.dense], layer.output.dense
    return [layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj


def _attn_out(fam: str, layer: torch.nn.Module) -> torch.nn.Linear:
    return layer.attention.output.dense if fam == "bert" else layer.self_attn.o_proj


def _head_dim(fam: str, model: torch.nn.Module) -> int:
    if fam == "bert":
        return blocks(model)[0].attention.self.attention_head_size
    return blocks(model)[0].self_attn.head_dim


def _activation_norms(handle: ModelHandle, model: torch.nn.Module, cfg: _Structured,
                      pick: Callable[[torch.nn.Module], torch.nn.Module]) -> list[torch.Tensor]:
    """Mean |input| per feature of `pick(layer)` for each layer, over real tokens only."""
    layers = blocks(model)
    sums = [torch.zeros(pick(layer).in_features, dtype=torch.float64) for layer in layers]
    count = [0]
    mask_now: list[torch.Tensor] = []

    def hook(i: int) -> Callable:
        def fn(_m: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().abs().double()  # (B, T, F)
            m = mask_now[0].unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            sums[i] += (x * m).sum((0, 1))
        return fn

    hooks = [pick(layer).register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for batch in model_batches(handle, calibration_texts(cfg.data, cfg.n_samples)):
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
    fam = family(model, "PruneFFN")
    acts = _activation_norms(handle, model, cfg, lambda layer: _ffn(fam, layer)[1]) \
        if cfg.importance == "activation" else None
    new = clone(model)
    size = new.config.intermediate_size
    k = max(1, round(cfg.keep * size))
    for i, layer in enumerate(blocks(new)):
        ins, out = _ffn(fam, layer)
        w_out = out.weight.detach().norm(dim=0)  # (I,)
        if acts is not None:
            scores = acts[i] * w_out
        else:
            scores = sum(lin.weight.detach().norm(dim=1) for lin in ins) * w_out
        idx = _top(scores, k)
        if fam == "bert":
            layer.intermediate.dense = _rows(ins[0], idx)
            layer.output.dense = _cols(out, idx)
        else:
            layer.mlp.gate_proj, layer.mlp.up_proj = _rows(ins[0], idx), _rows(ins[1], idx)
            layer.mlp.down_proj = _cols(out, idx)
            layer.mlp.intermediate_size = k
    new.config.intermediate_size = k
    return handle.derive(model=new.eval())


# -- heads -------------------------------------------------------------------------------------

def _head_scores(fam: str, layer: torch.nn.Module, d: int, act: torch.Tensor | None
                 ) -> torch.Tensor:
    """One score per query head: weight magnitude of its Q (and K, V when one K/V per
    head) rows and O columns, or its mean |context| × ||O columns||."""
    o = _attn_out(fam, layer).weight.detach()  # (H, n_heads * d)
    n = o.shape[1] // d
    o_norm = o.view(o.shape[0], n, d).norm(dim=(0, 2))  # (n,)
    if act is not None:
        return act.view(n, d).mean(-1) * o_norm
    if fam == "bert":
        sa = layer.attention.self
        qkv = [sa.query, sa.key, sa.value]
    else:
        sa = layer.self_attn
        qkv = [sa.q_proj] + ([sa.k_proj, sa.v_proj] if sa.num_key_value_groups == 1 else [])
    rows = sum(lin.weight.detach().view(n, d, -1).norm(dim=(1, 2)) ** 2 for lin in qkv)
    return (rows + o_norm**2).sqrt()


def _prune_layer_heads(fam: str, layer: torch.nn.Module, idx: torch.Tensor, d: int,
                       kv_idx: torch.Tensor | None) -> None:
    rows = (idx[:, None] * d + torch.arange(d)).flatten()
    if fam == "bert":
        sa = layer.attention.self
        sa.query, sa.key, sa.value = _rows(sa.query, rows), _rows(sa.key, rows), \
            _rows(sa.value, rows)
        sa.num_attention_heads, sa.all_head_size = len(idx), len(idx) * d
        layer.attention.output.dense = _cols(layer.attention.output.dense, rows)
        return
    sa = layer.self_attn
    sa.q_proj = _rows(sa.q_proj, rows)
    sa.o_proj = _cols(sa.o_proj, rows)
    if kv_idx is not None:
        kv_rows = (kv_idx[:, None] * d + torch.arange(d)).flatten()
        sa.k_proj, sa.v_proj = _rows(sa.k_proj, kv_rows), _rows(sa.v_proj, kv_rows)
        sa.num_key_value_groups = 1
    else:
        sa.num_key_value_groups = len(idx) // (sa.k_proj.out_features // d)


@register_transform(PruneHeads)
def _prune_heads(handle: ModelHandle, cfg: PruneHeads) -> ModelHandle:
    model = need_model(handle, "PruneHeads")
    fam = family(model, "PruneHeads")
    acts = _activation_norms(handle, model, cfg, lambda layer: _attn_out(fam, layer)) \
        if cfg.importance == "activation" else None
    new = clone(model)
    conf = new.config
    d = _head_dim(fam, new)
    n_heads = _attn_out(fam, blocks(new)[0]).in_features // d
    n_kv = getattr(conf, "num_key_value_heads", None) or n_heads
    group = n_heads // n_kv  # query heads per key/value head
    per_group = max(1, round(cfg.keep * group)) if group > 1 else None
    k = per_group * n_kv if per_group else max(1, round(cfg.keep * n_heads))
    for i, layer in enumerate(blocks(new)):
        scores = _head_scores(fam, layer, d, None if acts is None else acts[i])
        if per_group:  # grouped-query attention: the same count kept in every group
            idx = torch.cat([_top(scores[g * group:(g + 1) * group], per_group) + g * group
                             for g in range(n_kv)])
            _prune_layer_heads(fam, layer, idx, d, None)
        else:
            idx = _top(scores, k)
            _prune_layer_heads(fam, layer, idx, d, idx if fam == "llama" else None)
    if fam == "llama":
        conf.head_dim, conf.num_attention_heads = d, k
        conf.num_key_value_heads = n_kv if per_group else k
    else:
        conf.react_structure = {"attention_heads": k, "head_dim": d}
    return handle.derive(model=new.eval())


def from_pretrained_restructured(cls: Any, directory: Any, config: Any, **kw: Any) -> Any:
    """Load a head-pruned BERT: build the model from its config, shrink the attention to
    the recorded heads, then load the safetensors weights strictly."""
    from pathlib import Path

    from safetensors.torch import load_file

    s = config.react_structure
    model = cls.from_config(config)
    fam = family(model, "loading a head-pruned model")
    for layer in blocks(model):
        _prune_layer_heads(fam, layer, torch.arange(s["attention_heads"]), s["head_dim"], None)
    files = sorted(Path(directory).glob("*.safetensors"))
    if len(files) != 1:
        raise UserError(f"{directory}: expected one model.safetensors, found {len(files)}")
    state = load_file(str(files[0]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise UserError(f"{directory} does not match its config: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}; re-create the artifact")
    return model.eval()


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
    fam = family(model, "DropLayers")
    keep = layers_to_keep(len(blocks(model)), cfg)
    new = clone(model)
    layers = blocks(new)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    if fam == "bert":
        new_body = new.get_submodule(_body_name(new))
        new_body.encoder.layer = kept
    else:
        new.get_submodule(_body_name(new)).layers = kept
        for j, layer in enumerate(kept):  # the KV cache is indexed by position in the stack
            layer.self_attn.layer_idx = j
    conf = new.config
    if getattr(conf, "layer_types", None):
        conf.layer_types = [conf.layer_types[i] for i in keep]
    conf.num_hidden_layers = len(keep)
    return handle.derive(model=new.eval())


def _body_name(model: torch.nn.Module) -> str:
    for attr in ("bert", "roberta", "electra", "model"):
        inner = getattr(model, attr, None)
        if inner is not None and hasattr(inner, "config"):
            return attr
    return ""
