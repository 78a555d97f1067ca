"""The built-in models on their fast backends: minilm on ONNX Runtime, smollm2 on
llama.cpp (the packaged GGUF, and our own GGUF conversion of the torch weights)."""
import numpy as np
import pytest

from reactinfer.backends import to_backend
from reactinfer.core.backend import list_backends
from reactinfer.data import texts_for
from reactinfer.tasks import get_task

pytestmark = pytest.mark.integration


def _require(name):
    b = list_backends()[name]
    if not b.available():
        pytest.skip(f"{name} is not available here: {b.why_unavailable()}")


def test_minilm_on_onnxruntime_matches_torch(minilm, tmp_path):
    _require("onnxruntime")
    texts = texts_for("eval", limit=48)
    base = minilm
    task = get_task("embedding")
    ref = task.evaluate(base.runner(), base.tokenizer, texts, 16, base.max_length)
    for precision, floor in (("fp32", 0.99999), ("int8-dynamic", 0.98)):
        h = to_backend(base, "onnxruntime", precision=precision, workdir=tmp_path / precision)
        q = task.compare(ref, task.evaluate(h.runner(), h.tokenizer, texts, 16, h.max_length))
        assert q["mean_cosine"] >= floor, (precision, q)
    # MatMul weights become int8; the 47 MB word-embedding table (a Gather) stays fp32
    assert (tmp_path / "int8-dynamic" / "model.onnx").stat().st_size < \
        0.7 * (tmp_path / "fp32" / "model.onnx").stat().st_size


def test_smollm2_packaged_gguf_on_llama_cpp(smollm2):
    _require("llama.cpp")
    texts = texts_for("eval", limit=4)
    task = get_task("causal-lm")
    ref = task.evaluate(smollm2.runner(), smollm2.tokenizer, texts, 4, 128)
    h = to_backend(smollm2, "llama.cpp")  # unchanged weights: the packaged file as is
    assert h.backend_options["outtype"] == "source" and h.model is None
    q = task.compare(ref, task.evaluate(h.runner(), h.tokenizer, texts, 4, 128))
    # the torch weights are the de-quantized Q4_1 ones, but llama.cpp's Q4_1 kernels also
    # quantize activations to 8 bits: measured here +2% (8 texts) to +6% (these 4 short ones)
    assert abs(q["perplexity_ratio"] - 1) < 0.1 and q["token_agreement"] > 0.9, q
    out = h.runner().generate(smollm2.tokenizer("def add(a, b):")["input_ids"], 8)
    assert len(out) == 8


def test_smollm2_own_gguf_conversion_matches_torch(smollm2, tmp_path):
    _require("llama.cpp")
    texts = texts_for("eval", limit=4)
    task = get_task("causal-lm")
    ref = task.evaluate(smollm2.runner(), smollm2.tokenizer, texts, 4, 128)
    h = to_backend(smollm2, "llama.cpp", outtype="f16", workdir=tmp_path)
    q = task.compare(ref, task.evaluate(h.runner(), h.tokenizer, texts, 4, 128))
    assert abs(q["perplexity_ratio"] - 1) < 0.01 and q["token_agreement"] > 0.95, q
    ids = smollm2.tokenizer("The os module provides")["input_ids"]
    ours = np.array(h.runner().generate(ids, 8))
    torch_ids = np.array(smollm2.runner().generate(ids, 8))
    assert (ours[:4] == torch_ids[:4]).all()
