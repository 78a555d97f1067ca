"""smollm2-derived artifacts (issue #14): a compressed torch model (safetensors) and a
llama.cpp conversion (GGUF runtime file) save, reload with verified hashes, give the
same outputs as before saving, and serve a completion over HTTP on 127.0.0.1."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.compression import PruneFFN
from reactinfer.core.artifact import verify_artifact
from reactinfer.core.backend import list_backends
from reactinfer.data import texts_for
from reactinfer.tasks import get_task

pytestmark = pytest.mark.integration


def _outputs(h):
    texts = texts_for("eval", limit=2)
    return get_task("causal-lm").evaluate(h.runner(), h.tokenizer, texts, 2, 64)


def _assert_same_outputs(a, b):
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_one_completion(path: Path) -> dict:
    """Start the server on the artifact, wait (bounded) until ready, ask once, stop."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from reactinfer.serving import ServeConfig, create_app
    from reactinfer.serving.server import draining_server

    app = create_app([str(path)], ServeConfig(slo_ms=60000, max_tokens=8))
    port = _free_port()
    server = draining_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for _ in range(1200):  # up to ~2 min: loading and warm-up of a 135M model
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                time.sleep(0.1)
            else:
                raise RuntimeError("server did not become ready")
            r = client.post("/v1/completions", json={"prompt": "def add(a, b):",
                                                     "max_tokens": 4})
            assert r.status_code == 200, r.text
            return r.json()
    finally:
        server.should_exit = True
        thread.join(30)


def test_compressed_smollm2_artifact_reloads_exactly_and_serves(smollm2, tmp_path):
    h = ri.compress(smollm2, [PruneFFN(keep=0.75)])
    ri.Artifact.save(h, tmp_path / "pruned")
    manifest = verify_artifact(tmp_path / "pruned")
    assert "model.safetensors" in manifest["files"] and manifest["backend"] == "torch"
    h2 = ri.load(tmp_path / "pruned")
    _assert_same_outputs(_outputs(h), _outputs(h2))
    body = _serve_one_completion(tmp_path / "pruned")
    assert body["usage"]["completion_tokens"] >= 1


def test_smollm2_llama_cpp_artifact_reloads_exactly_and_serves(smollm2, tmp_path):
    if not list_backends()["llama.cpp"].available():
        pytest.skip(f"llama.cpp: {list_backends()['llama.cpp'].why_unavailable()}")
    h = to_backend(smollm2, "llama.cpp", outtype="q8_0", workdir=tmp_path / "work")
    ri.Artifact.save(h, tmp_path / "gguf")
    manifest = verify_artifact(tmp_path / "gguf")
    assert "model.gguf" in manifest["files"] and manifest["backend"] == "llama.cpp"
    assert not manifest["has_torch_weights"]
    h2 = ri.load(tmp_path / "gguf")
    assert h2.backend == "llama.cpp" and h2.backend_options["outtype"] == "q8_0"
    _assert_same_outputs(_outputs(h), _outputs(h2))
    body = _serve_one_completion(tmp_path / "gguf")
    assert body["usage"]["completion_tokens"] >= 1
