"""Model families: one `FamilyAdapter` per family says where a Hugging Face model keeps
its blocks, FFN and attention, how its config records pruning, how the pipeline split
cuts it and how GGUF names its tensors. Adding a family is one `register_family` call
(see bert.py, llama.py; distilbert.py for one that is data only)."""
# register the built-in families (messages list them in this order)
from . import bert, distilbert, gemma3, llama, modernbert, mpnet, phi3, qwen3  # noqa: F401
from .base import (
    FAMILIES,
    FamilyAdapter,
    GGUFLayout,
    adapter_for,
    family_refuses,
    find_adapter,
    from_pretrained_restructured,
    get_path,
    gguf_types,
    keep_cols,
    keep_rows,
    model_kind,
    no_family,
    register_family,
    splittable_types,
)

__all__ = ["FAMILIES", "FamilyAdapter", "GGUFLayout", "adapter_for", "family_refuses",
           "find_adapter", "from_pretrained_restructured", "get_path", "gguf_types",
           "keep_cols", "keep_rows", "model_kind", "no_family", "register_family",
           "splittable_types"]
