"""The flags that say how to load a user's model file, shared by every command that takes
one: an ONNX file of any registered task needs `--task`, and an image model's ONNX file
its preprocessing (`--preprocess FILE.json`, or a preprocess.json beside it)."""
from __future__ import annotations

import argparse
from typing import Any


def add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None,
                   help="the task of a model file that does not record it (an ONNX file "
                        "of your own): embedding, classification, causal-lm or "
                        "image-classification")
    p.add_argument("--preprocess", default=None, metavar="FILE.json",
                   help="an image model's preprocessing (size, resize, mean, std, channels) "
                        "as JSON; default: preprocess.json beside the model file")


def load_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The load() keyword arguments the flags give (none when not given)."""
    return {k: v for k, v in (("task", a.task), ("preprocess", a.preprocess)) if v is not None}


def loaded(model: str, a: argparse.Namespace) -> Any:
    """`model` as the command should pass it on: as it is, or, when the flags say how to
    load it, the loaded handle."""
    kw = load_kwargs(a)
    if not kw:
        return model
    from ..models import load

    return load(model, **kw)


def labels_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """`labels=` from --labels FILE (one name per line, or a JSON list), when given."""
    if getattr(a, "labels", None) is None:
        return {}
    from ..core.images import read_labels

    return {"labels": read_labels(a.labels)}
