"""KServe v2 (Open Inference Protocol) endpoints, health probes, and /metrics."""
from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse

from ..tasks import get_task
from . import images
from .protocol import (
    VARIANT_HEADER,
    ArrayJSON,
    check_texts,
    deadline_of,
    encode,
    generate,
    generation_params,
    read_json,
)
from .state import ApiError, Group, ServingState, state_of

# Included by create_app; the handlers find the served models with state_of(request).
router = APIRouter()

def _texts(body: dict[str, Any]) -> Any:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, "'inputs' must be a list with one tensor: {name, shape, "
                       "datatype: BYTES, data: [texts]}")
    tensor = inputs[0]
    if tensor.get("datatype", "BYTES") != "BYTES":
        raise ApiError(400, f"input datatype must be BYTES (texts), got {tensor.get('datatype')!r}")
    data = tensor.get("data")
    if isinstance(data, list) and data and all(isinstance(d, list) for d in data):
        data = [x for row in data for x in row]  # a [N, 1] tensor given row by row
    shape = tensor.get("shape")
    if isinstance(data, list) and isinstance(shape, list) and all(
            isinstance(s, int) for s in shape) and int(np.prod(shape)) != len(data):
        raise ApiError(400, f"input shape {shape} does not match {len(data)} data elements")
    return data


@router.get("/v2/health/live", tags=["kserve"])
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["kserve"])
async def ready(request: HttpRequest) -> JSONResponse:
    state = state_of(request)
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


@router.get("/v2", tags=["kserve"])
async def server_metadata() -> dict[str, Any]:
    from .. import __version__

    return {"name": "reactinfer", "version": __version__, "extensions": []}


@router.get("/v2/models/{name}", tags=["kserve"])
async def model_metadata(name: str, request: HttpRequest) -> dict[str, Any]:
    g = state_of(request).group(name)
    params: dict[str, Any] = {"task": g.task, "active_variant": g.ladder.current.name,
                              "variants": g.ladder.describe()}
    task = get_task(g.task)
    if task.takes_images:
        io = images.metadata(g)
        params["preprocess"] = io.pop("preprocess")
    else:
        io = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
              "outputs": [{"name": task.serve_output, "datatype": "BYTES" if task.generates
                           else "FP32", "shape": [-1] if task.generates else [-1, -1]}]}
    return {"name": g.name, "versions": [v.name for v in g.ladder.variants],
            "platform": f"reactinfer-{g.ladder.current.handle.backend}", **io,
            "parameters": params}


@router.get("/v2/models/{name}/ready", tags=["kserve"])
async def model_ready(name: str, request: HttpRequest) -> JSONResponse:
    state = state_of(request)
    state.group(name)
    return JSONResponse({"name": name, "ready": state.ready},
                        status_code=200 if state.ready else 503)


@router.post("/v2/models/{name}/infer", tags=["kserve"])
async def infer(name: str, request: HttpRequest) -> JSONResponse:
    state = state_of(request)
    g = state.group(name)
    task = get_task(g.task)
    image = task.takes_images
    body = await read_json(request, state, state.config.image_body_limit if image else None)
    deadline = deadline_of(request, state)
    rid = body.get("id") if isinstance(body.get("id"), str) else uuid.uuid4().hex
    if image:
        outputs, variant = await images.classify(state, g, body, deadline)
        return ArrayJSON({"model_name": g.name, "model_version": variant, "id": rid,
                          "outputs": outputs}, headers={VARIANT_HEADER: variant})
    texts = check_texts(_texts(body), g, state, "inputs[0].data")
    if task.generates:
        if len(texts) != 1:
            raise ApiError(400, "a causal-lm model takes one prompt per request")
        output, variant = await _generate_output(state, g, body, texts[0], deadline)
    else:
        y, _, variant = await encode(state, g, texts, deadline)  # (N, D)
        output = {"name": task.serve_output, "datatype": "FP32", "shape": list(y.shape),
                  "data": y.reshape(-1)}
    return ArrayJSON({"model_name": g.name, "model_version": variant, "id": rid,
                      "outputs": [output]}, headers={VARIANT_HEADER: variant})


async def _generate_output(state: ServingState, g: Group, body: dict[str, Any], prompt: str,
                           deadline: float) -> tuple[dict[str, Any], str]:
    """A causal-lm model's output tensor for one prompt, and the variant that made it."""
    raw = body.get("parameters")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    gen = await generate(state, g, generation_params(params, g, state, prompt), deadline)
    return {"name": "text_output", "datatype": "BYTES", "shape": [1],
            "data": [gen.text]}, gen.variant


@router.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
async def metrics(request: HttpRequest) -> PlainTextResponse:
    state = state_of(request)
    for g in state.groups.values():
        state.metrics.queue_length.set(g.batcher.queue_items(), model=g.name)
    state.metrics.ready.set(1 if state.ready else 0)
    return PlainTextResponse(state.metrics.render(),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
