"""The family adapter: where a family of Hugging Face transformer models keeps its
blocks, FFN and attention linears, and how its config records a smaller structure.

Compression (structured pruning), the pipeline split (cluster), GGUF conversion
(backends) and the loaders ask an adapter instead of matching on `model_type`, so a
new family is one `FamilyAdapter` registered with `register_family`.

Paths are dotted attribute paths: `layers` from the body (the bare transformer under
any task head), the per-block fields from one block. Surgery helpers here shrink
Linears; they never look at which family they serve.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...core.errors import UserError

if TYPE_CHECKING:
    import torch

FAMILIES: dict[str, FamilyAdapter] = {}


def _model_type(model: Any) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def get_path(root: Any, path: str) -> Any:
    """`root.a.b` for path "a.b" (modules or plain attributes); root itself for ""."""
    return functools.reduce(getattr, path.split("."), root) if path else root


def set_path(root: Any, path: str, value: Any) -> None:
    parent, _, child = path.rpartition(".")
    setattr(get_path(root, parent), child, value)


# -- Linear surgery --------------------------------------------------------------------------

def keep_rows(lin: torch.nn.Linear, idx: torch.Tensor) -> torch.nn.Linear:
    """A Linear with only the output features `idx` of `lin` (weight (N, K) → (len, K))."""
    import torch

    new = torch.nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None,
                          dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[idx])
    return new


def keep_cols(lin: torch.nn.Linear, idx: torch.Tensor) -> torch.nn.Linear:
    """A Linear with only the input features `idx` of `lin` (weight (N, K) → (N, len))."""
    import torch

    new = torch.nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None,
                          dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def _row_view(lin: torch.nn.Linear, start: int, stop: int) -> torch.nn.Linear:
    """Rows start:stop of `lin` as a Linear sharing its weight (no bias), for reading
    one part of a fused projection; surgery replaces the fused Linear itself."""
    import torch

    view = torch.nn.Linear(lin.in_features, stop - start, bias=False, device="meta")
    view.weight = torch.nn.Parameter(lin.weight.detach()[start:stop], requires_grad=False)
    return view


def _head_rows(idx: torch.Tensor, d: int) -> torch.Tensor:
    import torch

    return (idx[:, None] * d + torch.arange(d)).flatten()  # (len(idx) * d,)


# -- GGUF ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GGUFLayout:
    """Where llama.cpp's tensors are in the Hugging Face state dict. `blocks` pairs a
    module path inside block i (prefix `block`, with `{i}`) with its GGUF name, in the
    order they are written; `rotate_half` names the GGUF tensors whose rows HF keeps in
    rotate-half order (llama.cpp wants interleaved pairs)."""
    model_types: tuple[str, ...]  # the ones llama.cpp's graph runs unchanged
    arch: str  # GGUF architecture when every layer has the same sizes
    arch_uneven: str | None  # when per-layer head / FFN counts differ (None: not written)
    block: str
    embed: str
    norm: str
    lm_head: str
    blocks: tuple[tuple[str, str], ...]
    rotate_half: tuple[str, ...] = ()

    def key(self, i: int, gguf_name: str) -> str:
        """The state-dict key of block i's tensor that GGUF calls `gguf_name`."""
        hf = dict((gg, hf) for hf, gg in self.blocks)[gguf_name]
        return f"{self.block.format(i=i)}{hf}.weight"


# -- the adapter -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FamilyAdapter:
    """One family: its config `model_type`s and where its parts are. Which module
    attributes count heads is data (`head_count`) or, where it takes more, an override of
    `on_heads_kept`; when the config can say the head count, subclasses override
    `record_heads`. Fused projections are data too: `qkv` (one Linear with the q, k and v
    rows, in that order) and `ffn_chunks` (gate and up stacked in one Linear)."""
    name: str  # registry key
    label: str  # in messages: "BERT-family"
    model_types: tuple[str, ...]  # config.model_type values of the family
    bodies: tuple[str, ...]  # attributes holding the body under a task head
    layers: str  # the blocks' ModuleList, from the body
    ffn_in: tuple[str, ...]  # per block: Linears whose rows are FFN neurons
    ffn_out: str  # per block: the Linear whose columns are
    q: str  # per block: attention projections ("" where `qkv` holds them)
    k: str
    v: str
    o: str
    head_dim: str  # per block: the attribute holding the head size
    qkv: str | None = None  # per block: one Linear whose rows are q, then k, then v heads
    ffn_chunks: int = 1  # neuron groups stacked in each `ffn_in` Linear (gate | up: 2)
    # per block: attributes that hold the query head count (None: on_heads_kept says)
    head_count: tuple[str, ...] | None = None
    no_heads: str = ""  # why this family's heads cannot be pruned ("": they can)
    keep_first: str = ""  # why block 0 must stay when layers are dropped ("": it need not)
    ffn_config: str = "intermediate_size"  # config key of the FFN width
    ffn_width: tuple[str, ...] = ()  # per block: attributes that store the FFN width
    cache_index: str | None = None  # per block: its index into the KV cache
    uses_cache: bool = False  # forward takes use_cache (decoders); we pass False
    pipeline_types: tuple[str, ...] = ()  # model types cut into pipeline stages
    stage_embeddings: str = "embeddings"  # body attribute later stages pass through
    stage_drop: tuple[str, ...] = ()  # body attributes no stage keeps (we mean-pool)
    gguf: GGUFLayout | None = None
    classes: tuple[str, ...] = ()  # model class names, for models without a model_type

    # -- finding parts ----------------------------------------------------------------

    def matches(self, model: Any) -> bool:
        mt = _model_type(model)
        if mt:
            return mt in self.model_types
        return any(c.__name__ in self.classes for c in type(model).__mro__)

    def body(self, model: torch.nn.Module) -> torch.nn.Module:
        """The transformer body (BertModel / LlamaModel) under any task head."""
        for attr in self.bodies:
            inner = getattr(model, attr, None)
            if inner is not None and hasattr(inner, "config"):
                return inner
        return model

    def blocks(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return get_path(self.body(model), self.layers)

    def set_blocks(self, model: torch.nn.Module, blocks: torch.nn.ModuleList) -> None:
        set_path(self.body(model), self.layers, blocks)
        if self.cache_index:  # the KV cache is indexed by position in the stack
            for j, layer in enumerate(blocks):
                set_path(layer, self.cache_index, j)

    def why_not(self, part: str) -> str | None:
        """Why a transform that reshapes `part` ("layers", "ffn", "heads") cannot apply to
        this family, or None when it can."""
        return f"{self.label}: {self.no_heads}" if part == "heads" and self.no_heads else None

    def ffn(self, layer: torch.nn.Module) -> tuple[list[torch.nn.Linear], torch.nn.Linear]:
        """(input projections whose rows are neurons, output projection whose columns are);
        a fused input projection comes as one read-only view per neuron group."""
        out = get_path(layer, self.ffn_out)
        ins = [get_path(layer, p) for p in self.ffn_in]
        if self.ffn_chunks > 1:
            n = out.in_features
            ins = [_row_view(lin, c * n, (c + 1) * n) for lin in ins
                   for c in range(self.ffn_chunks)]
        return ins, out

    def attention(self, layer: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear,
                                                         torch.nn.Linear, torch.nn.Linear]:
        """(q, k, v, out) projections of one block (read-only views of a fused `qkv`)."""
        o = get_path(layer, self.o)
        if self.qkv is None:
            return get_path(layer, self.q), get_path(layer, self.k), get_path(layer, self.v), o
        qkv, nq = get_path(layer, self.qkv), o.in_features  # q rows: heads × head size
        nkv = (qkv.out_features - nq) // 2
        return (_row_view(qkv, 0, nq), _row_view(qkv, nq, nq + nkv),
                _row_view(qkv, nq + nkv, nq + 2 * nkv), o)

    def attn_out(self, layer: torch.nn.Module) -> torch.nn.Linear:
        return get_path(layer, self.o)

    def layer_head_dim(self, layer: torch.nn.Module) -> int:
        return int(get_path(layer, self.head_dim))

    def forward_kwargs(self) -> dict[str, Any]:
        """Extra forward arguments for calibration passes (no KV cache to build)."""
        return {"use_cache": False} if self.uses_cache else {}

    def can_split(self, model: Any) -> bool:
        """Whether the pipeline split may cut `model` into stages (cluster/pipeline.py)."""
        return _model_type(model) in self.pipeline_types

    def gguf_layout(self, model: Any) -> GGUFLayout | None:
        """Where `model`'s tensors go in a GGUF file; None when llama.cpp cannot run it."""
        ok = self.gguf is not None and _model_type(model) in self.gguf.model_types
        return self.gguf if ok else None

    # -- surgery ----------------------------------------------------------------------

    def keep_ffn(self, layer: torch.nn.Module, idx: torch.Tensor) -> None:
        """Keep FFN neurons `idx` of one block."""
        import torch

        out = get_path(layer, self.ffn_out)
        n = out.in_features
        rows = torch.cat([idx + c * n for c in range(self.ffn_chunks)])  # in every group
        for path in self.ffn_in:
            set_path(layer, path, keep_rows(get_path(layer, path), rows))
        set_path(layer, self.ffn_out, keep_cols(out, idx))
        for path in self.ffn_width:
            set_path(layer, path, len(idx))

    def keep_heads(self, layer: torch.nn.Module, idx: torch.Tensor, d: int,
                   kv_idx: torch.Tensor | None) -> None:
        """Keep query heads `idx` (head size d) of one block, and key/value heads
        `kv_idx` (None: keep every K/V head, grouped-query attention)."""
        import torch

        q, k, v, o = self.attention(layer)
        rows = _head_rows(idx, d)
        n_kv = k.out_features // d
        kv_rows = _head_rows(kv_idx, d) if kv_idx is not None else torch.arange(n_kv * d)
        if self.qkv is not None:  # one Linear: q rows, then k rows, then v rows
            nq = q.out_features
            fused = torch.cat([rows, nq + kv_rows, nq + n_kv * d + kv_rows])
            set_path(layer, self.qkv, keep_rows(get_path(layer, self.qkv), fused))
        else:
            set_path(layer, self.q, keep_rows(q, rows))
            if kv_idx is not None:
                set_path(layer, self.k, keep_rows(k, kv_rows))
                set_path(layer, self.v, keep_rows(v, kv_rows))
        set_path(layer, self.o, keep_cols(o, rows))
        self.on_heads_kept(layer, len(idx), len(kv_idx) if kv_idx is not None else n_kv, d)

    def on_heads_kept(self, layer: torch.nn.Module, n_heads: int, n_kv: int, d: int) -> None:
        """Update the block's attention attributes that count heads (`head_count`)."""
        if self.head_count is None:
            raise NotImplementedError(f"{type(self).__name__} must say which attributes of its "
                                      "attention count heads (head_count, or override "
                                      "on_heads_kept)")
        for path in self.head_count:
            set_path(layer, path, n_heads)

    def keep_blocks(self, model: torch.nn.Module, keep: Sequence[int]) -> None:
        import torch

        if self.keep_first and 0 not in keep:
            raise UserError(f"DropLayers: {self.label} models must keep layer 0 "
                            f"({self.keep_first}); list it in layers=")
        layers = self.blocks(model)
        self.set_blocks(model, torch.nn.ModuleList([layers[i] for i in keep]))

    # -- config -----------------------------------------------------------------------

    def record_ffn(self, config: Any, width: int) -> None:
        setattr(config, self.ffn_config, width)

    def record_heads(self, config: Any, n_heads: int, n_kv: int, d: int) -> None:
        """Default, for configs that derive the head size from hidden_size / heads and
        so cannot express fewer heads of the same size: the loader rebuilds the smaller
        attention from `react_structure` (see from_pretrained_restructured)."""
        config.react_structure = {"attention_heads": n_heads, "head_dim": d}

    def record_layers(self, config: Any, keep: Sequence[int]) -> None:
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in keep]
        config.num_hidden_layers = len(keep)


# -- the registry ----------------------------------------------------------------------------

def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add a family; a model type belongs to one family only."""
    taken = {t for a in FAMILIES.values() for t in a.model_types + a.classes}
    clash = [t for t in adapter.model_types + adapter.classes if t in taken]
    if adapter.name in FAMILIES or clash:
        raise ValueError(f"family {adapter.name!r}: name or model types / classes {clash} already "
                         "registered")
    FAMILIES[adapter.name] = adapter
    return adapter


def model_kind(model: Any) -> str:
    """How messages name a model: its config's model_type, else its class."""
    return _model_type(model) or type(model).__name__


def find_adapter(model: Any) -> FamilyAdapter | None:
    for adapter in FAMILIES.values():
        if adapter.matches(model):
            return adapter
    return None


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def no_family(model: Any, what: str = "this operation") -> str:
    """Why `what` cannot run on a model of no registered family: the families it supports."""
    labels = list(dict.fromkeys(a.label for a in FAMILIES.values()))
    types = ", ".join(mt for a in FAMILIES.values() for mt in a.model_types)
    return (f"{what} supports {_and(labels)} Hugging Face models (model_type {types}); this "
            f"is {model_kind(model)!r}. Use such a model, or describe its family with "
            "reactinfer.models.arch.register_family")


def adapter_for(model: Any, what: str = "this operation") -> FamilyAdapter:
    """The adapter of `model`'s family, or a UserError naming the supported ones."""
    adapter = find_adapter(model)
    if adapter is None:
        raise UserError(no_family(model, what))
    return adapter


def family_refuses(model: Any, part: str) -> str | None:
    """Why a transform that reshapes `part` of a transformer ("layers", "ffn", "heads")
    cannot apply to `model`, in one line; None when its family adapter allows it."""
    if model is None:
        return "there is no torch model to reshape (the model is an engine file)"
    adapter = find_adapter(model)
    if adapter is None:
        return (f"no model family adapter knows {model_kind(model)!r} models, so its layers, "
                "FFN and heads cannot be found (reactinfer.models.arch.register_family "
                "describes a family)")
    return adapter.why_not(part)


def gguf_types() -> tuple[str, ...]:
    return tuple(mt for a in FAMILIES.values() if a.gguf for mt in a.gguf.model_types)


def splittable_types() -> tuple[str, ...]:
    return tuple(mt for a in FAMILIES.values() for mt in a.pipeline_types)


# -- loading a recorded structure --------------------------------------------------------------

def from_pretrained_restructured(cls: Any, directory: Any, config: Any, **_: Any) -> Any:
    """Load a head-pruned model whose config records `react_structure` (one K/V head per
    query head): build it from its config, shrink every block's attention to the first
    `attention_heads` heads, then load the safetensors weights strictly."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    s = config.react_structure
    model = cls.from_config(config)
    adapter = adapter_for(model, "loading a head-pruned model")
    idx = torch.arange(s["attention_heads"])
    for layer in adapter.blocks(model):
        adapter.keep_heads(layer, idx, s["head_dim"], idx)
    files = sorted(Path(directory).glob("*.safetensors"))
    if len(files) != 1:
        raise UserError(f"{directory}: expected one model.safetensors, found {len(files)}")
    state = load_file(str(files[0]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a head tied to the embedding is saved once, under the embedding's name
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [m for m in missing
               if not m.endswith("position_ids") and id(params.get(m)) not in loaded]
    if missing or unexpected:
        raise UserError(f"{directory} does not match its config: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}; re-create the artifact")
    return model.eval()
