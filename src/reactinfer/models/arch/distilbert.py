"""DistilBERT encoders: `transformer.layer`, lin1/lin2 FFN, q_lin/k_lin/v_lin/out_lin."""
from __future__ import annotations

from .base import FamilyAdapter, register_family

DISTILBERT = register_family(FamilyAdapter(
    name="distilbert", label="DistilBERT", model_types=("distilbert",),
    bodies=("distilbert",), layers="transformer.layer",
    ffn_in=("ffn.lin1",), ffn_out="ffn.lin2", ffn_config="hidden_dim",
    q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin",
    # its attention reshapes by the head size alone; n_heads only describes it. The config
    # derives the head size from dim / n_heads: head-pruned models record react_structure
    head_dim="attention.attention_head_size", head_count=("attention.n_heads",)))
