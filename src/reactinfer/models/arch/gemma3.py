"""Gemma 3 text decoders (model_type gemma3_text, also what transformers makes of a gemma3
GGUF): Llama's layout with q/k norms, sliding and full layers (config.layer_types).

Not the multimodal `gemma3` (its text model and config sit one level down). No GGUF
writing: llama.cpp's gemma3 wants norms stored as 1 + w, soft-capping and two RoPE bases,
which the writer does not do."""
from __future__ import annotations

from .base import register_family
from .llama import LlamaAdapter

GEMMA3 = register_family(LlamaAdapter(
    name="gemma3", label="Gemma 3", model_types=("gemma3_text",), bodies=("model",),
    layers="layers", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
    ffn_width=("mlp.intermediate_size",),
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    head_dim="self_attn.head_dim", cache_index="self_attn.layer_idx", uses_cache=True))
