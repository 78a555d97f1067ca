"""Shedding before the app: under overload most requests are refused, so a refusal must
cost the event loop almost nothing. Before routing or reading the body, an inference
request is answered 429 at once when every model it could be for would refuse even the
smallest request (one item, or one new token) with its deadline: a bigger request could
only finish later. Anything less certain goes through the normal path."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .admission import deadline_for

if TYPE_CHECKING:
    from .config import ServeConfig
    from .state import Group, ServingState

_TASK_OF_PATH = {"/v1/embeddings": "embedding", "/v1/completions": "causal-lm",
                 "/v1/chat/completions": "causal-lm"}
INFER_ROUTE = "/v2/models/{name}/infer"


def error_body(path: str, status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape under /v1, KServe's ({"error": ...}) elsewhere."""
    if not path.startswith("/v1/"):
        return {"error": message}
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _candidates(state: ServingState, path: str) -> tuple[list[Group], str]:
    """The groups a POST to `path` may be for, and the route (metrics label)."""
    task = _TASK_OF_PATH.get(path)
    if task is not None:
        return [g for g in state.groups.values() if g.task == task], path
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer" \
            and parts[3] in state.groups:
        return [state.groups[parts[3]]], INFER_ROUTE
    return [], path


def deadline_ms(raw: str | bytes) -> float | None:
    """An X-Deadline-Ms value in milliseconds, or None when it is not a positive number."""
    try:
        ms = float(raw)
    except ValueError:
        return None
    return ms if 0 < ms < float("inf") else None


def _deadline(scope: dict, arrival: float, config: ServeConfig) -> float | None:
    for key, value in scope.get("headers", ()):
        if key == b"x-deadline-ms":
            ms = deadline_ms(value)  # None: the handler answers 400 for it
            return None if ms is None else deadline_for(config, arrival, ms)
    return deadline_for(config, arrival, None)


async def shed_early(state: ServingState, scope: dict, send: Any, arrival: float) -> bool:
    """Answer 429 now and return True, or return False to let the app handle it."""
    if scope.get("method") != "POST" or not state.ready:
        return False
    path = scope.get("path", "")
    groups, route = _candidates(state, path)
    if not groups:
        return False
    deadline = _deadline(scope, arrival, state.config)
    if deadline is None:
        return False
    refusals = []
    for g in groups:
        refusal = g.batcher.refusal(deadline, time.monotonic())
        if refusal is None:
            return False
        refusals.append(refusal)
    first = min(refusals, key=lambda r: r.retry_after or 0)
    body = json.dumps(error_body(path, 429, str(first), code="overloaded")).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(first.retry_after or 1).encode())]})
    await send({"type": "http.response.body", "body": body})
    state.metrics.requests.inc(endpoint=route, status="429")
    return True
