"""MPNet encoders (all-mpnet-base-v2 and kin): BERT's block layout under `attention.attn`."""
from __future__ import annotations

from .base import FamilyAdapter, register_family

MPNET = register_family(FamilyAdapter(
    name="mpnet", label="MPNet", model_types=("mpnet",), bodies=("mpnet",),
    layers="encoder.layer", ffn_in=("intermediate.dense",), ffn_out="output.dense",
    q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", o="attention.attn.o",
    head_dim="attention.attn.attention_head_size",
    head_count=("attention.attn.num_attention_heads",),
    # every layer adds the encoder's one relative-position bias, one channel per head:
    # a layer that kept other heads would add the wrong channels
    no_heads="the relative position bias is shared by every layer's heads, so heads cannot "
             "be removed layer by layer"))
