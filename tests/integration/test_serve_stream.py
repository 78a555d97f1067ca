"""Streaming on every backend: a tiny causal LM built in-process, served for real on
127.0.0.1 on torch and on ONNX Runtime. Each token leaves as its own SSE event when it is
made (the runners decode step by step: `decode`), and the text is the same streamed and
not streamed. Without a server: the first token is out after one model call."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from test_serve_http import running  # noqa: E402

from reactinfer.core.backend import greedy_tokens  # noqa: E402
from reactinfer.serving.execute import generate_stream  # noqa: E402
from reactinfer.testing import tiny_handle  # noqa: E402

pytestmark = pytest.mark.integration
BACKENDS = ["torch", "onnxruntime"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return {"torch": tiny_handle("causal-lm")}


@pytest.fixture(params=BACKENDS)
def handle(request, made, tmp_path_factory):
    """The tiny causal LM on each backend (converted once per module)."""
    from reactinfer.backends.convert import to_backend

    if request.param not in made:
        pytest.importorskip(request.param)
        made[request.param] = to_backend(made["torch"], request.param,
                                         workdir=tmp_path_factory.mktemp(request.param))
    return made[request.param]


class Counting:
    """The real runner, counting its model calls (ONNX Runtime: one per step)."""

    def __init__(self, runner):
        self.runner, self.calls = runner, 0

    def __call__(self, batch):
        self.calls += 1
        return self.runner(batch)


def test_the_first_token_leaves_after_one_model_call(handle, monkeypatch):
    """The real runner's steps, its model calls counted: the stream yields its first
    token after one call (the prompt), not after the whole answer was computed."""
    from reactinfer.core.backend import decode_by_recompute

    runner = handle.runner()
    counting = Counting(runner)
    monkeypatch.setattr(runner, "decode", lambda ids: decode_by_recompute(counting, ids))
    prompt = handle.tokenizer("open the file")["input_ids"]
    stream = generate_stream(handle, prompt, 12, set())
    first = next(stream)
    assert counting.calls == 1
    rest = list(stream)
    assert counting.calls == 12
    assert [first] + rest == greedy_tokens(decode_by_recompute(runner, prompt), 12)


def test_decode_steps_match_greedy_generate(handle):
    """`generate` (end of sequence suppressed) is the greedy answer of `decode`; the steps
    with the KV cache (torch) equal those recomputing the sequence (`__call__`)."""
    from reactinfer.core.backend import decode_by_recompute

    runner, prompt = handle.runner(), handle.tokenizer("compute the hash")["input_ids"]
    eos = handle.tokenizer.eos_token_id
    assert greedy_tokens(runner.decode(prompt), 7, eos) == runner.generate(prompt, 7)
    assert greedy_tokens(runner.decode(prompt), 7) == \
        greedy_tokens(decode_by_recompute(runner, prompt), 7)


def content_events(client, body):
    out = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                out.append(json.loads(line[6:]))
    return out


def test_every_backend_streams_token_by_token_with_the_same_text(handle):
    h, backend = handle, handle.backend
    with running([h], slo_ms=60000, cache_size=0) as s:
        assert s.state.groups[h.name].ladder.variants[0].handle.backend == backend
        # seeded sampling: the tiny model's greedy answer is a special token repeated,
        # which has no text; a seeded answer is as reproducible, and is words
        body = {"model": h.name, "prompt": "read the data", "max_tokens": 10,
                "temperature": 1.0, "seed": 3}
        whole = s.client.post("/v1/completions", json=body).json()
        events = content_events(s.client, body)
    text = whole["choices"][0]["text"]
    pieces = [e["choices"][0]["text"] for e in events if e["choices"][0]["text"]]
    assert len(pieces) >= 2, events  # not one event holding the whole answer
    assert "".join(pieces) == text and len(text) > 0
    assert events[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
