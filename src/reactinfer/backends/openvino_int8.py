"""OpenVINO int8 by NNCF: post-training quantization, SmoothQuant's alpha tuned on
calibration data, and the ranking of quantized layers the planner's repair falls back by.

- `quantize_int8`: NNCF post-training int8 on the calibration split. Text models use the
  transformer model type (SmoothQuant, attention-aware scopes); image models NNCF's CNN
  scheme (performance preset, per-channel weights, fast bias correction).
- SmoothQuant (text): activations' outliers move into the weights by a per-channel scale
  whose strength is alpha. NNCF's default alpha for MatMuls is 0.95; the best one depends
  on the model. `smooth_quant="auto"` (the default) quantizes with each alpha of
  SMOOTH_QUANT_ALPHAS and keeps the one whose output is closest to the float model's on
  the calibration items, as Intel Neural Compressor's SmoothQuant auto-alpha does. On
  minilm (benchmarks/results/openvino_int8_minilm.md) the choice, 0.8, also had the best
  top-10 recall on the held-out texts. A whole tuning's choice is kept in ReAct's cache
  (core/cache.py, `smooth-quant/`), keyed by a hash of the float model's graph and
  weights, the calibration items and the settings: the same model quantized again (a
  fallback, a second `bench` or `optimize`) quantizes once, at that alpha.
- `rank_layers`: for each quantized MatMul/convolution of an int8 IR, how much the model's
  output error (against the float model, on calibration items) falls when that one layer
  is float (its input's int8 FakeQuantize bypassed, its fp32 weight).
  This measures each layer's effect on the output the user sees, with OpenVINO's own
  kernels and NNCF's own scales (after SmoothQuant), which the ONNX Runtime ranking of
  dynamic int8 (each MatMul's own error) cannot.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.cache import entry_dir, keep, read_kept
from ..core.deadline import check as check_deadline
from ..core.deadline import seconds_left
from ..core.errors import UserError
from ..core.handle import takes_images
from .onnx_layers import calibration_feeds, calibration_items, output_error

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

# NNCF's transformer default first: a tie keeps it, and a deadline that leaves room for one
# alpha only gets NNCF's default
SMOOTH_QUANT_ALPHAS = (0.95, 0.9, 0.85, 0.8, 0.7)
TUNINGS, ALPHA_FILE = "smooth-quant", "alpha.json"  # the cache's entries (core/cache.py)
# One NNCF quantization (and the comparison of its output) costs about this many float
# conversions of the same model (export + ov.convert_model): on minilm, 2 cores, loaded,
# the bf16 conversion took 23 s and five tuned alphas ~230 s (planning only: Backend.build_cost).
QUANTIZE_COST = 2.0
SMOOTH_QUANT_OFF = "off"
LAYER_OPS = ("MatMul", "Convolution", "GroupConvolution")  # ONNX MatMul / Gemm / Conv
# ops between a FakeQuantize and the layer it quantizes for that leave the values as they are
VALUE_PRESERVING = ("Pad", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
BIAS_SPLIT = "/WithoutBiases"  # OpenVINO's suffix on a Conv / Gemm split from its bias Add


def _onnx_name(op: Any) -> str:
    return str(op.get_friendly_name()).removesuffix(BIAS_SPLIT)


def layer_ops(model: Any) -> dict[str, Any]:
    """ONNX node name → the OpenVINO op of that layer."""
    return {_onnx_name(op): op for op in model.get_ops() if op.get_type_name() in LAYER_OPS}


def check_smooth_quant(value: Any) -> None:
    if value in (None, "auto", SMOOTH_QUANT_OFF):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"openvino smooth_quant is 'auto', 'off' or an alpha in [0, 1] "
                        f"(NNCF's default 0.95), got {value!r}")


@contextlib.contextmanager
def _quiet_nncf(progress: bool) -> Iterator[None]:
    """NNCF logs at INFO and draws its progress bars on stdout."""
    logger = logging.getLogger("nncf")
    level = logger.level
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    try:
        logger.setLevel(logging.INFO if progress else logging.ERROR)
        with quiet:
            yield
    finally:
        logger.setLevel(level)


def float_outputs(model: Any, feeds: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """The model's first output on `feeds`, in fp32 (no bf16 rounding in the comparison)."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    outs = []
    for feed in feeds:
        request.infer(feed)
        outs.append(np.array(request.get_output_tensor(0).data, dtype=np.float64))
    return np.concatenate([o.reshape(len(o), -1) for o in outs])


def quantize_int8(handle: ModelHandle, model: Any, n_items: int, fp32_layers: list[str],
                  overflow_fix: str, smooth_quant: Any = "auto",
                  progress: bool = False) -> tuple[Any, Any]:
    """NNCF post-training int8 of the OpenVINO `model` on `n_items` of the calibration
    split. Returns the int8 model and the SmoothQuant alpha used (None for image models,
    which NNCF's CNN scheme does not smooth; SMOOTH_QUANT_OFF when disabled)."""
    import nncf

    ops = layer_ops(model)
    missing = [n for n in fp32_layers if n not in ops]
    if missing:
        raise UserError(f"openvino fp32_layers: no MatMul/Conv named {missing[0]!r} in this "
                        f"model; names look like {sorted(ops)[0]!r} ({len(ops)} in all)")
    names = [i.get_any_name() for i in model.inputs]
    data = calibration_feeds(handle, calibration_items(handle, n_items), names=names)
    scope = (nncf.IgnoredScope(names=[ops[n].get_friendly_name() for n in fp32_layers],
                               validate=True) if fp32_layers else None)

    image = takes_images(handle.task)  # NNCF's CNN scheme: no SmoothQuant

    def run(alpha: Any) -> Any:
        params: dict[str, Any] = {"overflow_fix": nncf.OverflowFix(overflow_fix)}
        if not image:
            params["smooth_quant_alphas"] = nncf.AdvancedSmoothQuantParameters(
                matmul=-1 if alpha == SMOOTH_QUANT_OFF else float(alpha))
        with _quiet_nncf(progress):
            return nncf.quantize(
                model.clone(), nncf.Dataset(data), subset_size=len(data),
                model_type=None if image else nncf.ModelType.TRANSFORMER,
                preset=nncf.QuantizationPreset.PERFORMANCE if image else None,
                ignored_scope=scope, advanced_parameters=nncf.AdvancedQuantizationParameters(
                    **params))

    if image:
        return run(None), None
    if smooth_quant != "auto":
        return run(smooth_quant), smooth_quant
    key = tuning_key(model, data, overflow_fix, sorted(fp32_layers))
    known = read_kept(TUNINGS, key, _read_alpha)
    if known is not None:
        logging.getLogger(__name__).info("SmoothQuant alpha %s, tuned before on the same model "
                                         "and calibration items (%s)", known,
                                         entry_dir(TUNINGS, key))
        return run(known), known
    alpha, errors, best = tune_smooth_quant(model, data, run)
    if len(errors) == len(SMOOTH_QUANT_ALPHAS):  # a tuning a deadline cut short is not kept
        keep(TUNINGS, key, lambda d: (d / ALPHA_FILE).write_text(json.dumps({
            "alpha": alpha, "output_error": {str(a): e for a, e in errors.items()}})))
    logging.getLogger(__name__).info("SmoothQuant alpha %s (output error by alpha: %s)",
                                     alpha, errors)
    return best, alpha


def tuning_key(model: Any, feeds: Sequence[dict[str, np.ndarray]], *settings: Any) -> str:
    """A hash of what decides a SmoothQuant tuning: the float model's ops in order (their
    types and output shapes, every constant's bytes), the calibration inputs, the settings, and
    the versions of NNCF and OpenVINO."""
    import nncf
    import openvino as ov

    h = hashlib.sha256(repr((SMOOTH_QUANT_ALPHAS, nncf.__version__, ov.get_version(),
                             settings)).encode())
    for op in model.get_ordered_ops():
        # types and shapes, not names: OpenVINO numbers unnamed ops afresh in each build
        shapes = [str(o.get_partial_shape()) for o in op.outputs()]
        h.update(f"{op.get_type_name()}{shapes};".encode())
        if op.get_type_name() == "Constant":
            h.update(np.ascontiguousarray(op.get_data()).tobytes())
    for feed in feeds:
        for name in sorted(feed):
            h.update(name.encode() + np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()


def _read_alpha(entry: Path) -> float:
    """The alpha a whole tuning chose (ValueError for one not among the alphas tried now)."""
    alpha = json.loads((entry / ALPHA_FILE).read_text())["alpha"]
    if alpha not in SMOOTH_QUANT_ALPHAS:
        raise ValueError(f"alpha {alpha!r} is not one of {SMOOTH_QUANT_ALPHAS}")
    return float(alpha)


def tune_smooth_quant(model: Any, feeds: Sequence[dict[str, np.ndarray]],
                      quantize: Any) -> tuple[float, dict[float, float], Any]:
    """Quantize with each alpha of SMOOTH_QUANT_ALPHAS; the alpha whose output on `feeds`
    is closest to the float `model`'s, the error of each, and that int8 model. Under a
    deadline (core/deadline.py) fewer alphas are tried: the next one only when the time
    left holds another as long as the slowest so far; the first always (DeadlinePassed
    before it, when the deadline has passed already)."""
    check_deadline("SmoothQuant tuning")
    ref = float_outputs(model, feeds)
    errors: dict[float, float] = {}
    best: tuple[float, float, Any] | None = None
    slowest = 0.0
    for alpha in SMOOTH_QUANT_ALPHAS:
        left = seconds_left()
        if best is not None and left is not None and left < slowest:
            logging.getLogger(__name__).info(
                "SmoothQuant tuning stopped after %d alphas: %.0fs to the deadline, one "
                "takes ~%.0fs", len(errors), left, slowest)
            break
        t0 = time.perf_counter()
        q = quantize(alpha)
        errors[alpha] = output_error(float_outputs(q, feeds), ref)
        slowest = max(slowest, time.perf_counter() - t0)
        if best is None or errors[alpha] < best[1]:
            best = (alpha, errors[alpha], q)
    assert best is not None
    return best[0], errors, best[2]


def input_quantizer(op: Any) -> tuple[Any, Any] | None:
    """The FakeQuantize that quantizes layer `op`'s input, and the input it feeds (the
    layer's own, or that of an op between them that moves values without changing them: a
    depthwise convolution with TF "same" padding reads FakeQuantize → Pad); None where the
    input is float."""
    port = op.input(0)
    while True:
        node = port.get_source_output().get_node()
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return node, port
        if kind not in VALUE_PRESERVING:
            return None
        port = node.input(0)


def _float_weight(op: Any, float_op: Any) -> bool:
    """Feed layer `op` of an int8 model the weight of the same layer of the fp32 model (a
    copy of its constant), where the int8 one is not float already and the shapes agree.
    Whether it did."""
    import openvino as ov

    own = op.input_value(1)
    src = float_op.input_value(1)
    node = src.get_node()
    if (own.get_node().get_type_name() == "Constant" and own.get_element_type() ==
            src.get_element_type()) or node.get_type_name() != "Constant" or \
            own.get_partial_shape() != src.get_partial_shape():
        return False
    op.input(1).replace_source_output(ov.op.Constant(node.get_data()).output(0))
    return True


def rank_layers(int8: Any, fp32: Any, feeds: Sequence[dict[str, np.ndarray]]
                ) -> dict[str, float]:
    """Per quantized layer of the int8 model: how much the output error against the `fp32`
    model on `feeds` falls when that layer alone is float, as `fp32_layers` keeps it: its
    input not quantized (its FakeQuantize bypassed for that layer alone) and its weight the
    fp32 model's. Both count: on efficientnet-lite0, bypassing every input quantizer took
    the output error only from 0.024 to 0.017, the int8 weights hold the rest. Highest is
    most sensitive; layers int8 left float are left out."""
    ref = float_outputs(fp32, feeds)
    base = output_error(float_outputs(int8, feeds), ref)
    float_ops = layer_ops(fp32)
    gains: dict[str, float] = {}
    for name in layer_ops(int8):
        check_deadline(f"ranking layer {name}")  # a layer costs a compile and a forward
        model = int8.clone()
        op = layer_ops(model)[name]
        found = input_quantizer(op)
        if found is not None:
            fq, port = found
            port.replace_source_output(fq.input_value(0))  # this edge only
        weight = name in float_ops and _float_weight(op, float_ops[name])
        if found is None and not weight:
            continue  # float already
        gains[name] = base - output_error(float_outputs(model, feeds), ref)
    return gains
