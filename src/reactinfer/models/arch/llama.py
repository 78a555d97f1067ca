"""Llama-family decoders: Llama, Mistral, Qwen2 (grouped-query attention, gated FFN)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .base import FamilyAdapter, GGUFLayout, get_path, register_family

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class LlamaAdapter(FamilyAdapter):
    def on_heads_kept(self, layer: torch.nn.Module, n_heads: int, n_kv: int, d: int) -> None:
        attn = get_path(layer, "self_attn")
        attn.num_key_value_groups = n_heads // n_kv  # repeat_kv's factor
        if hasattr(attn, "num_key_value_heads"):  # Phi-3 slices its fused qkv by it
            attn.num_key_value_heads = n_kv

    def record_heads(self, config: Any, n_heads: int, n_kv: int, d: int) -> None:
        # The config expresses it all: plain from_pretrained reloads the pruned model.
        config.head_dim, config.num_attention_heads = d, n_heads
        config.num_key_value_heads = n_kv


LLAMA_GGUF = GGUFLayout(
    # mistral's sliding window and qwen2's q/k/v biases need graphs of their own
    model_types=("llama",), arch="llama",
    arch_uneven="deci",  # NVIDIA's pruned Llamas: per-layer head and FFN counts
    block="model.layers.{i}.", embed="model.embed_tokens.weight", norm="model.norm.weight",
    lm_head="lm_head.weight",
    blocks=(("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down")),
    rotate_half=("attn_q", "attn_k"))

LLAMA = register_family(LlamaAdapter(
    name="llama", label="Llama-family", model_types=("llama", "mistral", "qwen2"),
    bodies=("model",), layers="layers",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
    ffn_width=("mlp.intermediate_size",),
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    head_dim="self_attn.head_dim", cache_index="self_attn.layer_idx", uses_cache=True,
    gguf=LLAMA_GGUF))
