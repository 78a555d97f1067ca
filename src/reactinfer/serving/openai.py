"""OpenAI-compatible endpoints: /v1/embeddings, /v1/completions, /v1/chat/completions
(with `stream: true` as server-sent events) and /v1/models. Generation takes
temperature, top_p, top_k, seed and stop (greedy when no temperature is given), n,
logprobs, response_format (JSON, grammar-constrained) and tools; any other field is
refused with 400 (structured.py says which fields are accepted and why)."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, StreamingResponse

from .protocol import (
    VARIANT_HEADER,
    ArrayJSON,
    GenParams,
    check_texts,
    deadline_of,
    encode,
    generate,
    generation_params,
    read_json,
    start_generation,
)
from .request import Generated, Request
from .state import ApiError, Group, ServingState, state_of
from .structured import (
    Extras,
    chat_logprobs,
    completion_logprobs,
    extras_of,
    tool_call_of,
    tools_note,
)

# Included by create_app; the handlers find the served models with state_of(request).
router = APIRouter()


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": props, "required": required}}}}}


_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def _content(m: dict[str, Any], i: int) -> str:
    """A message's text: a string, a list of text parts, or an assistant's tool calls."""
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                   and isinstance(p.get("text"), str) for p in c):
        return "".join(p["text"] for p in c)
    if c is None and isinstance(m.get("tool_calls"), list):
        return json.dumps([{"name": t.get("function", {}).get("name"),
                            "arguments": t.get("function", {}).get("arguments")}
                           for t in m["tool_calls"] if isinstance(t, dict)])
    raise ApiError(400, f"'messages'[{i}] must have a string 'content' (or text parts, or "
                   "an assistant's 'tool_calls')", param="messages")


def chat_prompt(tokenizer: Any, messages: Any, tools: Any = None) -> str:
    """The tokenizer's chat template when it has one, else plain 'role: content' lines.
    `tools` go to a template that takes them, else into a first system message."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects",
                       param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"'messages'[{i}] must be an object with a string 'role'",
                           param="messages")
    msgs = [{"role": m["role"], "content": _content(m, i)} for i, m in enumerate(messages)]
    template = getattr(tokenizer, "chat_template", None)
    kw: dict[str, Any] = {}
    if tools and isinstance(template, str) and "tools" in template:
        kw["tools"] = tools
    elif tools:
        msgs.insert(0, {"role": "system", "content": tools_note(tools)})
    if template:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                             **kw)
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"


@router.get("/v1/models", tags=["openai"])
async def models(request: HttpRequest) -> dict[str, Any]:
    state = state_of(request)
    return {"object": "list", "data": [
        {"id": g.name, "object": "model", "created": 0, "owned_by": "reactinfer",
         "task": g.task, "active_variant": g.ladder.current.name,
         "variants": [v.name for v in g.ladder.variants]} for g in state.groups.values()]}


@router.post("/v1/embeddings", tags=["openai"], openapi_extra=_schema({
    "model": {"type": "string"}, "input": _TEXTS,
    "encoding_format": {"type": "string", "enum": ["float", "base64"]}}, ["input"]))
async def embeddings(request: HttpRequest) -> JSONResponse:
    state = state_of(request)
    body = await read_json(request, state)
    g = _group(state, body, "embedding")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"'encoding_format' must be float or base64, got {fmt!r}",
                       param="encoding_format")
    if "input" not in body:
        raise ApiError(400, "'input' is missing: give a string or a list of strings",
                       param="input")
    texts = check_texts(body["input"], g, state, "input")
    y, n_tok, variant = await encode(state, g, texts, deadline_of(request, state))  # (N, D)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()
             if fmt == "base64" else row} for i, row in enumerate(y)]
    return ArrayJSON({"object": "list", "data": data, "model": g.name,
                      "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}},
                     headers={VARIANT_HEADER: variant})


@router.post("/v1/completions", tags=["openai"], openapi_extra=_schema({
    "model": {"type": "string"}, "prompt": _TEXTS, "max_tokens": {"type": "integer"},
    "stream": {"type": "boolean"}}, ["prompt"]))
async def completions(request: HttpRequest) -> Any:
    state = state_of(request)
    body = await read_json(request, state)
    g = _group(state, body, "causal-lm")
    extras = extras_of(body, "completion", state.config.max_inputs)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be one non-empty string (one prompt per "
                       "request)", param="prompt")
    return await _complete(state, request, g, body, prompt, extras, chat=False)


@router.post("/v1/chat/completions", tags=["openai"], openapi_extra=_schema({
    "model": {"type": "string"}, "messages": {"type": "array"},
    "max_tokens": {"type": "integer"}, "stream": {"type": "boolean"}}, ["messages"]))
async def chat(request: HttpRequest) -> Any:
    state = state_of(request)
    body = await read_json(request, state)
    g = _group(state, body, "causal-lm")
    extras = extras_of(body, "chat", state.config.max_inputs)
    tools = body.get("tools") if extras.tools else None
    with g.batcher.tok_lock:
        prompt = chat_prompt(g.tokenizer, body.get("messages"), tools)
    return await _complete(state, request, g, body, prompt, extras, chat=True)


def _copies(p: GenParams, extras: Extras) -> list[GenParams]:
    """The `n` sequences of a request: each seeded apart when a seed is given (so they
    differ when sampled; greedy ones are equal)."""
    p = replace(p, grammar=extras.grammar, logprobs=extras.logprobs)
    seed = p.sampling.seed
    return [p if seed is None or i == 0 else replace(p, sampling=replace(p.sampling,
                                                                         seed=seed + i))
            for i in range(extras.n)]


async def _complete(state: ServingState, request: HttpRequest, g: Group, body: dict[str, Any],
                    prompt: str, extras: Extras, chat: bool) -> Any:
    """A completion of `prompt` (n of them): one JSON answer, or server-sent events with
    `stream`."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    p = generation_params(body, g, state, prompt, "chat" if chat else "completion")
    ps = _copies(p, extras)
    deadline = deadline_of(request, state)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if stream:
        return await _stream(g, ps, deadline, rid, chat, extras)
    outs = await asyncio.gather(*(generate(state, g, q, deadline) for q in ps))
    choices = [_choice(g, i, out, chat, extras) for i, out in enumerate(outs)]
    return JSONResponse({"id": rid, "object": "chat.completion" if chat
                         else "text_completion", "created": int(time.time()),
                         "model": g.name, "choices": choices,
                         "usage": _usage(len(p.ids), sum(len(o.tokens) for o in outs))},
                        headers={VARIANT_HEADER: ",".join(sorted({o.variant for o in outs}))})


def _logprobs(g: Group, entries: list[Any] | None, chat: bool) -> dict[str, Any] | None:
    if entries is None:
        return None
    with g.batcher.tok_lock:
        return chat_logprobs(entries, g.tokenizer) if chat else \
            completion_logprobs(entries, g.tokenizer)


def _choice(g: Group, i: int, out: Generated, chat: bool, extras: Extras) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": i, "finish_reason": out.finish_reason,
                              "logprobs": _logprobs(g, out.logprobs, chat)}
    if not chat:
        return choice | {"text": out.text}
    calls = tool_call_of(out.text, extras.tools)
    if calls is not None:
        choice.update(finish_reason="tool_calls",
                      message={"role": "assistant", "content": None, "tool_calls": calls})
    else:
        choice["message"] = {"role": "assistant", "content": out.text}
    return choice


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def _stream(g: Group, ps: list[GenParams], deadline: float, rid: str, chat: bool,
                  extras: Extras) -> StreamingResponse:
    """Admit the generations and wait for their variants (the header needs them) before
    any byte is sent, so a refusal or a model failure still gets its status code."""
    reqs: list[Request] = []
    try:
        for p in ps:
            reqs.append(await start_generation(g, p, deadline, stream=True))
        variants = []
        for req in reqs:
            assert req.sink is not None
            first = await req.sink.get()  # the variant name, or None if the model failed
            if first is None:
                await req.future  # raises the model's error
            variants.append(str(first))
    except BaseException:
        for req in reqs:
            req.cancelled = True
        raise
    return StreamingResponse(_sse(g, reqs, rid, chat, len(ps[0].ids), extras),
                             media_type="text/event-stream",
                             headers={VARIANT_HEADER: ",".join(sorted(set(variants))),
                                      "Cache-Control": "no-cache"})


async def _merged(reqs: list[Request]) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, item) from every sequence's sink as they come; item None at its end."""
    q: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, req: Request) -> None:
        assert req.sink is not None
        while (item := await req.sink.get()) is not None:
            await q.put((i, item))
        await q.put((i, None))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
    try:
        left = len(reqs)
        while left:
            i, item = await q.get()
            left -= item is None
            yield i, item
    finally:
        for t in tasks:
            t.cancel()


async def _sse(g: Group, reqs: list[Request], rid: str, chat: bool, n_prompt: int,
               extras: Extras) -> AsyncIterator[bytes]:
    """One event per piece of text, as the worker makes it; each choice's last chunk
    carries its finish reason, the last of all the usage. With tools, a choice's text is
    held to its end, where it is sent as a tool call or as content. A client that leaves
    cancels its sequences: the worker frees them at its next step."""
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"
    held = [""] * len(reqs)
    completion = 0

    def event(i: int, delta: dict[str, Any] | str | None, finish: str | None,
              entries: list[Any] | None = None, usage: dict[str, int] | None = None) -> bytes:
        choice: dict[str, Any] = {"index": i, "finish_reason": finish,
                                  "logprobs": _logprobs(g, entries, chat)}
        if chat:
            choice["delta"] = delta if isinstance(delta, dict) else \
                ({"content": delta} if delta is not None else {})
        else:
            choice["text"] = delta or ""
        payload = {"id": rid, "object": obj, "created": created, "model": g.name,
                   "choices": [choice]} | ({"usage": usage} if usage else {})
        return f"data: {json.dumps(payload)}\n\n".encode()

    try:
        if chat:
            for i in range(len(reqs)):
                yield event(i, {"role": "assistant"}, None)
        left = len(reqs)
        async for i, item in _merged(reqs):
            if item is not None:
                text, entries = item if isinstance(item, tuple) else (item, None)
                if extras.tools:
                    held[i] += text
                    text = ""
                if text or entries:
                    yield event(i, text, None, entries)
                continue
            left -= 1
            try:
                out = await reqs[i].future
            except Exception as e:  # noqa: BLE001  (the status is sent; report in-band)
                yield f"data: {json.dumps({'error': {'message': str(e)}})}\n\n".encode()
                continue
            completion += len(out.tokens)
            usage = _usage(n_prompt, completion) if left == 0 else None
            calls = tool_call_of(held[i], extras.tools) if chat else None
            if calls is not None:
                delta = {"tool_calls": [c | {"index": 0} for c in calls]}
                yield event(i, delta, "tool_calls", usage=usage)
            elif held[i]:
                yield event(i, held[i], None)
                yield event(i, None if chat else "", out.finish_reason, usage=usage)
            else:
                yield event(i, None if chat else "", out.finish_reason, usage=usage)
        yield b"data: [DONE]\n\n"
    finally:
        for req in reqs:
            req.cancelled = not req.future.done()


def _group(state: ServingState, body: dict[str, Any], task: str) -> Group:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model")
    return state.group(model, task)
