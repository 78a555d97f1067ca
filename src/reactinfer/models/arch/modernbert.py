"""ModernBERT encoders: fused Wqkv attention and a gated (GLU) FFN in one Wi Linear."""
from __future__ import annotations

from .base import FamilyAdapter, register_family

MODERNBERT = register_family(FamilyAdapter(
    name="modernbert", label="ModernBERT", model_types=("modernbert",), bodies=("model",),
    layers="layers", ffn_in=("mlp.Wi",), ffn_out="mlp.Wo", ffn_chunks=2,  # Wi: input | gate
    q="", k="", v="", qkv="attn.Wqkv", o="attn.Wo", head_dim="attn.head_dim",
    # its attention reshapes by the head size alone; the config derives the head size
    # from hidden / heads, so head-pruned models record react_structure
    head_count=(),
    keep_first="layer 0 has no attention norm, and the config rebuilds whichever layer "
               "comes first that way"))
