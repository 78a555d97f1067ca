"""The real server on 127.0.0.1 (uvicorn in a thread, or `react serve` in a subprocess)
with tiny models saved as artifacts: every endpoint, bad input, batching, shedding, the
ladder, the cache, streaming and the drain."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from reactinfer.core.artifact import Artifact  # noqa: E402
from reactinfer.serving import ServeConfig, create_app  # noqa: E402
from reactinfer.serving.server import draining_server  # noqa: E402
from reactinfer.testing import tiny_handle, tiny_model  # noqa: E402

pytestmark = pytest.mark.integration
SRC = Path(__file__).resolve().parents[2] / "src"


class SlowRunner:
    """A real model's runner with an adjustable delay per call: injected slowness."""

    def __init__(self, runner, delay: float):
        self.runner, self.delay = runner, delay

    def __call__(self, batch):
        time.sleep(self.delay)
        return self.runner(batch)


def slow(handle, delay: float):
    handle._runner = SlowRunner(handle.runner(), delay)
    return handle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(models, ready_s: float = 15, **config):
    app = create_app(models, ServeConfig(**config))
    port = free_port()
    server = draining_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(int(ready_s / 0.05)):
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/v2/health/ready").status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not become ready")
        try:
            yield SimpleServer(base, client, app.state.react, server, thread)
        finally:
            server.should_exit = True
            thread.join(15)


class SimpleServer:
    def __init__(self, base, client, state, server, thread):
        self.base, self.client, self.state, self.server, self.thread = \
            base, client, state, server, thread

    def metric(self, name: str, **labels) -> float:
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def burst(base: str, path: str, bodies, headers=None):
    """Send all bodies at once; return the responses (or exceptions) in order."""

    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            return await asyncio.gather(*(c.post(path, json=b, headers=headers)
                                          for b in bodies), return_exceptions=True)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-artifacts")
    Artifact.save(tiny_handle("embedding"), d / "emb")
    Artifact.save(tiny_handle("causal-lm"), d / "lm")
    return d


@pytest.fixture(scope="module")
def server(artifacts):
    with running([str(artifacts / "emb"), str(artifacts / "lm")], slo_ms=5000, max_batch=8,
                 max_delay_ms=20, max_inputs=4, max_body_bytes=4096, max_tokens=16) as s:
        yield s


EMB, LM = "tiny-embedding", "tiny-causal-lm"


def test_openai_endpoints(server):
    c = server.client
    models = c.get("/v1/models").json()["data"]
    assert {m["id"] for m in models} == {EMB, LM}
    r = c.post("/v1/embeddings", json={"model": EMB, "input": ["open the file", "a queue"]})
    assert r.status_code == 200 and r.headers["x-react-variant"] == "emb"
    data = r.json()["data"]
    vecs = np.array([d["embedding"] for d in data])
    assert vecs.shape == (2, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    r = c.post("/v1/embeddings", json={"input": "open the file", "encoding_format": "base64"})
    raw = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    # the float form is each float32 at its shortest exact repr: the same bits as base64
    assert vecs[0].astype("<f4").tobytes() == raw.tobytes()
    r = c.post("/v1/completions", json={"model": LM, "prompt": "return a new list",
                                        "max_tokens": 5})
    body = r.json()
    assert r.status_code == 200 and r.headers["x-react-variant"] == "lm"
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 5
    r = c.post("/v1/chat/completions", json={"model": LM, "max_tokens": 4, "messages": [
        {"role": "user", "content": "open the archive"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert "/v1/embeddings" in c.get("/openapi.json").json()["paths"]


def test_torch_generation_gives_logprobs_and_n_and_refuses_grammars(server):
    """The engine-less (torch) path: log-probabilities and n choices work; a grammar
    (structured output needs llama.cpp) is refused with 400, not ignored."""
    c = server.client
    r = c.post("/v1/completions", json={"model": LM, "prompt": "open the file", "n": 2,
                                        "max_tokens": 3, "logprobs": 2})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [ch["index"] for ch in choices] == [0, 1]
    for ch in choices:
        lps = ch["logprobs"]["token_logprobs"]
        assert 0 < len(lps) <= 3 and all(np.isfinite(x) and x <= 0 for x in lps)
        assert all(len(d) <= 2 for d in ch["logprobs"]["top_logprobs"])
    r = c.post("/v1/chat/completions", json={"model": LM, "max_tokens": 3, "messages": [
        {"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and "llama.cpp" in r.text, r.text


def test_kserve_endpoints_and_metrics(server):
    c = server.client
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get(f"/v2/models/{EMB}").json()
    assert meta["versions"] == ["emb"] and meta["parameters"]["variants"][0]["service_ms"]
    r = c.post(f"/v2/models/{EMB}/infer", json={"id": "q1", "inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["open", "close"]}]})
    out = r.json()["outputs"][0]
    assert r.status_code == 200 and r.json()["id"] == "q1" and out["shape"] == [2, 32]
    assert len(out["data"]) == 64 and r.headers["x-react-variant"] == "emb"
    r = c.post(f"/v2/models/{LM}/infer", json={"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["open"]}],
        "parameters": {"max_tokens": 3}})
    assert r.status_code == 200 and r.json()["outputs"][0]["datatype"] == "BYTES"
    text = c.get("/metrics").text
    for name in ("react_requests_total", "react_queue_length", "react_batch_size_bucket",
                 "react_queue_seconds_bucket", "react_compute_seconds_bucket",
                 "react_request_latency_seconds_bucket", "react_active_variant",
                 "react_cache_hits_total", "react_effective_quality"):
        assert name in text, name
    assert server.metric("react_requests_total", endpoint="/v2/models/{name}/infer",
                         status="200") >= 2


@pytest.mark.parametrize("path,body,status,words", [
    ("/v1/embeddings", b"{not json", 400, "malformed JSON"),
    ("/v1/embeddings", b"[1, 2]", 400, "JSON object"),
    ("/v1/embeddings", b"", 400, "empty"),
    ("/v1/embeddings", {"input": 5}, 400, "string or a list"),
    ("/v1/embeddings", {"input": []}, 400, "empty"),
    ("/v1/embeddings", {"input": ["  "]}, 400, "empty"),
    ("/v1/embeddings", {"input": ["a"] * 5}, 400, "limit is 4"),
    ("/v1/embeddings", {"model": 3, "input": "a"}, 400, "'model'"),
    ("/v1/embeddings", {"model": "nope", "input": "a"}, 404, "not served"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": "a " * 3000}, 413, "limit"),
    ("/v1/embeddings", {"model": LM, "input": "a"}, 400, "causal-lm"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 99}, 400, "at most 16"),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "content"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    (f"/v2/models/{EMB}/infer", {"inputs": [{"datatype": "FP32", "data": [1]}]}, 400, "BYTES"),
    (f"/v2/models/{EMB}/infer", {"inputs": [{"shape": [3], "data": ["a"]}]}, 400, "shape"),
    (f"/v2/models/{EMB}/infer", {"inputs": "x"}, 400, "inputs"),
    ("/v2/models/nope/infer", {"inputs": [{"data": ["a"]}]}, 404, "not served"),
])
def test_bad_input_gets_a_4xx_that_says_why(server, path, body, status, words):
    c = server.client
    if isinstance(body, bytes):
        r = c.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = c.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    message = err["message"] if isinstance(err, dict) else err
    assert words in message
    assert c.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_bad_deadline_header_and_long_text_policies(server, artifacts):
    c = server.client
    r = c.post("/v1/embeddings", json={"input": "a"}, headers={"X-Deadline-Ms": "soon"})
    assert r.status_code == 400 and "X-Deadline-Ms" in r.json()["error"]["message"]
    long = " ".join(["open the file"] * 40)  # ~120 tokens; the tiny model takes 64
    assert c.post("/v1/embeddings", json={"input": long}).status_code == 200  # truncated
    with running([str(artifacts / "emb")], long_text="error", slo_ms=5000) as strict:
        r = strict.client.post("/v1/embeddings", json={"input": ["ok", long]})
        assert r.status_code == 400
        assert "'input'[1] has" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_batches_form_and_cache_hits(server):
    before = server.metric("react_batch_size_count", model=EMB)
    singles = server.metric("react_batch_size_bucket", model=EMB, le="1")
    # letters, not digits: the tiny tokenizer maps "9" past the tiny model's vocabulary
    texts = [f"the thread waits {chr(97 + i)}" for i in range(24)]
    rs = burst(server.base, "/v1/embeddings", [{"input": t} for t in texts])
    assert all(r.status_code == 200 for r in rs)
    calls = server.metric("react_batch_size_count", model=EMB) - before
    single_calls = server.metric("react_batch_size_bucket", model=EMB, le="1") - singles
    assert calls < 24 and single_calls < calls  # several requests shared a model call
    hits = server.metric("react_cache_hits_total", model=EMB)
    again = server.client.post("/v1/embeddings", json={"input": "the  thread waits d "})
    assert server.metric("react_cache_hits_total", model=EMB) == hits + 1
    assert again.json()["data"][0]["embedding"] == rs[3].json()["data"][0]["embedding"]


def test_streaming_yields_tokens_as_they_are_made(server):
    c = server.client
    model = server.state.groups[LM].ladder.variants[0].handle.model
    made: list[float] = []
    pre = model.register_forward_pre_hook(lambda m, a, k: time.sleep(0.05), with_kwargs=True)
    post = model.register_forward_hook(lambda m, a, o: made.append(time.monotonic()))
    try:
        msgs = [{"role": "user", "content": "compute the hash"}]
        # seeded sampling: the tiny model's greedy answer is special tokens, no text
        ask = {"messages": msgs, "max_tokens": 8, "temperature": 1.0, "seed": 0}
        ref = c.post("/v1/chat/completions", json=ask).json()
        made.clear()
        arrivals, events = [], []
        with c.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["x-react-variant"] == "lm"
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic())
                    events.append(line[6:])
    finally:
        pre.remove()
        post.remove()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [ch for ch in chunks if "content" in ch["choices"][0]["delta"]]
    # one event per piece of text (a token that ends no character sends none)
    assert 2 <= len(tokens) <= ref["usage"]["completion_tokens"] == len(made)
    assert "".join(ch["choices"][0]["delta"]["content"] for ch in tokens) == \
        ref["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # the first token reached the client before the model had made the last one
    assert arrivals[1] < made[-1]


def test_full_queue_and_hopeless_deadline_get_429_then_recover(artifacts):
    h = slow(tiny_handle("embedding"), 0.3)
    with running([h], max_queue=2, max_batch=1) as s:  # no SLO: only the bound and stated deadlines
        rs = burst(s.base, "/v1/embeddings", [{"input": f"item {i}"} for i in range(8)])
        codes = sorted(r.status_code for r in rs)
        assert codes.count(429) >= 4 and codes.count(200) >= 2
        shed = next(r for r in rs if r.status_code == 429)
        assert int(shed.headers["retry-after"]) >= 1
        assert shed.json()["error"]["type"] == "rate_limit_error"
        r = s.client.post("/v1/embeddings", json={"input": "x"}, headers={"X-Deadline-Ms": "5"})
        assert r.status_code == 429 and "deadline" in r.json()["error"]["message"]
        assert s.metric("react_rejected_total", reason="queue_full") >= 4
        assert s.client.post("/v1/embeddings", json={"input": "after"}).status_code == 200


def test_default_settings_answer_a_burst_that_fits_the_queue():
    """#15: 40 concurrent requests of 16 texts, no client deadline, default settings (no
    SLO): all are answered, however long the queue takes (it was 39 refusals with a
    default 100 ms SLO)."""
    h = slow(tiny_handle("embedding"), 0.05)  # 20 calls of 32 texts: about a second
    with running([h]) as s:
        bodies = [{"input": [f"text {i} of request {k}" for i in range(16)]} for k in range(40)]
        rs = burst(s.base, "/v1/embeddings", bodies)
        assert [getattr(r, "status_code", r) for r in rs] == [200] * 40
        assert all(len(r.json()["data"]) == 16 for r in rs)
        assert s.metric("react_rejected_total") == 0


def test_api_key_guards_inference_routes_only(artifacts):
    key = "s3cret-key"
    with running([str(artifacts / "emb"), str(artifacts / "lm")], api_key=key) as s:
        c, infer = s.client, f"/v2/models/{EMB}/infer"
        v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
        for auth in (None, "Bearer wrong", f"Basic {key}", f"Bearer {key}x"):
            headers = {"Authorization": auth} if auth else {}
            r = c.post("/v1/embeddings", json={"input": "open"}, headers=headers)
            assert r.status_code == 401, auth
            err = r.json()["error"]
            assert err["code"] == "invalid_api_key" and "Authorization: Bearer" in err["message"]
            assert key not in r.text and r.headers["www-authenticate"].startswith("Bearer")
            assert c.post(infer, json=v2, headers=headers).status_code == 401
            assert isinstance(c.post(infer, json=v2, headers=headers).json()["error"], str)
            assert c.get("/v1/models", headers=headers).status_code == 401
        ok = {"Authorization": f"Bearer {key}"}
        assert c.post("/v1/embeddings", json={"input": "open"}, headers=ok).status_code == 200
        assert c.post(infer, json=v2, headers=ok).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2},
                      headers=ok).status_code == 200
        for open_path in ("/v2/health/ready", "/v2/health/live", "/metrics",
                          f"/v2/models/{EMB}/ready"):
            assert c.get(open_path).status_code == 200, open_path
        assert s.metric("react_requests_total", endpoint="unauthorized", status="401") == 16


def test_hopeless_requests_are_shed_before_the_body_is_read(artifacts):
    """When no model could answer even one item in time, the 429 comes before routing and
    body parsing: the refusal costs the event loop almost nothing under overload."""
    with running([str(artifacts / "emb"), str(artifacts / "lm")], slo_ms=60_000) as s:
        hopeless = {"X-Deadline-Ms": "0.001"}
        for path in ("/v1/embeddings", "/v1/completions", f"/v2/models/{EMB}/infer"):
            r = s.client.post(path, content=b"{not json", headers=hopeless)
            assert r.status_code == 429, (path, r.text)
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            msg = err["message"] if path.startswith("/v1/") else err
            assert "deadline cannot be met" in msg
        assert s.metric("react_requests_total", endpoint="/v2/models/{name}/infer",
                        status="429") == 1
        # with a deadline some request could meet, the body is read and judged as usual
        r = s.client.post("/v1/embeddings", content=b"{not json", headers={"X-Deadline-Ms": "5000"})
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
        r = s.client.post("/v1/embeddings", json={"input": "fine"})
        assert r.status_code == 200


def test_ladder_steps_down_under_slowness_and_back_up():
    big = tiny_handle("embedding")
    small = big.derive(model=tiny_model("embedding", seed=1, layers=1), name="small")
    big = slow(big.derive(name="big"), 0.02)
    cfg = dict(slo_ms=500, max_batch=4, max_delay_ms=1, ewma_alpha=0.7, up_hold_s=0.3,
               probe_s=0.1)
    with running([big, small], **cfg) as s:
        (g,) = s.state.groups.values()  # one model, two variants
        assert [v.name for v in g.ladder.variants] == ["big", "small"]

        def served(text):
            r = s.client.post("/v1/embeddings", json={"input": text})
            assert r.status_code == 200
            return r.headers["x-react-variant"]

        assert served("one") == "big"
        big._runner.delay = 1.0  # the big variant turns slow
        assert served("two") == "big"  # measured: ~1 s per call, over the 500 ms SLO
        assert served("three") == "small"
        assert s.metric("react_active_variant", variant="small") == 1
        big._runner.delay = 0.0  # recovered: idle probes see it, the ladder steps up
        for i in range(100):
            if served(f"again {chr(97 + i // 26)}{chr(97 + i % 26)}") == "big":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the ladder never stepped back up")
        assert s.metric("react_variant_switches_total", direction="down") >= 1
        assert s.metric("react_variant_switches_total", direction="up") >= 1


def test_idle_server_with_a_stale_estimate_recovers():
    """One variant whose start-up estimate is far too slow (e.g. it included a compile):
    an idle server that refuses on the estimate alone re-times the variant and recovers,
    instead of refusing every request forever."""
    with running([tiny_handle("embedding")], slo_ms=500, max_batch=4, probe_s=0.1) as s:
        (g,) = s.state.groups.values()
        for n in list(g.ladder.variants[0].service.points):
            g.ladder.variants[0].service.set(n, 30.0)  # a 30 s estimate, far from the truth
        first = s.client.post("/v1/embeddings", json={"input": "one"})
        assert first.status_code == 429 and "deadline" in first.json()["error"]["message"]
        for _ in range(100):  # bounded: ~10 s at most
            if s.client.post("/v1/embeddings", json={"input": "two"}).status_code == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server kept refusing on its stale estimate")


def test_drain_answers_every_accepted_request():
    h = slow(tiny_handle("embedding"), 0.15)
    with running([h], max_batch=2, max_delay_ms=1, slo_ms=60_000) as s:
        results: list = []
        sender = threading.Thread(target=lambda: results.extend(
            burst(s.base, "/v1/embeddings", [{"input": f"q{i}"} for i in range(10)])))
        sender.start()
        for _ in range(500):  # wait until all ten are accepted (most still queued)
            if s.state.groups["tiny-embedding"].batcher.inflight >= 10:
                break
            time.sleep(0.01)
        s.server.handle_exit(signal.SIGTERM, None)  # what the SIGTERM handler calls
        late = s.client.post("/v1/embeddings", json={"input": "late"})
        assert late.status_code == 503 and late.json()["error"]["type"] == "unavailable"
        assert s.client.get("/v2/health/ready").status_code == 503
        sender.join(30)
        s.thread.join(30)
        assert not s.thread.is_alive()  # exited on its own once drained
    assert len(results) == 10
    assert [getattr(r, "status_code", repr(r)) for r in results] == [200] * 10
    # answered while draining: clients are told not to reuse the connection
    assert all(r.headers["connection"] == "close" for r in results)
    assert s.state.taken_http == s.state.answered_http >= 10


def test_loadtest_against_the_server(server):
    from reactinfer.serving.loadtest import run_loadtest

    frozen, threshold = gc.get_freeze_count(), gc.get_threshold()
    assert frozen > 0  # the in-process server froze its heap after warm-up
    s = run_loadtest(server.base + "/v1/embeddings", rate=40, duration=1.0, arrivals="constant",
                     slo_ms=5000, texts=["open the file", "a queue that blocks"])
    # it held off full collections only while it ran, and left the server's freeze alone
    # (frozen objects that die leave the count, so it may fall a little; unfreeze is 0)
    assert gc.get_threshold() == threshold and gc.get_freeze_count() > 0.9 * frozen
    assert s["sent"] == 40 and s["status_counts"] == {"200": 40}
    assert s["variant_mix"] == {"emb": 40} and s["latency_ms"]["p50"] is not None
    # every text was new to the server: nothing came from the response cache
    assert s["inputs"] == "unique" and s["cache"] == {"hits": 0, "misses": 40, "hit_rate": 0.0}
    again = run_loadtest(server.base + "/v1/embeddings", rate=40, duration=0.5,
                         arrivals="constant", slo_ms=5000, texts=["open the file"],
                         repeat_inputs=True)
    assert again["inputs"] == "repeated" and again["status_counts"] == {"200": 20}
    c = again["cache"]  # the one text was answered before: the cache answers repeats
    assert c["hits"] + c["misses"] == 20 and c["hits"] > 0 and c["hit_rate"] > 0


def test_ladder_quality_comes_from_react_compress_and_the_metric_follows_answers(tmp_path):
    """A variant made by `react compress` records its quality under metrics.compress: the
    ladder shows it, and react_effective_quality averages the quality of what was served
    (it read 1 for answers from such a variant before)."""
    from reactinfer.cli.main import main
    from reactinfer.testing import save_tiny_hf

    model = save_tiny_hf(tmp_path / "m", "embedding")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps([{"type": "PruneFFN", "keep": 0.25}]))
    assert main(["compress", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "pruned"),
                 "--n-eval", "60"]) == 0
    manifest = json.loads((tmp_path / "pruned" / "manifest.json").read_text())
    recorded = manifest["metrics"]["compress"]["quality"]["mean_cosine"]
    assert recorded < 1.0
    # up_hold_s: once on the pruned variant, the ladder stays there while the test runs
    with running([str(model), str(tmp_path / "pruned")], slo_ms=5000, up_hold_s=3600) as s:
        name = next(iter(s.state.groups))
        variants = {v["name"]: v for v in
                    s.client.get(f"/v2/models/{name}").json()["parameters"]["variants"]}
        assert variants["pruned"]["quality"] == pytest.approx(recorded)
        assert variants["m"]["quality"] == 1.0
        served = []
        for i in range(12):
            if i == 6:  # the rest from the pruned variant, as if the ladder stepped down
                s.state.groups[name].ladder.active = [v.name for v in s.state.groups[
                    name].ladder.variants].index("pruned")
            r = s.client.post("/v1/embeddings", json={"input": f"open file number {i}"})
            assert r.status_code == 200
            served.append(variants[r.headers["x-react-variant"]]["quality"])
        assert served.count(pytest.approx(recorded)) >= 6
        assert s.metric("react_effective_quality", model=name) == \
            pytest.approx(sum(served) / len(served))
        assert s.metric("react_unknown_quality_answers_total") == 0


def wait_ready(proc: subprocess.Popen, port: int) -> str:
    """Poll a `react serve` subprocess until it is ready (at most 60 s); its base URL."""
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/v2/health/ready").status_code == 200:
                break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.1)
    return base


def test_cli_serve_drains_on_sigterm(artifacts):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "reactinfer", "serve", str(artifacts / "emb"),
                             "--port", str(port), "--slo-ms", "5000", "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = wait_ready(proc, port)
        r = httpx.post(base + "/v1/embeddings", json={"input": "open the file"})
        assert r.status_code == 200 and r.headers["x-react-variant"] == "emb"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = proc.stdout.read().decode()
        taken, answered = re.search(r"drained; (\d+) requests taken, (\d+) answered",
                                    out).groups()  # the readiness polls count too
        assert taken == answered and int(taken) >= 2, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serves_the_output_of_react_optimize_with_a_key_from_the_environment(artifacts,
                                                                                 tmp_path):
    """`react serve OUT` serves OUT/variants/* (the ladder `react optimize` chose); the key
    comes from REACT_API_KEY and is never printed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(artifacts / "emb", run / "variants" / "00-fp32")
    shutil.copytree(artifacts / "emb", run / "best")
    (run / "report.md").write_text("# a react optimize report")
    port, key = free_port(), "k3y-from-env"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               REACT_API_KEY=key)
    proc = subprocess.Popen([sys.executable, "-m", "reactinfer", "serve", str(run), "--port",
                             str(port), "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = wait_ready(proc, port)
        assert httpx.post(base + "/v1/embeddings", json={"input": "a"}).status_code == 401
        r = httpx.post(base + "/v1/embeddings", json={"input": "open the file"},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.headers["x-react-variant"] == "00-fp32"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = proc.stdout.read().decode()
        assert "API key required" in out and key not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_says_when_a_directory_is_neither_a_model_nor_an_optimize_run(tmp_path, capsys):
    from reactinfer.cli.main import main

    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "output directory of `react optimize`" in err and len(err.strip().splitlines()) == 1
