"""OpenVINO: the task-wrapped module is exported to ONNX once (the same graph, with the same
node names, as the onnxruntime backend: embeddings carry pooling + normalisation), read by
OpenVINO and saved as IR (`model.xml` + `model.bin`), then run with no PyTorch.

- fp32; bf16 through the INFERENCE_PRECISION_HINT, only where the CPU has native bf16
  (AVX-512 BF16 or AMX: elsewhere OpenVINO emulates it, slower than fp32);
- int8: NNCF post-training quantization calibrated on the calibration split of the data
  the task reads (texts, or images for an image model): text models with the transformer
  model type (SmoothQuant, its alpha tuned on calibration data unless `smooth_quant` sets
  it: backends/openvino_int8.py), image models (CNNs) with NNCF's default
  CNN scheme (performance preset: symmetric activations, per-channel weights, fast bias
  correction); weights keep to 7 bits (NNCF's overflow fix) on CPUs whose int8 kernels
  saturate (no VNNI). `fp32_layers` names MatMul/Gemm/Conv nodes of the exported ONNX
  graph (OpenVINO keeps them as op names) that stay float. `rest` is the
  precision of what int8 leaves in float (those layers, attention's softmax, norms, GELU):
  fp32, or bf16 where the CPU has it native (faster; benchmarks/results/minilm_limit.md).

Causal LMs are not supported: the exported graph has no KV cache, so generation would
recompute the prompt every token (use llama.cpp).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backend import Backend, Batch, EngineConfig, register_backend
from ..core.backend import check_options as check_known_options
from ..core.deadline import check as check_deadline
from ..core.errors import UserError
from .onnx_layers import calibration_feeds, graph_feed
from .onnxruntime import calibration_count, float_graph
from .openvino_int8 import (
    QUANTIZE_COST,
    SMOOTH_QUANT_ALPHAS,
    check_smooth_quant,
    input_quantizer,
    layer_ops,
    quantize_int8,
)

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

XML_FILE, BIN_FILE = "model.xml", "model.bin"  # names in handle.files and artifacts
PRECISIONS = ("fp32", "bf16", "int8")
HINTS = ("latency", "throughput")
# Throughput measured faster at batch 32 than latency for fp32, bf16 and int8 alike (minilm,
# 2 cores, benchmarks/openvino_minilm.py): two streams, each half the batch on one core,
# beat one stream whose threads synchronise every op. Batch-1 latency pays for it.
DEFAULT_HINT = "throughput"
OVERFLOW_FIX = ("auto", "enable", "disable", "first_layer")
# Used once, at conversion; the rest configure the compiled model every time it loads.
EXPORT_OPTIONS = ("precision", "calibration_items", "calibration_texts", "fp32_layers",
                  "overflow_fix", "smooth_quant", "opset")
SESSION_OPTIONS = ("threads", "hint", "rest")
RESTS = ("fp32", "bf16")
# The float parts run in this precision (OpenVINO's default is bf16 wherever the CPU has it;
# int8 keeps its float layers in fp32, so `fp32_layers` means what it says, unless `rest` asks
# for bf16).
_INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_REST_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_HINT = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def _installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def check_options(opts: dict[str, Any], isa: dict[str, bool]) -> None:
    """Refuse unknown options and impossible settings in one line each; `isa` is the
    hardware profile's (bf16 needs it native)."""
    from ..core.hardware import native_bf16

    check_known_options("openvino", opts, EXPORT_OPTIONS + SESSION_OPTIONS,
                        {"precision": PRECISIONS, "hint": HINTS, "overflow_fix": OVERFLOW_FIX,
                         "rest": RESTS},
                        ("threads", "calibration_items", "calibration_texts"))
    if opts.get("precision") == "bf16" and not native_bf16(isa):
        raise UserError("openvino precision 'bf16' needs a CPU with native bf16 (AVX-512 BF16 "
                        "or AMX), which this one lacks; use precision fp32 or int8")
    if opts.get("rest", "fp32") != "fp32":
        if opts.get("precision") != "int8":
            raise UserError("openvino rest sets the precision of what int8 leaves in float: "
                            "use it with precision int8 (for all-bf16, precision bf16)")
        if not native_bf16(isa):
            raise UserError("openvino rest 'bf16' needs a CPU with native bf16 (AVX-512 BF16 "
                            "or AMX), which this one lacks; leave rest at fp32")
    check_smooth_quant(opts.get("smooth_quant"))
    if "smooth_quant" in opts and opts.get("precision") != "int8":
        raise UserError("openvino smooth_quant tunes int8's SmoothQuant: use it with "
                        "precision int8")
    layers = opts.get("fp32_layers")
    if layers and opts.get("precision") != "int8":
        raise UserError("openvino fp32_layers keeps layers out of int8: use it with "
                        "precision int8")
    if layers is not None and (isinstance(layers, str) or
                               not all(isinstance(n, str) for n in layers)):
        raise UserError("openvino fp32_layers is a list of MatMul/Gemm/Conv node names, e.g. "
                        "['/model/encoder/layer.0/output/dense/MatMul']")


def overflow_fix_for(isa: dict[str, bool]) -> str:
    """NNCF's overflow fix for a CPU: 7-bit weights in every layer where the int8 kernels
    saturate (no VNNI), none where they add in 32 bits."""
    from ..core.hardware import int8_saturates

    return "enable" if int8_saturates(isa) else "disable"


# -- conversion ---------------------------------------------------------------------------
def quantizable_layers(model: Any) -> list[str]:
    """Names of the MatMul and convolution ops (ONNX MatMul and Gemm become MatMul, Conv a
    (Group)Convolution) `fp32_layers` may name: the ONNX node names, which OpenVINO keeps
    as friendly names (with BIAS_SPLIT appended where it split off a bias)."""
    return list(layer_ops(model))


def is_float_layer(model: Any, name: str) -> bool:
    """Whether the layer `name` of an OpenVINO model computes in float: no quantized
    activation (FakeQuantize, maybe through a Pad) and no int8 weight feeds it."""
    op = layer_ops(model)[name]
    if input_quantizer(op) is not None:
        return False
    for value in op.input_values():
        node = value.get_node()
        if node.get_type_name() == "FakeQuantize":
            return False
        if node.get_type_name() in ("Multiply", "Subtract", "Convert") and any(
                v.get_node().get_type_name() == "Constant" and
                v.get_element_type().get_type_name() in ("i8", "u8")
                for src in node.input_values() for v in _through_converts(src)):
            return False  # weight decompressed from int8: Constant(i8) → Convert → Multiply
    return True


def _through_converts(value: Any) -> Iterator[Any]:
    yield value
    node = value.get_node()
    if node.get_type_name() in ("Convert", "Subtract"):
        for v in node.input_values():
            yield from _through_converts(v)


def convert_ir(handle: ModelHandle, workdir: Path, opts: dict[str, Any],
               progress: bool = False) -> dict[str, Path]:
    """Export → (quantize) → IR files in `workdir`; returns {name: path}."""
    import openvino as ov

    from .onnxruntime import export_onnx

    check_deadline("the ONNX export")
    onnx_path = export_onnx(handle, workdir / "model.fp32.onnx", opset=opts.get("opset", 17))
    check_deadline("the OpenVINO conversion")
    model = ov.convert_model(str(onnx_path))
    if opts.get("precision") == "int8":
        check_deadline("int8 calibration")
        model, alpha = quantize_int8(handle, model, calibration_count(opts, 128),
                                     list(opts.get("fp32_layers") or ()), opts["overflow_fix"],
                                     opts.get("smooth_quant", "auto"), progress)
        if alpha is not None:  # recorded resolved, as overflow_fix is: a report says which
            opts["smooth_quant"] = alpha
    model.set_rt_info(handle.task, ["reactinfer", "task"])
    model.set_rt_info(str(handle.max_length), ["reactinfer", "max_length"])
    # compress_to_fp16=False: fp32 weights stay fp32 (the default would halve them)
    ov.save_model(model, str(workdir / XML_FILE), compress_to_fp16=False)
    onnx_path.unlink()
    return {XML_FILE: workdir / XML_FILE, BIN_FILE: workdir / BIN_FILE}


# -- runtime ------------------------------------------------------------------------------
def compile_config(precision: str, hint: str, threads: int | None,
                   rest: str = "fp32") -> dict[str, Any]:
    """OpenVINO's compile properties; `rest` (int8 only) is the float ops' precision."""
    float_precision = _REST_PRECISION[rest] if precision == "int8" else \
        _INFERENCE_PRECISION[precision]
    config: dict[str, Any] = {"PERFORMANCE_HINT": _HINT[hint],
                              "INFERENCE_PRECISION_HINT": float_precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OvRunner:
    """Runs the compiled IR. Under the throughput hint OpenVINO makes several streams; one
    batch is split across them (one infer request each, run together), so a single caller
    still uses every core. Calls from several threads (a server) take turns on the
    requests: each call already uses every core."""

    kv_cache = False

    def __init__(self, handle: ModelHandle, compiled: Any):
        self.handle = handle
        self.compiled = compiled
        self.inputs = [i.get_any_name() for i in compiled.inputs]
        n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [compiled.create_infer_request() for _ in range(max(1, n))]
        self._lock = threading.Lock()

    def __call__(self, batch: Batch) -> np.ndarray:
        feed = graph_feed(self.inputs, batch, "OpenVINO")
        rows = len(next(iter(feed.values())))
        parts = np.array_split(np.arange(rows), min(len(self.requests), rows))  # (B,) → n
        used = self.requests[:len(parts)]
        with self._lock:
            for req, idx in zip(used, parts, strict=True):
                req.start_async({k: v[idx[0]:idx[-1] + 1] for k, v in feed.items()})
            for req in used:
                req.wait()
            return np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32)
                                   for r in used])


class OpenVinoBackend(Backend):
    name = "openvino"
    writes_files = True
    precision_option = "precision"
    description = ("OpenVINO (IR from the exported ONNX graph; fp32, bf16 where the CPU has "
                   "it native, int8 by NNCF (SmoothQuant for text); throughput (default) or "
                   "latency hint; encoders and CNNs: no KV cache for causal LMs, use "
                   "llama.cpp)")

    layer_ranking = ("by how much the output's error falls when each one's input stays float, "
                     "in the int8 model")

    def build_cost(self, **opts: Any) -> tuple[float, float]:
        """int8 adds NNCF quantization passes to the conversion: one with a given
        SmoothQuant alpha, one per alpha when it is tuned ("auto"), which a deadline cuts
        down to the first (openvino_int8.tune_smooth_quant)."""
        if opts.get("precision") != "int8":
            return 1.0, 1.0
        tuned = opts.get("smooth_quant", "auto") == "auto"
        return 1.0 + QUANTIZE_COST, 1.0 + QUANTIZE_COST * (len(SMOOTH_QUANT_ALPHAS)
                                                           if tuned else 1)

    def available(self) -> bool:
        return _installed()

    def rank_layers(self, handle: ModelHandle, items: Sequence[Any],
                    **opts: Any) -> dict[str, float]:
        """openvino_int8.rank_layers on the int8 model `opts` builds (no layer kept float)."""
        import openvino as ov

        from .convert import to_backend
        from .openvino_int8 import rank_layers

        int8 = to_backend(handle, self.name, **{**opts, "fp32_layers": []})
        fp32 = to_backend(handle, self.name, precision="fp32")
        core = ov.Core()
        models = [core.read_model(str(h.files[XML_FILE]), str(h.files[BIN_FILE]))
                  for h in (int8, fp32)]
        names = [i.get_any_name() for i in models[0].inputs]
        return rank_layers(models[0], models[1], calibration_feeds(fp32, items, names=names))

    def why_unavailable(self) -> str:
        return "" if self.available() else "pip install openvino nncf"

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["embedding", "classification", "image-classification"],
                "options": {"precision": list(PRECISIONS), "hint": list(HINTS),
                            "threads": "int",
                            "calibration_items": "int (128, int8; texts or images of the "
                                                 "calibration split; old name "
                                                 "calibration_texts)",
                            "fp32_layers": "list of MatMul/Gemm/Conv node names kept float "
                                           "(int8)",
                            "rest": "fp32, bf16 (int8: what stays float runs in this)",
                            "smooth_quant": "auto (default: tuned on calibration data), "
                                            "off, or an alpha in [0, 1] (int8, text)",
                            "overflow_fix": list(OVERFLOW_FIX), "opset": "int (17)"},
                "files": [XML_FILE, BIN_FILE], "needs_torch_at_run_time": False}

    def engine_configs(self) -> list[EngineConfig]:
        text, image = ("embedding", "classification"), ("image-classification",)

        def config(options: dict[str, Any], name: str, tasks: tuple[str, ...], **facts: Any
                   ) -> EngineConfig:
            return EngineConfig(self.name, name, tasks, options, **facts)

        return [config({"precision": "fp32"}, "openvino fp32", text + image, lossless=True,
                       family="openvino"),
                # OpenVINO refuses bf16 on a CPU without it native rather than emulate it
                config({"precision": "bf16"}, "openvino bf16", text + image, format="bf16",
                       native=("bf16",), family="openvino-bf16"),
                # NNCF post-training quantization, calibrated on the calibration split
                config({"precision": "int8"}, "openvino int8", text + image, format="int8",
                       calibrated=True, fallback="fp32_layers", family="openvino-int8"),
                # what int8 leaves in float (attention, norms, kept layers) in bf16: faster
                # where the CPU has bf16 native (benchmarks/results/minilm_limit.md)
                config({"precision": "int8", "rest": "bf16"}, "openvino int8 (bf16 rest)", text,
                       format="int8", native=("bf16",), calibrated=True,
                       fallback="fp32_layers", family="openvino-int8")]

    def supports(self, handle: ModelHandle) -> bool:
        if XML_FILE in handle.files:  # an IR runs as it is, without torch (nor the tasks,
            return True  # whose modules import it): only non-generative models get one
        from ..tasks import get_task

        return not get_task(handle.task).generates and (handle.model is not None
                                                        or float_graph(handle))

    def convert(self, handle: ModelHandle, workdir: Path | None, **opts: Any) -> ModelHandle:
        """Export and convert once; the result runs from `model.xml` + `model.bin` alone."""
        from ..core.hardware import hardware_profile

        assert workdir is not None  # writes_files: to_backend always gives one
        isa = hardware_profile().isa
        check_options(opts, isa)
        opts = {"precision": "fp32", **opts}
        if handle.model is None and not float_graph(handle):  # IR: compile options only
            if XML_FILE not in handle.files:
                raise UserError(f"nothing to convert: the handle has no torch model and no "
                                f"{XML_FILE}")
            have = handle.backend_options.get("precision", "fp32")
            # bf16 is an fp32 IR run in bf16: the two convert into each other freely
            if opts["precision"] != have and {opts["precision"], have} != {"fp32", "bf16"}:
                raise UserError(f"this OpenVINO model is already {have}; convert from the "
                                "original torch model to change precision")
            return handle.derive(backend=self.name, backend_options=opts)
        if opts["precision"] == "int8":
            opts.setdefault("overflow_fix", "auto")
            if opts["overflow_fix"] == "auto":  # recorded resolved, so a report says which
                opts["overflow_fix"] = overflow_fix_for(isa)
        files = convert_ir(handle, workdir, opts)
        return handle.derive(model=None, checkpoint=None, replay_from=None,
                             backend=self.name, backend_options=opts, files=files)

    def prepare(self, handle: ModelHandle, **opts: Any) -> OvRunner:
        import openvino as ov

        from ..core.hardware import hardware_profile

        check_options(opts, hardware_profile().isa)
        if XML_FILE not in handle.files:  # run a torch handle directly: convert on the fly
            from .convert import scratch_dir

            handle = self.convert(handle, scratch_dir("react-openvino-"), **opts)
            opts = handle.backend_options
        core = ov.Core()
        model = core.read_model(str(handle.files[XML_FILE]), str(handle.files[BIN_FILE]))
        config = compile_config(opts.get("precision", "fp32"), opts.get("hint", DEFAULT_HINT),
                                opts.get("threads"), opts.get("rest", "fp32"))
        return OvRunner(handle, core.compile_model(model, "CPU", config))


register_backend(OpenVinoBackend())
