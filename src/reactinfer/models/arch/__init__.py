"""Model families: one `FamilyAdapter` per family says where a Hugging Face model keeps
its blocks, FFN and attention, how its config records pruning, how the pipeline split
cuts it and how GGUF names its tensors. Adding a family is one `register_family` call
(see bert.py, llama.py)."""
from . import bert, llama  # noqa: F401  (register the built-in families)
from .base import (
    FAMILIES,
    FamilyAdapter,
    GGUFLayout,
    adapter_for,
    find_adapter,
    from_pretrained_restructured,
    get_path,
    gguf_types,
    keep_cols,
    keep_rows,
    model_kind,
    register_family,
    splittable_types,
)

__all__ = ["FAMILIES", "FamilyAdapter", "GGUFLayout", "adapter_for", "find_adapter",
           "from_pretrained_restructured", "get_path", "gguf_types", "keep_cols", "keep_rows",
           "model_kind", "register_family", "splittable_types"]
