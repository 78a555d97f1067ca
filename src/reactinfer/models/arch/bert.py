"""BERT-family encoders: BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .base import FamilyAdapter, get_path, register_family

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class BertAdapter(FamilyAdapter):
    def on_heads_kept(self, layer: torch.nn.Module, n_heads: int, n_kv: int, d: int) -> None:
        # BertSelfAttention reshapes by these two; its config cannot express them
        # (head size = hidden / heads), so record_heads keeps the default react_structure.
        sa = get_path(layer, "attention.self")
        sa.num_attention_heads, sa.all_head_size = n_heads, n_heads * d


BERT = register_family(BertAdapter(
    name="bert", label="BERT-family",
    model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
    bodies=("bert", "roberta", "electra"), layers="encoder.layer",
    ffn_in=("intermediate.dense",), ffn_out="output.dense",
    q="attention.self.query", k="attention.self.key", v="attention.self.value",
    o="attention.output.dense", head_dim="attention.self.attention_head_size",
    # embeddings → encoder.layer → pooler, so a later stage can take hidden states as
    # inputs_embeds; not electra (its embeddings_project would run again in every stage)
    pipeline_types=("bert", "roberta", "xlm-roberta"), stage_drop=("pooler",)))
