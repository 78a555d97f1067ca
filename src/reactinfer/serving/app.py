"""The FastAPI app: `create_app(models, config)` loads the models into a `ServingState`
(state.py), includes the OpenAI and KServe v2 routers and the Prometheus endpoint, and
puts the drain gate in front of them. Only the entry points (server.py, the CLI, the Ray
deployment) import this module; the routes find their state on the app.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import UserError
from .auth import authorized, needs_key, refuse
from .config import ServeConfig
from .ladder import SERVE_FIRST
from .shed import error_body, shed_early
from .state import ARRIVAL_KEY, ApiError, ServingState

if TYPE_CHECKING:
    import fastapi

    from ..core.handle import ModelHandle

# Paths that stay open while draining (probes and scrapes must see the drain).
_ALWAYS_OPEN = ("/v2/health/", "/metrics", "/openapi.json", "/docs")


class DrainGate:
    """ASGI middleware: counts requests in flight (until their last byte is sent),
    answers 503 to new inference requests while draining, and 401 to inference requests
    without the API key when the server has one (auth.py)."""

    def __init__(self, app: Any, state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.state.draining and not path.startswith(_ALWAYS_OPEN):
            from starlette.responses import JSONResponse

            self.state.metrics.requests.inc(endpoint=path, status="503")
            resp = JSONResponse({"error": {"message": "the server is draining; retry on "
                                           "another replica", "type": "unavailable"}},
                                status_code=503, headers={"Retry-After": "1",
                                                          "Connection": "close"})
            await resp(scope, receive, send)
            return
        metrics = self.state.metrics
        key = self.state.config.api_key
        if key is not None and needs_key(path) and not authorized(scope, key):
            metrics.requests.inc(endpoint="unauthorized", status="401")
            await refuse(path, send)
            return
        scope[ARRIVAL_KEY] = arrival = time.monotonic()  # deadlines count from here

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "unmatched"
                metrics.requests.inc(endpoint=endpoint, status=str(message["status"]))
                if self.state.draining:  # clients stop reusing this connection
                    message = dict(message, headers=[*message.get("headers", []),
                                                     (b"connection", b"close")])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self.state.answered_http += 1
            await send(message)

        self.state.active_http += 1
        self.state.taken_http += 1
        try:
            if await shed_early(self.state, scope, send, arrival):
                self.state.answered_http += 1
            else:
                await self.app(scope, receive, counted_send)
        finally:
            self.state.active_http -= 1


def optimize_run_variants(path: Path) -> list[Path] | None:
    """The artifacts to serve from the output directory of `react optimize` (its
    variants/*, best quality first, else best/), or None when `path` is not one."""
    if not path.is_dir() or (path / "manifest.json").exists() \
            or not ((path / "variants").is_dir() or (path / "best").is_dir()):
        return None
    found = sorted(p for p in (path / "variants").glob("*") if (p / "manifest.json").exists())
    if not found and (path / "best" / "manifest.json").exists():
        found = [path / "best"]
    if not found:
        raise UserError(f"serve: {path} is a `react optimize` output with no saved artifact "
                        "in variants/ or best/: run `react optimize` again to finish it")
    return found


def model_refs(models: Sequence[str | Path | ModelHandle]) -> list[str | Path | ModelHandle]:
    """`models` with every `react optimize` output directory replaced by its variants
    (the ladder it chose)."""
    return [ref for m in models for ref in _refs(m)[0]]


def _refs(m: str | Path | ModelHandle) -> tuple[list[str | Path | ModelHandle], str | None]:
    """What `m` serves, and, for a `react optimize` output directory, the trial key of the
    model the run chose (its best/), where its ladder starts."""
    from ..planner.artifacts import saved_key

    if not isinstance(m, (str, Path)):
        return [m], None
    run = optimize_run_variants(Path(m))
    if run is None:
        return [m], None
    return list(run), saved_key(Path(m) / "best")


def load_models(models: Sequence[str | Path | ModelHandle], llm_backend: str = "auto"
                ) -> list[ModelHandle]:
    if not models:
        raise UserError("serve: give at least one model (an artifact directory or a built-in "
                        "name such as minilm)")
    handles = []
    for given in models:
        refs, chosen = _refs(given)
        handles += [_load_ref(m, chosen, llm_backend) for m in refs]
    return handles


def _load_ref(m: str | Path | ModelHandle, chosen: str | None, llm_backend: str
              ) -> ModelHandle:
    """One model to serve; the variant a `react optimize` run chose (trial key `chosen`)
    is marked as where its ladder starts."""
    from ..models import load
    from ..planner.artifacts import TRIAL_KEY

    if not isinstance(m, (str, Path)):
        return llm_engine(m, llm_backend)
    fast = gguf_on_llamacpp(m, llm_backend)
    if fast is not None:
        return fast
    try:
        handle = load(m)
    except UserError as e:
        if not Path(m).is_dir():
            raise
        raise UserError(f"{e}; nor is it the output directory of `react optimize` "
                        "(best/ and variants/)") from None
    if chosen is not None and handle.metrics.get(TRIAL_KEY) == chosen:
        handle = handle.derive(metrics={**handle.metrics, SERVE_FIRST: True})
    return llm_engine(handle, llm_backend)


def load_draft(ref: str | Path | None, handles: Sequence[ModelHandle]) -> ModelHandle | None:
    """The draft model (ServeConfig.draft) for the causal LMs among `handles`, loaded as
    they are, on llama.cpp; refused when nothing served can use it, when it is no causal
    LM on llama.cpp, or when its vocabulary differs from theirs."""
    from ..tasks import get_task
    from .speculate import check_vocabulary

    if ref is None:
        return None
    llms = [h for h in handles if get_task(h.task).generates]
    if not llms:
        raise UserError("serve --draft: a draft model speeds up the generation of a causal "
                        "LM; none of the models served is one")
    for h in llms:
        if h.backend != "llama.cpp":
            raise UserError(f"serve --draft: {h.name} is served on {h.backend}; speculative "
                            "decoding runs on llama.cpp (--llm-backend auto)")
    draft = _load_ref(ref, None, "llama.cpp")
    if not get_task(draft.task).generates or draft.backend != "llama.cpp":
        raise UserError(f"serve --draft: {ref} is a {draft.task} model on {draft.backend}; a "
                        "draft must be a causal LM that runs on llama.cpp (a GGUF)")
    for h in llms:
        check_vocabulary(h.runner(), draft.runner(), (h.name, draft.name))
    return draft


def with_class_names(handles: list[ModelHandle], labels: Sequence[str]) -> list[ModelHandle]:
    """The image classifiers among `handles` answer `labels` as their class names
    (--labels); each must have that many classes."""
    from ..core.handle import takes_images
    from ..models.image_checks import with_labels

    if not any(takes_images(h.task) for h in handles):
        raise UserError("serve --labels names the classes of an image-classification model; "
                        "none of the models served is one")
    return [with_labels(h, labels) if takes_images(h.task) else h for h in handles]


def gguf_on_llamacpp(ref: str | Path, choice: str = "auto") -> ModelHandle | None:
    """A GGUF (a built-in name, a .gguf path) served as is on llama.cpp, loaded without
    torch: the file and its tokenizer only (models.loaders.gguf_file_handle), so the server
    is up in seconds, not after de-quantising every weight into torch. None when `ref`
    is no GGUF, or another backend is chosen, or llama.cpp is not installed."""
    from ..backends.convert import to_backend
    from ..core.backend import get_backend
    from ..models.loaders import gguf_file_handle

    if choice not in ("auto", "llama.cpp") or not get_backend("llama.cpp").available():
        return None
    handle = gguf_file_handle(ref)
    return None if handle is None else to_backend(handle, "llama.cpp", outtype="source")


def llm_engine(handle: ModelHandle, choice: str = "auto") -> ModelHandle:
    """A causal LM loaded from a GGUF (a built-in name, a .gguf path) and not changed
    since runs on llama.cpp, the packaged GGUF as is: continuous batching, and the
    fastest engine measured for it. `choice` names another backend; a handle already
    on another backend (an artifact) keeps it."""
    from ..backends.convert import to_backend
    from ..core.backend import get_backend
    from ..tasks import get_task

    if not get_task(handle.task).generates or handle.backend != "torch" or choice == "torch":
        return handle
    if choice != "auto":
        return to_backend(handle, choice)
    from ..backends.llamacpp import unchanged_gguf

    if get_backend("llama.cpp").available() and unchanged_gguf(handle) is not None:
        return to_backend(handle, "llama.cpp", outtype="source")
    return handle


def create_app(models: Sequence[str | Path | ModelHandle], config: ServeConfig | None = None
               ) -> fastapi.FastAPI:
    """The serving app for `models` (artifact paths, built-in names, or handles)."""
    import fastapi

    from . import kserve, openai  # the routers need fastapi: imported when an app is made

    config = config or ServeConfig()
    handles = load_models(models, config.llm_backend)
    if config.labels is not None:
        handles = with_class_names(handles, config.labels)
    state = ServingState(handles, config, draft=load_draft(config.draft, handles))

    @asynccontextmanager
    async def lifespan(app: fastapi.FastAPI):
        # Measure in a thread: /v2/health/live answers at once, ready turns true after.
        starter = threading.Thread(target=_start_safely, args=(state,), daemon=True,
                                   name="react-warmup")
        starter.start()
        yield
        state.begin_drain()
        await state.wait_drained()
        state.stop()

    app = fastapi.FastAPI(title="ReAct serving", version=_version(), lifespan=lifespan,
                          description="OpenAI-compatible and KServe v2 inference with dynamic "
                                      "batching, deadlines and a reactive variant ladder.")
    app.state.react = state
    _error_handlers(app, state)
    app.include_router(openai.router)
    app.include_router(kserve.router)
    app.add_middleware(DrainGate, state=state)
    return app


def _error_handlers(app: fastapi.FastAPI, state: ServingState) -> None:
    """Every error is JSON: OpenAI's shape under /v1, KServe's ({"error": ...}) elsewhere."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse

    def respond(request: HttpRequest, status: int, message: str, param: str | None = None,
                code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, status, message, param, code),
                            status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, e: ApiError) -> JSONResponse:
        return respond(request, e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, e: HTTPException) -> JSONResponse:
        return respond(request, e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def server_error(request: HttpRequest, e: Exception) -> JSONResponse:
        return respond(request, 500, f"internal error: {type(e).__name__}: {e}")


def _start_safely(state: ServingState) -> None:
    try:
        state.start()
    except Exception as e:  # noqa: BLE001  (report, stay not-ready)
        state.start_error = repr(e)
        raise


def _version() -> str:
    from .. import __version__

    return __version__
