"""The layers of an exported ONNX graph that int8 quantizes, how much int8 hurts each, and
the calibration feeds every int8 conversion of an exported graph is calibrated on.

One place for every backend that quantizes an exported graph (ONNX Runtime's
`nodes_to_exclude`, NNCF's IgnoredScope on OpenVINO): a layer is named by its ONNX node
name, e.g. `/model/encoder/layer.0/output/dense/MatMul` or, in a CNN, `/model/.../Conv`,
and `fp32_layers=[...]` keeps those nodes in float.

Calibration (`calibration_items` → `calibration_feeds`): the calibration split of the data
the handle's task reads (texts, or images for an image model), turned into graph inputs by
the handle's own preprocessing: tokenized texts, or preprocessed pixels.

Sensitivity, two ways:
- `layer_sensitivity` (dynamic int8: MatMul/Gemm only) is measured per layer on its real
  inputs: one fp32 run of the graph on calibration texts exposes each quantizable layer's
  input activations, and for each layer alone the int8 product (activations per-tensor
  asymmetric uint8, weights per-output-channel symmetric int8, as dynamic quantization
  does) is compared with the fp32 product: the relative squared error of the layer's
  output. It ranks layers by the error they add themselves, not by what they inherit from
  the layers before them, and costs one fp32 forward pass plus a few GEMMs per layer.
- `float_effect` (static int8 QDQ, where the convolutions and the ops between them are
  quantized: a CNN) is measured on the quantized model itself: for each quantized layer,
  how much the int8 model's output error against the fp32 model falls when that one layer
  is float as `fp32_layers` makes it (its float weight and bias; ONNX Runtime keeps its
  input int8). The error of a layer alone does not say this in a CNN, where the
  activations between layers are quantized too and each layer's error travels through all
  the layers after it. It costs one session and one run on the calibration items per
  layer.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import UserError

if TYPE_CHECKING:
    from ..core.backend import Batch
    from ..core.handle import ModelHandle

QUANTIZABLE_OPS = ("MatMul", "Gemm")
# ONNX Runtime's WeightBiasQuantization pass quantizes the float weight of any layer fed by
# a DequantizeLinear, per tensor: it would undo a layer kept float (efficientnet-lite0 with
# its depthwise convolutions kept float fell from 0.90 to 0.42 top-1 agreement). Every
# session that runs a QDQ graph turns it off. A graph with no QDQ nodes is unaffected.
KEEP_FLOAT_DISABLED = ["WeightBiasQuantization"]
CONV_OPS = ("Conv",)
ROWS_PER_BATCH = 256  # token rows per batch on which each layer's products are compared


def graph_feed(inputs: list[str], batch: Batch, engine: str) -> dict[str, np.ndarray]:
    """The inputs an exported graph takes, from a task batch: token_type_ids are zeros
    where the tokenizer gives none; any other missing input is a one-line error. Shared by
    every engine that runs the exported graph (ONNX Runtime, OpenVINO)."""
    if len(inputs) == 1 and set(batch) == {"pixel_values"}:  # a user's image graph: its
        return {inputs[0]: batch["pixel_values"]}  # one input, whatever its name
    feed = {}
    for name in inputs:
        if name in batch:
            feed[name] = batch[name]
        elif name == "token_type_ids":
            feed[name] = np.zeros_like(batch["input_ids"])
        else:
            raise UserError(f"the {engine} model needs input {name!r}, which the tokenizer "
                            "did not produce")
    return feed


def graph_inputs(path: Path) -> list[str]:
    """The names of a graph's inputs (not its initializers), in order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


def _graph(model: Any) -> Any:
    """An onnx GraphProto from a path or a ModelProto."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    return model.graph


def _constants(graph: Any) -> set[str]:
    consts = {i.name for i in graph.initializer}
    return consts | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _weighted(graph: Any) -> list[Any]:
    """MatMul/Gemm nodes whose weight (second input) is a constant."""
    consts = _constants(graph)
    return [n for n in graph.node if n.op_type in QUANTIZABLE_OPS and len(n.input) > 1
            and n.input[1] in consts and n.input[0] not in consts
            and not any(a.name == "transA" and a.i for a in n.attribute)]


def _convs(graph: Any) -> list[Any]:
    """Conv nodes whose weight (second input) is a constant."""
    consts = _constants(graph)
    return [n for n in graph.node if n.op_type in CONV_OPS and len(n.input) > 1
            and n.input[1] in consts]


def quantizable_layers(model: Any) -> list[str]:
    """Names of the MatMul/Gemm and Conv nodes with a constant weight, in graph order: the
    layers int8 quantizes, and the names `fp32_layers` accepts."""
    graph = _graph(model)
    keep = {n.name for n in _weighted(graph)} | {n.name for n in _convs(graph)}
    return [n.name for n in graph.node if n.name in keep]


def depthwise_convs(model: Any) -> list[str]:
    """Names of the depthwise Conv nodes (one input channel per group, more than one
    group): int8 gains least and loses most on them (few multiply-adds per weight)."""
    graph = _graph(model)
    dims = {i.name: list(i.dims) for i in graph.initializer}
    out = []
    for n in _convs(graph):
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        shape = dims.get(n.input[1])
        if group > 1 and shape is not None and len(shape) > 1 and shape[1] == 1:
            out.append(n.name)
    return out


def activation_matmuls(model: Any) -> list[str]:
    """MatMul nodes with no constant input (attention's Q·Kᵀ and P·V): quantizing both
    activations costs most of int8's accuracy loss on transformers for little speed."""
    graph = _graph(model)
    consts = _constants(graph)
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def check_layers(names: Any, model: Any, option: str = "fp32_layers") -> list[str]:
    """`names` as a list of layer names of `model`, or a UserError naming what is wrong."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(
            isinstance(n, str) for n in names):
        raise UserError(f"{option} must be a list of ONNX node names, got {names!r}")
    known = quantizable_layers(model)
    unknown = [n for n in names if n not in set(known)]
    if unknown:
        raise UserError(f"{option}: {unknown[0]!r} is not a MatMul/Gemm/Conv layer with a "
                        f"weight in this model ({len(known)} are, e.g. "
                        f"{known[0] if known else 'none'!r})")
    return list(dict.fromkeys(names))


def _int8_product(x: np.ndarray, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] @ w with x quantized per-tensor to asymmetric uint8 (the range of all of x,
    including 0) and w per output channel to symmetric int8, then dequantized."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = np.round(-lo / scale)
    xq = (np.clip(np.round(x[rows] / scale) + zero, 0, 255) - zero) * scale
    w_scale = np.abs(w).max(axis=0, keepdims=True) / 127
    w_scale[w_scale == 0] = 1.0
    wq = np.clip(np.round(w / w_scale), -127, 127) * w_scale
    return np.asarray(xq.astype(np.float32) @ wq.astype(np.float32))


def calibration_items(handle: ModelHandle, n: int, data: str | None = None) -> list[Any]:
    """Up to `n` items of the calibration split the handle's task reads: texts (of `data`,
    else the built-in corpus), or images for an image model (of the folder `data`, else the
    built-in image set its preprocessing declares)."""
    from ..data import items_for

    return items_for(handle, "calibration", data, n)


def calibration_feeds(handle: ModelHandle, items: Sequence[Any], batch: int = 8,
                      names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """`items` a few at a time, as the inputs an exported graph of `handle` takes, made by
    the handle's own preprocessing: tokenized texts (token_type_ids zeros where the
    tokenizer gives none, except for causal LMs), or images as pixel_values. `names`: keep
    only those inputs (the graph's)."""
    from ..tasks import get_task, iter_batches

    feeds = []
    for _, b in iter_batches(handle.tokenizer, list(items), batch, min(handle.max_length, 128)):
        feed = dict(b)
        if "input_ids" in feed and not get_task(handle.task).generates:
            feed.setdefault("token_type_ids", np.zeros_like(b["input_ids"]))
        feeds.append(feed if names is None else graph_feed(list(names), feed, "ONNX"))
    return feeds


def layer_sensitivity(path: Path, feeds: Sequence[dict[str, np.ndarray]],
                      rows_per_batch: int = ROWS_PER_BATCH) -> dict[str, float]:
    """Per quantizable layer of the fp32 graph at `path`: the relative squared error
    ‖int8 − fp32‖² / ‖fp32‖² of its output on the calibration `feeds`, its own inputs
    being exact. Highest is most sensitive. The quantization step comes from each batch's
    whole input (as dynamic quantization does); the products are compared on up to
    `rows_per_batch` token rows of it (a fixed sample), which keeps the GEMMs cheap."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    nodes = _weighted(graph)
    weights = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    have = {o.name for o in graph.output}
    for name in dict.fromkeys(n.input[0] for n in nodes):
        if name not in have:
            graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # names stay
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    wanted = [n.input[0] for n in nodes]
    inputs = [i.name for i in session.get_inputs()]
    ws = [_weight(n, weights, consts, numpy_helper) for n in nodes]
    err = np.zeros(len(nodes))
    ref = np.zeros(len(nodes))
    for feed in feeds:
        acts = dict(zip(wanted, session.run(wanted, {k: feed[k] for k in inputs}), strict=True))
        for i, (n, w) in enumerate(zip(nodes, ws, strict=True)):
            x = np.asarray(acts[n.input[0]], dtype=np.float32).reshape(-1, w.shape[0])
            rows = np.random.default_rng(0).permutation(len(x))[:rows_per_batch]
            y = x[rows] @ w
            err[i] += float(((_int8_product(x, w, rows) - y).astype(np.float64) ** 2).sum())
            ref[i] += float((y.astype(np.float64) ** 2).sum())
    return {n.name: float(e / r) if r > 0 else 0.0 for n, e, r in zip(nodes, err, ref,
                                                                       strict=True)}


def _weight(node: Any, weights: dict[str, Any], consts: dict[str, Any],
            numpy_helper: Any) -> np.ndarray:
    """The (K, N) weight of a MatMul/Gemm node (Gemm's transB undone)."""
    src = weights.get(node.input[1])
    w = (numpy_helper.to_array(src) if src is not None
         else numpy_helper.to_array(consts[node.input[1]].attribute[0].t))
    w = np.asarray(w, dtype=np.float32)
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        w = w.T
    return w


def output_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖² / ‖ref‖²: the relative squared error of a model's output (embeddings,
    logits) against the float model's."""
    return float(((out - ref) ** 2).sum() / max(float((ref ** 2).sum()), 1e-30))


def float_effect(int8_path: Path, fp32_path: Path, feeds: Sequence[dict[str, np.ndarray]]
                 ) -> dict[str, float]:
    """Per quantized layer of the static int8 (QDQ) graph at `int8_path`: how much its
    output error against the fp32 graph at `fp32_path` on `feeds` falls when that layer
    alone is float, as `fp32_layers` keeps it (`_keep_float`). Highest is most sensitive;
    layers int8 left float are left out. Both graphs are the same export, so node names
    match."""
    import onnx

    int8, fp32 = onnx.load(str(int8_path)), onnx.load(str(fp32_path))
    ref = _run(fp32, feeds)
    base = output_error(_run(int8, feeds), ref)
    float_nodes = {n.name: n for n in fp32.graph.node}
    float_weights = {i.name: i for i in fp32.graph.initializer}
    producers = {o: n for n in int8.graph.node for o in n.output}
    nodes = {n.name: n for n in int8.graph.node}
    gains: dict[str, float] = {}
    for name in quantizable_layers(fp32):
        node = nodes.get(name)
        if node is None:
            continue
        inputs = list(node.input)
        added = _keep_float(int8.graph, node, float_nodes[name], float_weights, producers)
        if not added:
            continue  # int8 left it float already
        try:
            gains[name] = base - output_error(_run(int8, feeds), ref)
        finally:  # back to the int8 graph for the next layer
            del node.input[:]
            node.input.extend(inputs)
            if added:  # appended last
                del int8.graph.initializer[-len(added):]
    return gains


def _keep_float(graph: Any, node: Any, float_node: Any, float_weights: dict[str, Any],
                producers: dict[str, Any]) -> list[Any]:
    """Make `node` of the QDQ `graph` what `fp32_layers` makes it, in place: its weight
    and bias (inputs 1, 2) the fp32 graph's initializers where a DequantizeLinear feeds
    them. Its input stays as it is: ONNX Runtime's quantizer keeps an excluded layer's
    input quantized (the layer before writes int8, and a ReLU/Clip between them is folded
    into that QuantizeLinear's range). Returns the initializers added."""
    added = []
    for i in range(1, min(len(node.input), len(float_node.input))):
        dq = producers.get(node.input[i])
        src = float_weights.get(float_node.input[i])
        if dq is None or dq.op_type != "DequantizeLinear" or src is None:
            continue
        init = graph.initializer.add()
        init.CopyFrom(src)
        init.name = f"{src.name}__float"
        node.input[i] = init.name
        added.append(init)
    return added


def _run(model: Any, feeds: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """The graph's first output on `feeds`, as ONNX Runtime runs it for serving (all graph
    optimizations, layers kept float stay float)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"],
                                   disabled_optimizers=KEEP_FLOAT_DISABLED)
    names = [i.name for i in session.get_inputs()]
    outs = [np.asarray(session.run(None, {k: f[k] for k in names})[0], dtype=np.float64)
            for f in feeds]
    return np.concatenate([o.reshape(len(o), -1) for o in outs])
