"""Checks of a user's classifier against its input, made once when it loads, so a model
that does not fit its preprocessing (or gives no (N, classes) logits) is one line naming
both, not a traceback from deep inside a benchmark, an export or a server.

- a torch module runs one sample batch (two blank images, or two short texts);
- an ONNX file's graph is read: one float32 input (N, C, H, W) whose static sizes match
  the preprocessing, one output (N, classes);
- class names (`labels`) are checked against the classes the model gives.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import UserError
from ..core.handle import takes_images
from ..core.images import CHANNELS, ImagePreprocess, check_labels

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

SAMPLE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Hi")


def sample_pixels(pre: ImagePreprocess) -> np.ndarray:
    """(2, C, size, size) float32: two blank images through the model's preprocessing."""
    blank = np.zeros((pre.size, pre.size, 3), np.uint8)
    return pre([blank, blank])["pixel_values"]


def _shape(dims: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _input_words(pre: ImagePreprocess) -> str:
    c = CHANNELS[pre.channels]
    return (f"(N, {c}, {pre.size}, {pre.size}) ({pre.channels}, size {pre.size}: its "
            "preprocess)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def check_module_output(module: Any, task: str, preprocess: ImagePreprocess | None = None,
                        tokenizer: Any = None, max_length: int = 64) -> int:
    """Run `module` (in eval mode) on one sample batch of `task`'s input and return the
    number of classes of its (N, classes) logits; anything else is one UserError."""
    import torch

    # the sample goes where the weights are, in their type (a module on a GPU, in bf16)
    weight = next((t for t in module.parameters() if t.is_floating_point()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    images = takes_images(task)
    if images:
        assert preprocess is not None
        x = torch.from_numpy(sample_pixels(preprocess)).to(  # (2, C, S, S)
            device, weight.dtype if weight is not None else torch.float32)
        what = f"a batch of 2 images {_input_words(preprocess)}"

        def call() -> Any:
            return module(x)
    else:
        enc = {k: v.to(device) for k, v in _sample_tokens(tokenizer, max_length).items()}
        what = f"a batch of {len(enc['input_ids'])} texts from its tokenizer"

        def call() -> Any:
            return module(**enc)
    try:
        with torch.no_grad():
            out = call()
    except Exception as e:  # noqa: BLE001  (the user's forward: whatever it raises, the input does not fit)
        hint = ("set preprocess= to the input the model takes (size, channels)"
                if images else "check that tokenizer= is the model's own")
        raise UserError(f"the model fails on {what}: {_first_line(e)}; {hint}") from None
    n = 2 if images else len(enc["input_ids"])
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"the model returns {type(logits).__name__} for {what}; {task} needs "
                        "logits (N, classes) as one tensor (or an output with .logits)")
    shape = tuple(logits.shape)
    if len(shape) != 2 or shape[0] != n:
        raise UserError(f"the model returns shape {_shape(shape)} for {what}; {task} needs "
                        f"logits (N, classes), here ({n}, classes): pool and flatten in "
                        "forward")
    if shape[1] < 2:
        raise UserError(f"the model returns shape {_shape(shape)}: one score per item; {task} "
                        "needs one logit per class, (N, classes) with classes ≥ 2: (N, 2) for a "
                        "binary classifier")
    return int(shape[1])


def _sample_tokens(tokenizer: Any, max_length: int) -> dict[str, Any]:
    if tokenizer is None:
        raise UserError("loading a torch.nn.Module needs tokenizer= (a Hugging Face tokenizer)")
    texts = list(SAMPLE_TEXTS)
    try:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length or 64,
                        return_tensors="pt")
    except ValueError:  # no pad token: one text needs no padding
        enc = tokenizer(texts[:1], truncation=True, max_length=max_length or 64,
                        return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


# -- ONNX ------------------------------------------------------------------------------
def _dims(value_info: Any) -> list[Any] | None:
    """The shape of a graph input/output: ints where static, the axis name (or "?")
    where not; None when the graph gives no shape."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in t.shape.dim]


def check_onnx_image(path: Path, pre: ImagePreprocess) -> int | None:
    """An ONNX image classifier's graph against its preprocessing: one float32 input
    (N, C, H, W) with C, H, W as the preprocessing makes them (where the graph fixes them),
    and one output (N, classes). Returns the number of classes when the graph fixes it."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001  (a damaged protobuf raises several kinds)
        raise UserError(f"{path} is not an ONNX model onnx can read: {_first_line(e)}") from None
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise UserError(f"{path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                        "an image-classification model takes one image tensor (N, C, H, W)")
    (inp,) = inputs
    want = [CHANNELS[pre.channels], pre.size, pre.size]
    if not inp.type.HasField("tensor_type"):
        raise UserError(f"{path}'s input {inp.name!r} is not a tensor; an image-classification "
                        "model takes float32 pixels (N, C, H, W)")
    dtype = onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
    dims = _dims(inp)
    if dtype != "FLOAT" or (dims is not None and len(dims) != 4):
        raise UserError(f"{path}'s input {inp.name!r} is {dtype} {_shape(dims or ['?'])}, not "
                        "an image tensor: an image-classification model takes float32 pixels "
                        f"(N, C, H, W); its preprocess gives {_input_words(pre)}")
    if dims is not None:
        static = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
        if static[2] == want[0] and static[0] != want[0] and static[0] is not None:
            raise UserError(f"{path} takes channels-last images {_shape(dims)} (N, H, W, C); "
                            "ReAct feeds channels-first (N, C, H, W): export the model with "
                            "its input as NCHW")
        if any(s is not None and s != w for s, w in zip(static, want, strict=True)):
            raise UserError(f"{path} takes images {_shape(dims)} but its preprocess gives "
                            f"{_input_words(pre)}: set preprocess size and channels to the "
                            "model's input")
    return _onnx_classes(path, graph)


def _onnx_classes(path: Path, graph: Any) -> int | None:
    if len(graph.output) < 1:
        raise UserError(f"{path} has no output")
    out = graph.output[0]
    dims = _dims(out)
    if dims is None:
        return None
    if len(dims) != 2:
        raise UserError(f"{path}'s output {out.name!r} has shape {_shape(dims)}; an "
                        "image-classification model returns logits (N, classes)")
    return dims[1] if isinstance(dims[1], int) and dims[1] > 0 else None


# -- class names -----------------------------------------------------------------------
def model_classes(handle: ModelHandle) -> int:
    """The number of classes `handle` answers, from one sample batch on its own runner (any
    engine); the runner is kept on the handle for whatever runs it next."""
    y = handle.runner()({"pixel_values": sample_pixels(handle.tokenizer)})  # (2, classes)
    return int(np.asarray(y).shape[-1])


def with_labels(handle: ModelHandle, labels: Any, classes: int | None = None) -> ModelHandle:
    """`handle` with class names (index = class id) in its preprocessing, so every variant
    and artifact made from it keeps them; the count must be the model's classes."""
    if not takes_images(handle.task) or not isinstance(handle.tokenizer, ImagePreprocess):
        raise UserError(f"class names (labels=, --labels) are for image-classification "
                        f"models; {handle.name!r} is a {handle.task} model")
    names = check_labels(labels)
    out = handle.derive(tokenizer=dataclasses.replace(handle.tokenizer, labels=names))
    classes = model_classes(out) if classes is None else classes
    if classes != len(names):
        raise UserError(f"{len(names)} class names for a model with {classes} classes: give "
                        "one name per class, in class-id order")
    return out
