"""The torch backends' `device` option (auto, cpu, cuda). The CUDA tests run only where
torch sees a GPU; the rest run everywhere (a GPU is hidden from them where they need none)."""
import numpy as np
import pytest
import torch

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.cli.main import main
from reactinfer.compression import CastHalf, QuantizeDynamicInt8, compress
from reactinfer.core.errors import UserError
from reactinfer.tasks import tokenize
from reactinfer.testing import save_tiny_hf, sqnr_db, tiny_handle

BACKENDS = ("torch", "torch-compile")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(handle, texts):
    return handle.runner()(tokenize(handle.tokenizer, texts, handle.max_length))


def _first_device(model):
    return next(model.parameters()).device.type


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):  # torch says a GPU is there; nothing may actually go to it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_cpu_matches_the_default_and_leaves_the_model_in_place(no_gpu, texts):
    h = tiny_handle("embedding")
    cpu = to_backend(h, "torch", device="cpu")
    np.testing.assert_array_equal(_run(cpu, texts), _run(h, texts))
    assert h.runner().device == cpu.runner().device == "cpu"
    assert cpu.runner().model is h.model  # no copy on the CPU
    lm = tiny_handle("causal-lm")
    ids = lm.tokenizer("open the archive")["input_ids"]
    assert to_backend(lm, "torch", device="cpu").runner().generate(ids, 4) == \
        lm.runner().generate(ids, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_without_a_gpu_is_a_user_error(no_gpu, backend):
    h = to_backend(tiny_handle("embedding"), backend, device="cuda")
    with pytest.raises(UserError, match="no CUDA GPU"):
        h.runner()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_device_is_a_user_error(backend):
    with pytest.raises(UserError, match="auto, cpu, cuda"):
        to_backend(tiny_handle("embedding"), backend, device="tpu").runner()


def test_dynamic_int8_refuses_cuda_and_auto_keeps_it_on_the_cpu(fake_gpu, texts):
    q = compress(tiny_handle("embedding"), [QuantizeDynamicInt8()])
    with pytest.raises(UserError, match="dynamic-int8.*CPU kernels only"):
        to_backend(q, "torch", device="cuda").runner()
    assert q.runner().device == "cpu"  # auto, on a machine that (says it) has a GPU
    assert _run(q, texts[:4]).dtype == np.float32


def test_bench_api_and_cli_take_device(no_gpu, texts, tmp_path, capsys):
    r = ri.bench(tiny_handle("embedding"), batch_size=4, eval_texts=texts, latency_runs=3,
                 progress=False, device="cpu")
    assert r["device"] == "cpu" and r["backend_options"] == {"device": "cpu"}
    assert r["quality"]["mean_cosine"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="no device option|not available here"):
        ri.bench(tiny_handle("embedding"), eval_texts=texts, progress=False,
                 backend="onnxruntime", device="cpu")
    model = save_tiny_hf(tmp_path / "m", "embedding")
    assert main(["bench", str(model), "--device", "cuda", "--no-progress"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_matches_cpu_and_the_handle_stays_on_the_cpu(backend, texts):
    h = tiny_handle("embedding")
    ref = _run(to_backend(h, "torch", device="cpu"), texts)
    gpu = to_backend(h, backend, device="cuda")
    for _ in range(2):  # torch.compile: the first calls compile
        out = _run(gpu, texts)
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    assert gpu.runner().device == "cuda" and _first_device(gpu.runner().model) == "cuda"
    assert _first_device(h.model) == "cpu" and _first_device(gpu.model) == "cpu"
    assert h.derive().runner().device == "cuda"  # auto picks the GPU


@cuda
def test_cuda_generation_and_half_precision(texts):
    lm = tiny_handle("causal-lm")
    ids = lm.tokenizer("open the archive")["input_ids"]
    cpu = to_backend(lm, "torch", device="cpu").runner().generate(ids, 6)
    assert to_backend(lm, "torch", device="cuda").runner().generate(ids, 6) == cpu
    assert _first_device(lm.model) == "cpu"
    h = tiny_handle("embedding")
    ref = _run(to_backend(h, "torch", device="cpu"), texts)
    for dtype in ("fp16", "bf16"):
        half = to_backend(compress(h, [CastHalf(dtype)]), "torch", device="cuda")
        out = _run(half, texts)
        assert out.dtype == np.float32 and sqnr_db(ref, out) >= (40.0 if dtype == "fp16" else 25.0)


def test_choose_backend_passes_device_only_to_backends_that_take_it(no_gpu, texts):
    from reactinfer.core.backend import list_backends
    from reactinfer.measure import choose_backend

    if not list_backends()["onnxruntime"].available():
        pytest.skip("needs a second backend (onnxruntime)")
    _, decision = choose_backend(tiny_handle("embedding"), texts, batch_size=8,
                                 precision="fp32", device="cpu")
    opts = {r["backend"]: r["options"] for r in decision["candidates"]}
    assert opts["torch"] == {"device": "cpu"} and "device" not in opts["onnxruntime"]
