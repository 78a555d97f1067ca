"""OpenAI-compatible endpoints: /v1/embeddings, /v1/completions, /v1/chat/completions
(with `stream: true` as server-sent events) and /v1/models. Generation takes
temperature, top_p, top_k, seed and stop (greedy when no temperature is given)."""
from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
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
from .request import Request
from .state import ApiError, Group, ServingState, state_of

# Included by create_app; the handlers find the served models with state_of(request).
router = APIRouter()


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": props, "required": required}}}}}


_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def chat_prompt(tokenizer: Any, messages: Any) -> str:
    """The tokenizer's chat template when it has one, else plain 'role: content' lines."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects",
                       param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ApiError(400, f"'messages'[{i}] must be an object with string 'role' and "
                           "'content'", param="messages")
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
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
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be one non-empty string (one prompt per "
                       "request)", param="prompt")
    return await _complete(state, request, g, body, prompt, chat=False)


@router.post("/v1/chat/completions", tags=["openai"], openapi_extra=_schema({
    "model": {"type": "string"}, "messages": {"type": "array"},
    "max_tokens": {"type": "integer"}, "stream": {"type": "boolean"}}, ["messages"]))
async def chat(request: HttpRequest) -> Any:
    state = state_of(request)
    body = await read_json(request, state)
    g = _group(state, body, "causal-lm")
    with g.batcher.tok_lock:
        prompt = chat_prompt(g.tokenizer, body.get("messages"))
    return await _complete(state, request, g, body, prompt, chat=True)


async def _complete(state: ServingState, request: HttpRequest, g: Group, body: dict[str, Any],
                    prompt: str, chat: bool) -> Any:
    """A completion of `prompt`: one JSON answer, or server-sent events with `stream`."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    p = generation_params(body, g, state, prompt, "chat" if chat else "completion")
    deadline = deadline_of(request, state)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if stream:
        return await _stream(g, p, deadline, rid, chat)
    out = await generate(state, g, p, deadline)
    choice: dict[str, Any] = {"index": 0, "finish_reason": out.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": out.text}
    else:
        choice.update(text=out.text, logprobs=None)
    return JSONResponse({"id": rid, "object": "chat.completion" if chat
                         else "text_completion", "created": int(time.time()),
                         "model": g.name, "choices": [choice],
                         "usage": _usage(len(p.ids), len(out.tokens))},
                        headers={VARIANT_HEADER: out.variant})


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def _stream(g: Group, p: GenParams, deadline: float, rid: str, chat: bool
                  ) -> StreamingResponse:
    """Admit the generation and wait for its variant (the header needs it) before any
    byte is sent, so a refusal or a model failure still gets its status code."""
    req = await start_generation(g, p, deadline, stream=True)
    assert req.sink is not None
    first = await req.sink.get()  # the variant name, or None if the model failed
    if first is None:
        await req.future  # raises the model's error
    return StreamingResponse(_sse(g, req, rid, chat, len(p.ids)),
                             media_type="text/event-stream",
                             headers={VARIANT_HEADER: str(first),
                                      "Cache-Control": "no-cache"})


async def _sse(g: Group, req: Request, rid: str, chat: bool, n_prompt: int
               ) -> AsyncIterator[bytes]:
    """One event per piece of text, as the worker makes it; the last chunk carries the
    finish reason and the usage. A client that leaves cancels its sequence: the worker
    frees it at its next step."""
    assert req.sink is not None
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"

    def event(delta: str | None, finish: str | None, role: bool = False,
              usage: dict[str, int] | None = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = ({"role": "assistant"} if role else {}) | \
                ({"content": delta} if delta is not None else {})
        else:
            choice.update(text=delta or "", logprobs=None)
        payload = {"id": rid, "object": obj, "created": created, "model": g.name,
                   "choices": [choice]} | ({"usage": usage} if usage else {})
        return f"data: {json.dumps(payload)}\n\n".encode()

    try:
        if chat:
            yield event(None, None, role=True)
        while (text := await req.sink.get()) is not None:
            yield event(text, None)
        try:
            out = await req.future
            yield event(None if chat else "", out.finish_reason,
                        usage=_usage(n_prompt, len(out.tokens)))
        except Exception as e:  # noqa: BLE001  (the status is sent; report in-band)
            yield f"data: {json.dumps({'error': {'message': str(e)}})}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        req.cancelled = not req.future.done()


def _group(state: ServingState, body: dict[str, Any], task: str) -> Group:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model")
    return state.group(model, task)
