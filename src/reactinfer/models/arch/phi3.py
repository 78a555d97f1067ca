"""Phi-3 decoders: fused qkv_proj and gate_up_proj. The config says the head counts
(LlamaAdapter.record_heads), and the attention slices its fused projection by them.

No GGUF writing: llama.cpp's phi3 takes the fused tensors, which the writer does not
lay out."""
from __future__ import annotations

from .base import register_family
from .llama import LlamaAdapter

PHI3 = register_family(LlamaAdapter(
    name="phi3", label="Phi-3", model_types=("phi3",), bodies=("model",), layers="layers",
    ffn_in=("mlp.gate_up_proj",), ffn_out="mlp.down_proj", ffn_chunks=2,  # gate | up
    q="", k="", v="", qkv="self_attn.qkv_proj", o="self_attn.o_proj",
    head_dim="self_attn.head_dim", cache_index="self_attn.layer_idx", uses_cache=True))
