"""Qwen3 decoders: Llama's layout with per-head q/k RMSNorms and an explicit head_dim."""
from __future__ import annotations

from .base import GGUFLayout, register_family
from .llama import LLAMA_GGUF, LlamaAdapter

QWEN3_GGUF = GGUFLayout(
    # llama.cpp's qwen3 graph uses rotate-half RoPE as Hugging Face stores it (no permute)
    model_types=("qwen3",), arch="qwen3", arch_uneven=None,
    block=LLAMA_GGUF.block, embed=LLAMA_GGUF.embed, norm=LLAMA_GGUF.norm,
    lm_head=LLAMA_GGUF.lm_head,
    blocks=LLAMA_GGUF.blocks + (("self_attn.q_norm", "attn_q_norm"),
                                ("self_attn.k_norm", "attn_k_norm")))

QWEN3 = register_family(LlamaAdapter(
    name="qwen3", label="Qwen3", model_types=("qwen3",), bodies=("model",), layers="layers",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
    ffn_width=("mlp.intermediate_size",),
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    head_dim="self_attn.head_dim", cache_index="self_attn.layer_idx", uses_cache=True,
    gguf=QWEN3_GGUF))
