"""ONNX Runtime: export the task-wrapped module once (dynamic batch and sequence axes;
embeddings carry pooling + normalisation in the graph), optionally convert it to int8
(dynamic, or static QDQ calibrated on the calibration split: texts, or images for an
image model) or fp16, then run it with no PyTorch in the inference loop. CPU provider
here, CUDA provider when one is present.

The exported file travels in `handle.files["model.onnx"]`; the task and max length are
written into the ONNX model's metadata_props so a bare `.onnx` file loads on its own.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backend import (
    Backend,
    Batch,
    Decoding,
    EngineConfig,
    check_options,
    decode_by_recompute,
    greedy_tokens,
    module_available,
    register_backend,
)
from ..core.deadline import check as check_deadline
from ..core.errors import UserError
from ..models.onnx_file import ONNX_FILE as MODEL_FILE
from ..models.onnx_file import write_metadata
from .onnx_layers import (
    KEEP_FLOAT_DISABLED,
    activation_matmuls,
    calibration_feeds,
    calibration_items,
    check_layers,
    graph_feed,
    graph_inputs,
)

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

PRECISIONS = ("fp32", "int8-dynamic", "int8-static", "fp16")
# what a conversion to a precision costs, in fp32 exports of the same model (planning only)
BUILD_COST = {"int8-dynamic": 1.5, "int8-static": 3.0, "fp16": 1.5}
OPT_LEVELS = ("disable", "basic", "extended", "all")
PROVIDERS = ("auto", "cpu", "cuda")
OUTPUT_NAME = {"embedding": "embeddings", "classification": "logits", "causal-lm": "logits",
               "image-classification": "logits"}
# Options used once, at conversion; the rest configure the session every time it opens.
EXPORT_OPTIONS = ("precision", "opset", "calibration_items", "calibration_texts",
                  "calibration_method", "per_channel", "reduce_range", "fp32_layers")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# What int8 quantizes, by task. Text: only MatMul/Gemm with a weight (LayerNorm, Softmax,
# attention and pooling cost accuracy for little speed). Images: the convolutions and the
# ops between them, so activations stay int8 from one convolution to the next (ONNX
# Runtime fuses DQ → Conv → Q into QLinearConv, and drops ReLU/ReLU6 into the Q's range).
INT8_OPS = {"image-classification": ["Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip",
                                     "Pad", "GlobalAveragePool", "MaxPool", "Flatten",
                                     "Reshape"]}
TEXT_INT8_OPS = ["MatMul", "Gemm"]
SESSION_OPTIONS = ("threads", "inter_op_threads", "opt_level", "provider", "spinning")


def _check_options(opts: dict[str, Any]) -> None:
    check_options("onnxruntime", opts, EXPORT_OPTIONS + SESSION_OPTIONS,
                  {"precision": PRECISIONS, "opt_level": OPT_LEVELS, "provider": PROVIDERS,
                   "calibration_method": CALIBRATION_METHODS},
                  ("threads", "inter_op_threads", "calibration_items", "calibration_texts"))


def calibration_count(opts: dict[str, Any], default: int) -> int:
    """How many calibration items int8 takes: `calibration_items`, or its old name
    `calibration_texts` (still accepted), else `default`."""
    return int(opts.get("calibration_items", opts.get("calibration_texts", default)))


# -- export -----------------------------------------------------------------------------
def float_graph(handle: ModelHandle, opts: dict[str, Any] | None = None) -> bool:
    """A handle that holds an fp32 ONNX graph and no torch model (a user's own ONNX file):
    engines convert and quantize from the graph as they would from an export. With `opts`:
    and they ask for a conversion (another precision, or layers kept float)."""
    have = handle.backend_options.get("precision", "fp32")
    if handle.model is not None or MODEL_FILE not in handle.files or have != "fp32" \
            or handle.backend_options.get("fp32_layers"):
        return False
    return opts is None or opts.get("precision", "fp32") != "fp32" or bool(
        opts.get("fp32_layers"))


def input_names(handle: ModelHandle) -> list[str]:
    from ..tasks import get_task, sample_batch

    if handle.model is None and MODEL_FILE in handle.files:  # the graph's own inputs
        return graph_inputs(handle.files[MODEL_FILE])
    if get_task(handle.task).generates:
        return ["input_ids", "attention_mask"]
    return list(sample_batch(handle.tokenizer, handle.max_length))


def export_onnx(handle: ModelHandle, path: Path, opset: int = 17) -> Path:
    """Trace the task-wrapped module to ONNX (legacy TorchScript exporter: it handles the
    transformers attention-mask code with dynamic axes where the dynamo exporter balks)."""
    import torch

    from ..tasks import get_task, sample_batch

    if handle.model is None and float_graph(handle):  # a user's own fp32 ONNX file
        shutil.copyfile(handle.files[MODEL_FILE], path)
        return path
    if handle.model is None:
        raise UserError("exporting to ONNX needs the torch model; this handle has none "
                        f"(it runs on {handle.backend!r})")
    if handle.replay_from is not None:
        raise UserError("this model holds torch int8 modules, which do not export to ONNX; "
                        "export the float model and pass precision='int8-dynamic' instead")
    module = get_task(handle.task).wrap(handle.model).eval()
    names = input_names(handle)
    sample = sample_batch(handle.tokenizer, handle.max_length)
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    out = OUTPUT_NAME[handle.task]
    # images: only the batch varies (the preprocessing fixes the size)
    axes = {n: {0: "batch"} if n == "pixel_values" else {0: "batch", 1: "sequence"}
            for n in names}
    axes[out] = {0: "batch", 1: "sequence"} if get_task(handle.task).generates else {0: "batch"}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), \
            _eager_attention(handle):
        warnings.simplefilter("ignore")  # tracer warnings about python branches on shapes
        torch.onnx.export(module, args, str(path), input_names=names, output_names=[out],
                          dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return path


@contextlib.contextmanager
def _eager_attention(handle: ModelHandle) -> Iterator[None]:
    """Encoders export with transformers' eager attention: an additive mask that OpenVINO
    fuses with the attention matmuls and softmax into one kernel, where the traced SDPA path
    writes a masked_fill (Where on IsNaN over [B, heads, T, T]) that took 5-8% of the
    engines' time (benchmarks/results/minilm_limit.md). Same numbers; the model is restored
    afterwards. Causal LMs keep their own attention."""
    from ..tasks import get_task

    config = getattr(handle.model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if get_task(handle.task).generates or impl != "sdpa":
        yield
        return
    config._attn_implementation = "eager"  # type: ignore[union-attr]
    try:
        yield
    finally:
        config._attn_implementation = impl  # type: ignore[union-attr]


def int8_settings(isa: dict[str, bool]) -> dict[str, Any]:
    """ONNX Runtime's int8 settings for a CPU: its U8S8 kernels saturate on x86 without
    VNNI (ORT's quantization docs), so weights keep to 7 bits there (`reduce_range`)."""
    from ..core.hardware import int8_saturates

    return {"reduce_range": int8_saturates(isa)}


class _CalibrationReader:
    """Feeds the calibration split (texts or images, as the handle's task reads) to the
    static quantizer, a few items at a time."""

    def __init__(self, handle: ModelHandle, n: int, names: list[str], batch: int = 8):
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            calibration_feeds(handle, calibration_items(handle, n), batch, names))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def convert_precision(handle: ModelHandle, src: Path, dst: Path, precision: str,
                      calibration_items: int = 64, per_channel: bool = True,
                      reduce_range: bool = False, fp32_layers: Sequence[str] = (),
                      calibration_method: str = "minmax") -> Path:
    """fp32 → int8 dynamic / int8 static QDQ / fp16. Text: only MatMul/Gemm with a weight
    are quantized; images (int8 static): the convolutions and the ops between them
    (INT8_OPS). Static int8 calibrates activations on `calibration_items` items of the
    calibration split with `calibration_method`. `reduce_range`: 7-bit weights, for CPUs
    whose int8 kernels saturate. `fp32_layers` (ONNX node names, see
    onnx_layers.quantizable_layers) stay in float."""
    import logging

    root = logging.getLogger()
    level = root.level
    # the quantizer logs a pre-processing hint at WARNING on the root logger every call
    root.setLevel(max(level, logging.ERROR))
    try:
        return _convert_precision(handle, src, dst, precision, calibration_items, per_channel,
                                  reduce_range, list(fp32_layers), calibration_method)
    finally:
        root.setLevel(level)


def _convert_precision(handle: ModelHandle, src: Path, dst: Path, precision: str,
                       n_items: int, per_channel: bool, reduce_range: bool,
                       keep: list[str], method: str) -> Path:
    if precision == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         per_channel=per_channel, reduce_range=reduce_range,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         nodes_to_exclude=activation_matmuls(src) + keep)
    elif precision == "int8-static":
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        reader = _CalibrationReader(handle, n_items, input_names(handle))
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[method]
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=per_channel, reduce_range=reduce_range,
                        op_types_to_quantize=INT8_OPS.get(handle.task, TEXT_INT8_OPS),
                        nodes_to_exclude=activation_matmuls(src) + keep,
                        calibrate_method=calibrate)
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: callers still feed int64 ids and read float32 outputs
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                         node_block_list=keep or None)
        onnx.save(model, str(dst))
    else:
        raise AssertionError(precision)
    return dst


# -- runtime ----------------------------------------------------------------------------
def make_session(path: Path, threads: int | None = None, inter_op_threads: int | None = None,
                 opt_level: str = "all", provider: str = "auto",
                 spinning: bool | None = None, optimized_path: Path | None = None) -> Any:
    """An ONNX Runtime session; `optimized_path`: also write the graph as ONNX Runtime
    optimized it (to inspect what runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[opt_level]
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    if inter_op_threads is not None:
        so.inter_op_num_threads = int(inter_op_threads)
    if spinning is not None:  # idle intra-op threads busy-wait for work (ORT's default)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # quiet: fp16 on CPU warns about every inserted Cast
    available = ort.get_available_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserError("onnxruntime provider 'cuda' is not available here (needs a GPU and "
                        "the onnxruntime-gpu package); use provider='cpu' or 'auto'")
    use_cuda = provider in ("auto", "cuda") and "CUDAExecutionProvider" in available
    providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
    # (KEEP_FLOAT_DISABLED: ONNX Runtime would quantize `fp32_layers` back)
    return ort.InferenceSession(str(path), so, providers=providers,
                                disabled_optimizers=KEEP_FLOAT_DISABLED)


class OrtRunner:
    """Runs the exported graph. No KV cache in the graph (use_cache=False at export), so
    `generate` recomputes the whole sequence per token: correct, but slow for long outputs."""

    kv_cache = False

    def __init__(self, handle: ModelHandle, session: Any):
        self.handle = handle
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.provider = session.get_providers()[0]

    def __call__(self, batch: Batch) -> np.ndarray:
        feed = graph_feed(self.inputs, batch, "ONNX")
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)

    def decode(self, prompt_ids: list[int]) -> Decoding:
        from ..tasks import get_task

        if not get_task(self.handle.task).generates:
            raise UserError(f"generate needs a causal-lm model, this is {self.handle.task}")
        return decode_by_recompute(self, prompt_ids)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        return greedy_tokens(self.decode(prompt_ids), max_new_tokens,
                             getattr(self.handle.tokenizer, "eos_token_id", None))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    writes_files = True
    precision_option = "precision"
    description = ("ONNX Runtime (export with dynamic axes; fp32 / int8 dynamic / int8 static "
                   "QDQ / fp16; graph optimization levels; CPU, or CUDA when present)")
    not_for = {"causal-lm": "the exported graph has no KV cache, so generation recomputes "
                            "the prompt every token (llama.cpp runs causal LMs)"}
    layer_ranking = ("by the error int8 adds to each one's output (dynamic int8), or by how "
                     "much the int8 model's output error falls when each one is float "
                     "(static int8)")
    available = staticmethod(module_available("onnxruntime"))

    def rank_layers(self, handle: ModelHandle, items: Sequence[Any],
                    **opts: Any) -> dict[str, float]:
        """Dynamic int8: each layer's own int8 output error (onnx_layers.layer_sensitivity)
        in the fp32 export, one fp32 run and no quantized model built. Static int8, which
        also quantizes what lies between the layers (a CNN's convolutions and activations):
        each layer's effect on the int8 model's output (onnx_layers.float_effect)."""
        from .convert import to_backend
        from .onnx_layers import float_effect, layer_sensitivity

        fp32 = to_backend(handle, self.name, precision="fp32")
        feeds = calibration_feeds(fp32, items)
        if opts.get("precision") != "int8-static":
            return layer_sensitivity(fp32.files[MODEL_FILE], feeds)
        int8 = to_backend(handle, self.name, **{**opts, "fp32_layers": []})
        return float_effect(int8.files[MODEL_FILE], fp32.files[MODEL_FILE], feeds)

    def why_unavailable(self) -> str:
        return "" if self.available() else "pip install onnxruntime onnx (or `make`)"

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["embedding", "classification", "causal-lm", "image-classification"],
                "options": {"precision": list(PRECISIONS), "opt_level": list(OPT_LEVELS),
                            "provider": list(PROVIDERS), "threads": "int",
                            "inter_op_threads": "int", "opset": "int (17)",
                            "spinning": "bool (ONNX Runtime's default: on)",
                            "calibration_items": "int (64, int8-static; texts or images "
                                                 "of the calibration split; old name "
                                                 "calibration_texts)",
                            "calibration_method": list(CALIBRATION_METHODS),
                            "per_channel": "bool (True)",
                            "reduce_range": "bool (int8: chosen from the CPU; True where "
                                            "its int8 kernels saturate, without VNNI)",
                            "fp32_layers": "list of ONNX MatMul/Gemm/Conv node names "
                                           "kept in float under int8 / fp16 ([])"},
                "files": [MODEL_FILE], "needs_torch_at_run_time": False}

    def engine_configs(self) -> list[EngineConfig]:
        text, image = ("embedding", "classification"), ("image-classification",)

        def config(precision: str, name: str, tasks: tuple[str, ...], **facts: Any
                   ) -> EngineConfig:
            return EngineConfig(self.name, name, tasks, {"precision": precision}, **facts)

        # dynamic int8 quantizes MatMul/Gemm only: no form for convolutions (static does)
        return [config("fp32", "onnxruntime fp32", text + image, lossless=True, family="ort"),
                config("int8-dynamic", "onnxruntime int8 dynamic", text, format="int8",
                       fallback="fp32_layers", family="ort-int8"),
                # weights per channel (the backend's default: an option here would outlive
                # the precision), activations calibrated on the calibration split (QDQ)
                config("int8-static", "onnxruntime int8 static (per-channel)", text + image,
                       format="int8", calibrated=True, fallback="fp32_layers",
                       family="ort-int8"),
                # no native fp16 GEMM on most CPUs: it is measured, never assumed to pay
                config("fp16", "onnxruntime fp16", text, format="fp16", family="ort-fp16")]

    def supports(self, handle: ModelHandle) -> bool:
        return MODEL_FILE in handle.files or handle.model is not None

    def convert(self, handle: ModelHandle, workdir: Path | None, **opts: Any) -> ModelHandle:
        """Export once (and quantize / cast); the result runs from `model.onnx` alone."""
        assert workdir is not None  # writes_files: to_backend always gives one
        _check_options(opts)
        if handle.model is None and not float_graph(handle, opts):
            # already an ONNX model: only session options can change
            if MODEL_FILE not in handle.files:
                raise UserError("nothing to convert: the handle has no torch model and no "
                                f"{MODEL_FILE}")
            have = handle.backend_options.get("precision", "fp32")
            kept = list(handle.backend_options.get("fp32_layers") or [])
            if opts.get("precision", have) != have or list(opts.get("fp32_layers", kept)) != kept:
                raise UserError(f"this ONNX model is already {have}"
                                + (f" with {len(kept)} fp32 layers" if kept else "")
                                + "; convert from the original torch model to change precision")
            return handle.derive(backend=self.name, backend_options={
                **opts, "precision": have, **({"fp32_layers": kept} if kept else {})})
        precision = opts.get("precision", "fp32")
        if precision.startswith("int8") and "reduce_range" not in opts:
            from ..core.hardware import hardware_profile

            opts = {**opts, **int8_settings(hardware_profile().isa)}  # recorded in the handle
        fp32 = export_onnx(handle, workdir / ("model.fp32.onnx" if precision != "fp32"
                                              else MODEL_FILE), opset=opts.get("opset", 17))
        if "fp32_layers" in opts:  # recorded as a list: the same after a JSON round trip
            opts = {**opts, "fp32_layers": check_layers(opts["fp32_layers"], fp32)}
        if precision != "fp32":
            check_deadline(f"the {precision} conversion")
        path = fp32 if precision == "fp32" else convert_precision(
            handle, fp32, workdir / MODEL_FILE, precision,
            calibration_items=calibration_count(opts, 64),
            calibration_method=opts.get("calibration_method", "minmax"),
            per_channel=opts.get("per_channel", True),
            reduce_range=bool(opts.get("reduce_range", False)),
            fp32_layers=opts.get("fp32_layers", ()))
        write_metadata(path, {"task": handle.task, "max_length": handle.max_length,
                              "precision": precision, "name": handle.name})
        if path != fp32:
            fp32.unlink()
        # The graph holds the model now: drop the torch weights so nothing runs torch.
        return handle.derive(model=None, checkpoint=None, replay_from=None,
                             backend=self.name, backend_options={"precision": precision, **opts},
                             files={MODEL_FILE: path})

    def build_cost(self, **opts: Any) -> tuple[float, float]:
        """Another precision is a pass over the exported graph after the export; static
        int8 also runs the calibration items through it."""
        cost = BUILD_COST.get(opts.get("precision", "fp32"), 1.0)
        return cost, cost

    def prepare(self, handle: ModelHandle, **opts: Any) -> OrtRunner:
        _check_options(opts)
        if MODEL_FILE not in handle.files:  # run a torch handle directly: export on the fly
            from .convert import scratch_dir

            handle = self.convert(handle, scratch_dir("react-onnx-"), **opts)
        session = make_session(handle.files[MODEL_FILE],
                               **{k: opts[k] for k in SESSION_OPTIONS if k in opts})
        return OrtRunner(handle, session)


register_backend(OnnxRuntimeBackend())
