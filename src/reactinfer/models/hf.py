"""`from_pretrained` for a task: shared by the Hugging Face directory loader and the
artifact loader (an artifact stores its float weights as a Hugging Face directory)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def hf_model_class(task: str) -> Any:
    import transformers

    return {"embedding": transformers.AutoModel,
            "causal-lm": transformers.AutoModelForCausalLM,
            "classification": transformers.AutoModelForSequenceClassification}[task]


def hf_from_pretrained(task: str, directory: Path, **kw: Any) -> Any:
    """`from_pretrained` for `task`; models whose config records a structure transformers
    cannot express (a head-pruned BERT: `react_structure`) are rebuilt by their family
    adapter (models.arch)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    if getattr(config, "react_structure", None):
        from .arch import from_pretrained_restructured

        return from_pretrained_restructured(hf_model_class(task), directory, config)
    return hf_model_class(task).from_pretrained(directory, **kw)
