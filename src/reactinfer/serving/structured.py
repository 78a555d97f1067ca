"""The OpenAI request fields beyond prompt and sampling: which fields a request may send
(anything else is refused with 400 naming it, never ignored), `n`, `logprobs`,
`response_format` and `tools` / `tool_choice` turned into a GBNF grammar for
constrained decoding, and the answer's `logprobs` and `tool_calls` in OpenAI's shapes.

Fields and what they do here:
- handled: model, prompt / messages, max_tokens (max_completion_tokens), stream,
  temperature, top_p, top_k, seed, stop, n, logprobs (top_logprobs), response_format,
  tools, tool_choice (chat only);
- accepted, no effect: `user` (an end-user id for the caller's own tracking),
  `stream_options` (the usage is always sent, on the last chunk), `parallel_tool_calls`
  (an answer holds at most one call, which satisfies both values);
- accepted only at their neutral value (else 400): frequency_penalty and
  presence_penalty 0, logit_bias empty, and for completions echo false, suffix null,
  best_of equal to n.

`tool_choice`: "none" ignores the tools; "required" or a named function constrains the
answer to {"name": ..., "arguments": {...}} valid against the tools' schemas, returned as
`tool_calls` with finish_reason "tool_calls"; "auto" (the default with tools) tells the
model the tools and lets it answer freely: an answer that is exactly such a JSON object
naming one of the tools is returned as a tool call, anything else as content.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .state import ApiError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat

_COMMON = {"model", "max_tokens", "stream", "temperature", "top_p", "top_k", "seed", "stop",
           "n", "logprobs", "response_format", "user", "stream_options",
           "frequency_penalty", "presence_penalty", "logit_bias"}
FIELDS = {
    "chat": _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools",
                       "tool_choice", "parallel_tool_calls"},
    "completion": _COMMON | {"prompt", "echo", "suffix", "best_of"},
}


def _neutral(value: Any, body: dict[str, Any], name: str) -> bool:
    neutral: dict[str, Callable[[Any], bool]] = {
        "frequency_penalty": lambda v: v == 0, "presence_penalty": lambda v: v == 0,
        "logit_bias": lambda v: v == {}, "echo": lambda v: v is False,
        "suffix": lambda v: v == "", "best_of": lambda v: v == body.get("n", 1) or v == 1}
    check = neutral.get(name)
    return check is None or check(value)


def check_fields(body: dict[str, Any], kind: str) -> None:
    """400 naming the first field this server does not handle, or one it accepts only at
    its neutral value set to something else."""
    allowed = FIELDS[kind]
    for name, value in body.items():
        if name not in allowed:
            raise ApiError(400, f"unsupported field '{name}': this server does not handle it; "
                           "remove it", param=name)
        if value is not None and not _neutral(value, body, name):
            raise ApiError(400, f"'{name}' is not supported (got {value!r}): remove it or "
                           "send its neutral value", param=name)


@dataclass(frozen=True)
class Extras:
    """What a request asks beyond one plain completion."""

    n: int = 1
    logprobs: int | None = None  # None: not asked; else the number of top alternatives
    grammar: str | None = None  # GBNF the answer must follow
    tools: tuple[str, ...] = ()  # function names an answer may call


def _int_field(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(400, f"'{name}' must be an integer from {lo} to {hi}, got {v!r}",
                       param=name)
    return v


def extras_of(body: dict[str, Any], kind: str, max_n: int) -> Extras:
    """Check n, logprobs, response_format and tools; 400 naming the field when wrong."""
    check_fields(body, kind)
    n = _int_field(body, "n", 1, max_n) or 1
    if kind == "chat":
        lp = body.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise ApiError(400, f"'logprobs' must be true or false, got {lp!r}",
                           param="logprobs")
        top = _int_field(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if top is not None and not lp:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        logprobs = (top or 0) if lp else None
    else:
        logprobs = _int_field(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    grammar = response_grammar(body.get("response_format"))
    tools: tuple[str, ...] = ()
    if kind == "chat" and body.get("tools") is not None:
        tool_grammar, tools = tools_grammar(body["tools"], body.get("tool_choice"))
        if tool_grammar is not None:
            if grammar is not None:
                raise ApiError(400, "'response_format' and a required tool call cannot both "
                               "shape the answer: drop one", param="response_format")
            grammar = tool_grammar
    elif body.get("tool_choice") is not None:
        raise ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
    return Extras(n, logprobs, grammar, tools)


# -- grammars -------------------------------------------------------------------------------
# llama-cpp-python's converter lets a string hold raw control characters, which JSON
# forbids (json.loads refuses them): llama.cpp's own C++ converter excludes them.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def schema_grammar(schema: Any, param: str) -> str:
    """GBNF for JSON valid against `schema` (llama.cpp's JSON-schema converter)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(schema, dict):
        raise ApiError(400, f"'{param}' must be a JSON schema object", param=param)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # noqa: BLE001  (the converter raises bare exceptions)
        raise ApiError(400, f"'{param}' cannot be turned into a grammar: {e}",
                       param=param) from None
    return gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)


def response_grammar(fmt: Any) -> str | None:
    """The grammar of `response_format`: none for text, any JSON object for json_object,
    the schema's JSON for json_schema."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_grammar({"type": "object"}, "response_format")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ApiError(400, "'response_format' json_schema needs {\"json_schema\": "
                           "{\"name\": ..., \"schema\": {...}}}", param="response_format")
        return schema_grammar(spec["schema"], "response_format.json_schema.schema")
    raise ApiError(400, "'response_format' type must be text, json_object or json_schema, "
                   f"got {kind!r}", param="response_format")


def _functions(tools: Any) -> dict[str, dict[str, Any]]:
    """name -> the tool's function object, checked."""
    if not isinstance(tools, list) or not tools:
        raise ApiError(400, "'tools' must be a non-empty list of {type: function, "
                       "function: {name, parameters}}", param="tools")
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, f"'tools'[{i}] must be {{type: function, function: {{name, "
                           "parameters}}}}", param="tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise ApiError(400, f"'tools'[{i}] parameters must be a JSON schema object",
                           param="tools")
        out[fn["name"]] = fn
    return out


def tools_grammar(tools: Any, choice: Any) -> tuple[str | None, tuple[str, ...]]:
    """The grammar of a forced call (None for auto / none) and the callable names."""
    fns = _functions(tools)
    if choice is None or choice == "auto":
        return None, tuple(fns)
    if choice == "none":
        return None, ()
    if choice == "required":
        names = list(fns)
    elif isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) \
            and choice["function"].get("name") in fns:
        names = [choice["function"]["name"]]
    else:
        raise ApiError(400, "'tool_choice' must be none, auto, required or {type: function, "
                       "function: {name: one of the tools}}", param="tool_choice")
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": n},
                             "arguments": fns[n].get("parameters") or {"type": "object"}}}
             for n in names]
    schema = calls[0] if len(calls) == 1 else {"oneOf": calls}
    return schema_grammar(schema, "tools"), tuple(fns)


def tools_note(tools: Any) -> str:
    """A system message that tells a model without a tools chat template what it may call."""
    specs = [{"name": f["name"], "description": f.get("description", ""),
              "parameters": f.get("parameters") or {"type": "object"}}
             for f in _functions(tools).values()]
    return ("You can call these functions. To call one, answer with only a JSON object "
            '{"name": <function name>, "arguments": {...}}.\n' + json.dumps(specs))


def tool_call_of(text: str, names: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """`tool_calls` when the answer is exactly one call of a known function, else None."""
    if not names:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names \
            or not isinstance(obj.get("arguments"), dict):
        return None
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": obj["name"], "arguments": json.dumps(obj["arguments"])}}]


# -- logprobs -------------------------------------------------------------------------------
def _piece(tokenizer: Any, tok: int) -> str:
    return str(tokenizer.decode([tok], skip_special_tokens=False))


def chat_logprobs(entries: list[Any], tokenizer: Any) -> dict[str, Any]:
    """OpenAI chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def one(tok: int, lp: float) -> dict[str, Any]:
        s = _piece(tokenizer, tok)
        return {"token": s, "logprob": lp, "bytes": list(s.encode())}

    return {"content": [one(t, lp) | {"top_logprobs": [one(a, alp) for a, alp in alts]}
                        for t, lp, alts in entries]}


def completion_logprobs(entries: list[Any], tokenizer: Any, offset: int = 0
                        ) -> dict[str, Any]:
    """OpenAI completions' `logprobs`: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [_piece(tokenizer, t) for t, _, _ in entries]
    offsets, at = [], offset
    for s in tokens:
        offsets.append(at)
        at += len(s)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{_piece(tokenizer, a): alp for a, alp in alts}
                             for _, _, alts in entries],
            "text_offset": offsets}
