"""Limits of generation served on 127.0.0.1 (tiny GGUF built in-process, a small context
and a KV cache budget that holds two sequences): a prompt over the context gets 400
naming both numbers on both endpoints, streamed or not; long prompts at once are served
or refused with 429 and a reason, never left hanging; the KV plan is shown in /metrics
and the model's metadata."""
from __future__ import annotations

import asyncio
import re

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")

from test_serve_http import running  # noqa: E402

from reactinfer.backends.kv_plan import GiB  # noqa: E402

pytestmark = pytest.mark.integration
LM = "tiny-causal-lm"
CONTEXT = 64  # tokens per sequence asked for (the tiny model was trained on 128)
SLOTS = 2  # what the KV budget below holds at CONTEXT tokens each


@pytest.fixture(scope="module")
def budget_gb(tiny_gguf):
    eng = tiny_gguf.runner().decode_engine(1, 8)
    return SLOTS * CONTEXT * eng.kv_bytes_per_token / GiB


@pytest.fixture(scope="module")
def server(tiny_gguf, budget_gb):
    with running([tiny_gguf], cache_size=0, context=CONTEXT, kv_memory_gb=budget_gb) as s:
        yield s


def tokens(server, text):
    return len(server.state.groups[LM].tokenizer(text)["input_ids"])


def post(client, path, body, stream):
    if not stream:
        return client.post(path, json=body)
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        r.read()
        return r


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_prompt_over_the_context_gets_400_with_both_numbers(server, path, stream):
    text = "open the file " * 30
    assert tokens(server, text) > CONTEXT
    body = ({"prompt": text} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": text}]})
    r = post(server.client, path, body, stream)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    n = int(re.search(r"the prompt has (\d+) tokens", err["message"]).group(1))
    assert n >= tokens(server, text) and f"context is {CONTEXT} tokens per sequence" in \
        err["message"]
    # a prompt that fits, with max_tokens that does not: both numbers and the most it may ask
    short = "open the file"
    body = ({"prompt": short} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": short}]})
    r = post(server.client, path, {**body, "max_tokens": CONTEXT}, stream)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    n = int(re.search(r"the prompt has (\d+) tokens", err["message"]).group(1))
    assert err["param"] == "max_tokens" and f"'max_tokens' is {CONTEXT}" in err["message"]
    assert f"context is {CONTEXT}" in err["message"] and \
        f"at most {CONTEXT - n}" in err["message"]
    assert post(server.client, path, {**body, "max_tokens": CONTEXT - n}, stream) \
        .status_code == 200


def test_the_kv_plan_is_in_metrics_and_model_metadata(server):
    assert server.metric("react_kv_cache_sequences", model=LM) == SLOTS
    assert server.metric("react_kv_cache_context_tokens", model=LM) == CONTEXT
    assert server.metric("react_kv_cache_bytes", model=LM) > 0
    meta = server.client.get(f"/v2/models/{LM}").json()
    kv = meta["parameters"]["variants"][0]["kv_cache"]
    assert kv["slots"] == SLOTS and kv["n_ctx_seq"] == CONTEXT and kv["trained"] == 128


def burst(base, bodies):
    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))

    return asyncio.run(go())


def long_prompts(server, n=8, max_tokens=8):
    """n different prompts that fill most of a sequence's context."""
    words = ["open", "read", "sort", "join", "parse", "close", "write", "hash"]
    out = []
    for i in range(n):
        text = " ".join(words[(i + j) % len(words)] for j in range(80))
        while tokens(server, text) + max_tokens > CONTEXT:
            text = text.rsplit(" ", 1)[0]
        out.append({"model": LM, "prompt": text, "max_tokens": max_tokens})
    assert all(tokens(server, b["prompt"]) + max_tokens >= CONTEXT - 8 for b in out)
    return out


def test_eight_long_prompts_at_once_on_two_sequences_are_all_served(server):
    rs = burst(server.base, long_prompts(server))
    assert [r.status_code for r in rs] == [200] * 8, [r.text for r in rs]
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in rs)


def test_beyond_the_queue_long_prompts_get_429_with_a_reason(tiny_gguf, budget_gb):
    with running([tiny_gguf], cache_size=0, context=CONTEXT, kv_memory_gb=budget_gb,
                 max_queue=2) as s:
        rs = burst(s.base, long_prompts(s))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 429} and codes.count(200) >= SLOTS, codes
        for r in rs:
            if r.status_code == 429:
                assert "queue is full" in r.json()["error"]["message"]
                assert int(r.headers["Retry-After"]) >= 1
        # and it keeps serving
        assert s.client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}) \
            .status_code == 200


def test_tpot_ms_steps_the_ladder_to_the_faster_variant_and_back(tiny_gguf):
    """Two variants of one tiny LM; the better one turns slow (a 0.3 s sleep in every
    engine step, 3× the 100 ms objective): its finished generations step the ladder down;
    once it is fast again, an idle probe sees it and the ladder steps back up."""
    import time

    big, small = tiny_gguf.derive(name="big"), tiny_gguf.derive(name="small")
    # no warm-up: nothing measures or probes before the test has set the figures (the
    # ladder keeps the order given, and starts at the best); no speculation: accepted
    # drafts would give several tokens per slowed step, and a time per token under 0.1 s
    with running([big, small], cache_size=0, tpot_ms=100, up_hold_s=0.2, warmup=False,
                 speculate="off") as s:
        (g,) = s.state.groups.values()
        assert [v.name for v in g.ladder.variants] == ["big", "small"] and g.ladder.active == 0
        for v in g.ladder.variants:  # equal models: equal figures, as a warm-up finds them
            v.gen.solo_s = v.gen.token_s = 0.002
        eng = g.ladder.variants[0].engine
        fast_step, delay = eng.step, [0.3]

        def step():
            time.sleep(delay[0])
            return fast_step()

        eng.step = step

        def served(i):
            r = s.client.post("/v1/completions", json={"prompt": f"open the file {i}",
                                                       "max_tokens": 4})
            assert r.status_code == 200, r.text
            return r.headers["x-react-variant"]

        names = [served(i) for i in range(4)]
        assert names[0] == "big" and "small" in names, names
        assert s.metric("react_tpot_violations_total", variant="big") >= 1
        assert s.metric("react_variant_switches_total", direction="down") >= 1
        delay[0] = 0.0  # the better one is fast again
        end = time.monotonic() + 60
        while served(0) != "big":
            if time.monotonic() > end:
                pytest.fail("the ladder never stepped back up")
            time.sleep(0.05)
        assert s.metric("react_variant_switches_total", direction="up") >= 1
