"""OpenAI-compatible endpoints: /v1/embeddings, /v1/completions, /v1/chat/completions
(with `stream: true` as server-sent events) and /v1/models. Decoding is greedy."""
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
    Detokenizer,
    check_texts,
    deadline_of,
    encode,
    generate,
    max_tokens_of,
    prompt_ids,
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
    max_tokens = max_tokens_of(body, state)
    ids = prompt_ids(g, state, prompt, max_tokens)
    deadline = deadline_of(request, state)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if stream:
        return await _stream(state, g, ids, max_tokens, deadline, rid, chat)
    out = await generate(state, g, ids, max_tokens, deadline)
    text = g.tokenizer.decode(out.tokens, skip_special_tokens=True)
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(out.tokens),
             "total_tokens": len(ids) + len(out.tokens)}
    choice: dict[str, Any] = {"index": 0, "finish_reason": out.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    return JSONResponse({"id": rid, "object": "chat.completion" if chat
                         else "text_completion", "created": int(time.time()),
                         "model": g.name, "choices": [choice], "usage": usage},
                        headers={VARIANT_HEADER: out.variant})


async def _stream(state: ServingState, g: Group, ids: list[int], max_tokens: int,
                  deadline: float, rid: str, chat: bool) -> StreamingResponse:
    """Admit the generation and wait for its variant (the header needs it) before any
    byte is sent, so a refusal or a model failure still gets its status code."""
    req = await start_generation(state, g, ids, max_tokens, deadline, stream=True)
    assert req.sink is not None
    first = await req.sink.get()  # the variant name, or None if the model failed
    if first is None:
        await req.future  # raises the model's error
    return StreamingResponse(_sse(g, req, rid, chat, len(ids)),
                             media_type="text/event-stream",
                             headers={VARIANT_HEADER: str(first),
                                      "Cache-Control": "no-cache"})


async def _sse(g: Group, req: Request, rid: str, chat: bool, n_prompt: int
               ) -> AsyncIterator[bytes]:
    """One event per generated token, as the worker makes it."""
    assert req.sink is not None
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"
    detok = Detokenizer(g.tokenizer)

    def event(delta: str | None, finish: str | None, role: bool = False) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = ({"role": "assistant"} if role else {}) | \
                ({"content": delta} if delta is not None else {})
        else:
            choice.update(text=delta or "", logprobs=None)
        payload = {"id": rid, "object": obj, "created": created, "model": g.name,
                   "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n".encode()

    if chat:
        yield event(None, None, role=True)
    while (tok := await req.sink.get()) is not None:
        yield event(detok.add(tok), None)
    try:
        out = await req.future
        yield event(None if chat else "", out.finish_reason)
    except Exception as e:  # noqa: BLE001  (the status is sent; report in-band)
        yield f"data: {json.dumps({'error': {'message': str(e)}})}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _group(state: ServingState, body: dict[str, Any], task: str) -> Group:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model")
    return state.group(model, task)
