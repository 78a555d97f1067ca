"""What the endpoints share: `ServingState` (the served models, grouped into ladders, with
their batchers, the response cache, the metrics, readiness and drain), `Group` (one served
model) and `ApiError` (an error answered as JSON).

These live apart from app.py so that the route modules (openai, kserve, protocol) and the
shedding middleware need not import the app that includes them.

Variants of one model are the handles whose original model is the same (an artifact
records the source it was made from): `react serve base/ pruned/ int8/` serves one
model with a three-rung ladder; `react serve minilm smollm2` serves two models.
"""
from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.artifact import root_source
from ..core.backend import ServingContextRunner
from ..models.vision import model_labels
from ..tasks import get_task
from .batcher import Batcher
from .cache import ResponseCache
from .config import ServeConfig
from .ladder import SERVE_FIRST, Ladder, ServiceTime, Variant, variant_quality
from .metrics import Metrics
from .request import Request
from .warmup import warm_up, warmup_items, warmup_texts

if TYPE_CHECKING:
    from starlette.requests import Request as HttpRequest

    from ..core.handle import ModelHandle

ARRIVAL_KEY = "react.arrival"  # ASGI scope key: when the request reached the app


class ApiError(Exception):
    """An error answered as JSON with a status code (4xx for bad input)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


@dataclass
class Group:
    """One served model: its ladder of variants and the batcher in front of it."""

    name: str
    task: str
    ladder: Ladder
    batcher: Batcher

    @property
    def tokenizer(self) -> Any:
        return self.ladder.variants[0].handle.tokenizer

    @property
    def max_length(self) -> int:
        return min(v.handle.max_length for v in self.ladder.variants)

    @property
    def preprocess(self) -> Any:
        """An image model's ImagePreprocess (the same on every variant)."""
        return self.ladder.variants[0].handle.tokenizer

    @cached_property
    def labels(self) -> list[str] | None:
        """An image model's class names, or None (its class ids serve as names)."""
        return model_labels(self.ladder.variants[0].handle)

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + answer) a generation may hold on every variant: a
        runner's serving context where it has one (llama.cpp), else the model's limit."""
        return min(served_context(v.handle) for v in self.ladder.variants)


def served_context(handle: Any) -> int:
    """The most tokens one served generation may hold on `handle`."""
    runner = handle.runner()
    return int(runner.serve_context if isinstance(runner, ServingContextRunner)
               else handle.max_length)


def state_of(request: HttpRequest) -> ServingState:
    """The serving state of the app that received `request` (create_app puts it on the
    app, so the routers, declared once at module level, serve any app that includes
    them)."""
    state: ServingState = request.app.state.react
    return state


def _group_name(handle: ModelHandle) -> str:
    root = root_source(handle.source)
    if root.get("kind") == "builtin":
        return str(root["ref"])
    if root.get("kind") in ("hf", "gguf") and root.get("ref"):
        return Path(str(root["ref"])).stem
    return handle.name


def _variant_name(handle: ModelHandle) -> str:
    if handle.source.get("kind") == "artifact":
        return Path(str(handle.source["ref"])).name
    return handle.name


# Backend options the server sets on a variant unless its artifact chose them. ONNX
# Runtime's idle intra-op threads spin between operators by default: in a server they
# take the cores that the event loop and the tokenizer need between and during batches.
SERVE_OPTIONS: dict[str, dict[str, Any]] = {"onnxruntime": {"spinning": False}}


def for_serving(handle: ModelHandle) -> ModelHandle:
    """`handle` with the server's backend options (SERVE_OPTIONS) where it has none."""
    extra = {k: v for k, v in SERVE_OPTIONS.get(handle.backend, {}).items()
             if k not in handle.backend_options}
    if not extra:
        return handle
    return handle.derive(backend_options={**handle.backend_options, **extra})


class ServingState:
    """Everything the endpoints share: groups, cache, metrics, readiness and drain."""

    def __init__(self, handles: Sequence[ModelHandle], config: ServeConfig,
                 draft: ModelHandle | None = None):
        self.config = config
        self.draft = draft  # the generative models' draft model (app.load_draft), if any
        self.metrics = Metrics()
        self.cache = ResponseCache(config.cache_size)
        self.ready = False
        self.draining = False
        self.active_http = 0  # requests past the drain gate and not yet answered
        self.taken_http = self.answered_http = 0  # totals, for the drain's closing line
        self.start_error: str | None = None  # why the start-up failed (then never ready)
        self.groups: dict[str, Group] = {}
        self._build(handles)
        self.metrics.ready.set(0)

    def _build(self, handles: Sequence[ModelHandle]) -> None:
        by_key: dict[str, list[ModelHandle]] = {}
        names: dict[str, str] = {}
        for h in map(for_serving, handles):
            root = root_source(h.source)
            key = f"{h.task}:{root.get('sha256') or h.name}"
            by_key.setdefault(key, []).append(h)
            names.setdefault(key, _group_name(h))
        for key, hs in by_key.items():
            name = names[key]
            if name in self.groups:
                name = f"{name}-{len(self.groups)}"
            variants, seen = [], set()
            for h in hs:
                vname = _variant_name(h)
                while vname in seen:
                    vname += "+"
                seen.add(vname)
                variants.append(Variant(vname, h, variant_quality(h),
                                        ServiceTime(self.config.ewma_alpha)))
            cfg = self.config
            start = next((i for i, h in enumerate(hs) if h.metrics.get(SERVE_FIRST)), 0)
            ladder = Ladder(variants, cfg.slo_s, cfg.max_batch, cfg.max_delay_s,
                            cfg.down_headroom, cfg.up_ratio, cfg.up_hold_s, start=start,
                            tpot_s=cfg.tpot_s)
            batcher = Batcher(name, ladder, cfg, self.metrics, self._answered)
            if get_task(hs[0].task).generates:
                batcher.draft = self.draft
            self.groups[name] = Group(name, hs[0].task, ladder, batcher)

    # -- start-up -----------------------------------------------------------------------
    def start(self) -> None:
        """Measure every variant (service time per batch size), order each ladder by
        cost, start the workers, then report ready."""
        texts = warmup_texts(self.config.max_batch)
        for g in self.groups.values():
            warm_up(g.ladder, g.task, warmup_items(g.task, g.ladder.variants[0].handle, texts),
                    self.config)
            g.batcher.start()
        # Everything loaded so far (models, libraries) lives as long as the server: keep it
        # out of the collector's full passes, which would otherwise stall the event loop
        # for tens of milliseconds at a time under load.
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)

    def stop(self) -> None:
        for g in self.groups.values():
            g.batcher.stop()

    # -- drain ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)
        for g in self.groups.values():
            g.batcher.draining = True

    def drained(self) -> bool:
        return self.active_http == 0 and all(g.batcher.idle for g in self.groups.values())

    async def wait_drained(self, timeout: float | None = None) -> bool:
        end = time.monotonic() + (timeout if timeout is not None else self.config.drain_timeout_s)
        while not self.drained():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- lookups and bookkeeping ------------------------------------------------------------
    def group(self, name: str | None, task: str | None = None) -> Group:
        if name is None or name == "":
            candidates = [g for g in self.groups.values() if task is None or g.task == task]
            if len(candidates) == 1:
                return candidates[0]
            raise ApiError(400, "give 'model': this server serves "
                           f"{', '.join(self.groups)}", param="model")
        if name not in self.groups:
            raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists "
                           f"{', '.join(self.groups)}", param="model", code="model_not_found")
        g = self.groups[name]
        if task is not None and g.task != task:
            raise ApiError(400, f"model {name!r} is a {g.task} model; this endpoint needs "
                           f"{task}", param="model")
        return g

    def _answered(self, req: Request, variant: Variant, t: float) -> None:
        """Called from a worker when a request is answered (first token for completions)."""
        on_time = t <= req.job.deadline
        model = _model_of(self, variant)
        self.metrics.latency.observe(t - req.arrival, model=model)
        self.metrics.variant_requests.inc(model=model, variant=variant.name)
        if not on_time:
            self.metrics.slo_violations.inc(model=model)
        self.metrics.record_quality(model, variant.quality, on_time)

    def cache_answered(self, g: Group, variant: Variant) -> None:
        self.metrics.latency.observe(0.0, model=g.name)
        self.metrics.variant_requests.inc(model=g.name, variant=variant.name)
        self.metrics.record_quality(g.name, variant.quality, True)


def _model_of(state: ServingState, variant: Variant) -> str:
    for g in state.groups.values():
        if variant in g.ladder.variants:
            return g.name
    return "?"
