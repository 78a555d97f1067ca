"""Request checks of the OpenAI routes beyond prompt and sampling (serving/structured.py):
unknown fields and non-neutral unsupported ones are refused by name, n / logprobs /
response_format / tools are checked and turned into grammars, and the answer's
tool_calls and logprobs have OpenAI's shapes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("fastapi")

from reactinfer.serving.state import ApiError  # noqa: E402
from reactinfer.serving.structured import (  # noqa: E402
    chat_logprobs,
    check_fields,
    completion_logprobs,
    extras_of,
    tool_call_of,
)
from reactinfer.tasks.sampling import token_logprobs  # noqa: E402

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def refused(body, kind="chat", param=None, max_n=8):
    with pytest.raises(ApiError) as e:
        extras_of(body, kind, max_n)
    assert e.value.status == 400
    if param:
        assert param in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("kind,body,param", [
    ("chat", {"frobnicate": 1}, "'frobnicate'"),
    ("chat", {"functions": []}, "'functions'"),
    ("completion", {"tools": [TOOL]}, "'tools'"),  # completions take no tools
    ("completion", {"top_logprobs": 2}, "'top_logprobs'"),
    ("chat", {"echo": True}, "'echo'"),
    ("chat", {"presence_penalty": 0.5}, "'presence_penalty'"),
    ("chat", {"logit_bias": {"5": 10}}, "'logit_bias'"),
    ("completion", {"echo": True}, "'echo'"),
    ("completion", {"suffix": "x"}, "'suffix'"),
    ("completion", {"best_of": 3}, "'best_of'"),
])
def test_unknown_or_unsupported_fields_name_themselves(kind, body, param):
    refused(body, kind, param)


def test_harmless_and_neutral_fields_are_accepted():
    check_fields({"user": "u", "stream_options": {"include_usage": True},
                  "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
                  "parallel_tool_calls": False, "seed": None, "model": "m"}, "chat")
    check_fields({"echo": False, "suffix": None, "best_of": 2, "n": 2}, "completion")


@pytest.mark.parametrize("body,param", [
    ({"n": 0}, "'n'"), ({"n": 9}, "'n'"), ({"n": True}, "'n'"),
    ({"logprobs": 2}, "'logprobs'"),  # chat: a boolean
    ({"logprobs": True, "top_logprobs": 21}, "'top_logprobs'"),
    ({"top_logprobs": 2}, "'top_logprobs'"),  # without logprobs: true
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
     "response_format"),
    ({"tools": []}, "'tools'"), ({"tools": [{"type": "function"}]}, "'tools'"),
    ({"tools": [TOOL], "tool_choice": "always"}, "'tool_choice'"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "'tool_choice'"),
    ({"tool_choice": "required"}, "'tool_choice'"),  # no tools
    ({"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
])
def test_bad_values_are_refused_by_name(body, param):
    refused(body, "chat", param)


def test_n_and_logprobs_are_read():
    assert extras_of({}, "chat", 8).n == 1 and extras_of({}, "chat", 8).logprobs is None
    assert extras_of({"n": 3}, "chat", 8).n == 3
    assert extras_of({"logprobs": True}, "chat", 8).logprobs == 0
    assert extras_of({"logprobs": True, "top_logprobs": 5}, "chat", 8).logprobs == 5
    assert extras_of({"logprobs": False}, "chat", 8).logprobs is None
    assert extras_of({"logprobs": 3}, "completion", 8).logprobs == 3


def test_response_format_and_forced_tools_become_json_grammars():
    pytest.importorskip("llama_cpp")
    assert extras_of({"response_format": {"type": "text"}}, "chat", 8).grammar is None
    obj = extras_of({"response_format": {"type": "json_object"}}, "chat", 8).grammar
    assert obj and "root ::=" in obj and "\\x00-\\x1F" in obj  # no raw control characters
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]}
    g = extras_of({"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": schema}}}, "chat", 8).grammar
    assert g and '\\"x\\"' in g
    auto = extras_of({"tools": [TOOL]}, "chat", 8)
    assert auto.grammar is None and auto.tools == ("get_weather",)
    assert extras_of({"tools": [TOOL], "tool_choice": "none"}, "chat", 8).tools == ()
    forced = extras_of({"tools": [TOOL], "tool_choice": "required"}, "chat", 8)
    assert forced.grammar and "get_weather" in forced.grammar


def test_tool_call_is_recognised_only_when_it_is_one_exact_call():
    calls = tool_call_of('{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                         ("get_weather",))
    assert calls and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    for text in ['{"name": "other", "arguments": {}}', "Sunny", '{"name": "get_weather"}',
                 '[1]']:
        assert tool_call_of(text, ("get_weather",)) is None
    assert tool_call_of('{"name": "get_weather", "arguments": {}}', ()) is None


class Tok:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i) for i in ids)


def test_token_logprobs_and_their_openai_shapes():
    logits = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    tok, lp, alts = token_logprobs(logits, 1, top=2)
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert tok == 1 and lp == pytest.approx(math.log(p[1]))
    assert [a for a, _ in alts] == [0, 1] and alts[0][1] == pytest.approx(math.log(p[0]))
    assert token_logprobs(logits, 3)[2] == ()
    entries = [token_logprobs(logits, 0, 2), token_logprobs(logits, 1, 2)]
    chat = chat_logprobs(entries, Tok())["content"]
    assert [c["token"] for c in chat] == ["a", "b"] and chat[0]["bytes"] == [97]
    assert [t["token"] for t in chat[1]["top_logprobs"]] == ["a", "b"]
    comp = completion_logprobs(entries, Tok())
    assert comp["tokens"] == ["a", "b"] and comp["text_offset"] == [0, 1]
    assert list(comp["top_logprobs"][0]) == ["a", "b"]
    assert comp["token_logprobs"][1] == pytest.approx(math.log(p[1]))


class OnlyTokens:
    """A token constraint allowing a fixed set (the shape of llamacpp_grammar's)."""

    def __init__(self, allowed):
        self.allowed = set(allowed)

    def allows(self, tok):
        return tok in self.allowed

    def mask(self, logits, ids=None):
        ids = range(len(logits)) if ids is None else ids
        out = np.full(len(logits), -np.inf, dtype=np.float32)
        for i in ids:
            if i in self.allowed:
                out[i] = logits[i]
        return out


def decoding(constraint, sampling):
    from reactinfer.serving.decode import Decoding
    from reactinfer.serving.request import Request

    req = Request("generate", None, None, None, sampling=sampling, constraint=constraint,
                  logprobs=1)
    return Decoding(req, None, None, sampling.rng())


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (1.5, 0.9)])
def test_a_constrained_sequence_only_picks_allowed_tokens(temperature, top_p):
    from reactinfer.tasks.sampling import Sampling

    rng = np.random.default_rng(0)
    allowed = {7, 300, 999}
    d = decoding(OnlyTokens(allowed), Sampling(temperature=temperature, top_p=top_p, seed=1))
    for _ in range(30):
        logits = rng.standard_normal(1000).astype(np.float32)
        logits[0] = 8.0  # the sampler's favourite is refused
        tok = d.choose(logits)
        assert tok in allowed
        if temperature == 0:
            assert tok == max(allowed, key=lambda i: logits[i])  # greedy stays exact
    assert len(d.logprobs) == 30 and all(lp <= 0 for _, lp, _ in d.logprobs)
