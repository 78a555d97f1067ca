"""Serving replicas with Ray Serve: the HTTP API on N replicas behind Ray's proxy.

Each replica builds its own FastAPI app (and loads its own model copy) at start-up,
through Serve's late-bound ingress (`__serve_build_asgi_app__`), so no model crosses
the wire. The app is `reactinfer.serving.app.create_app(models, config)` (config a
`reactinfer.serving.ServeConfig` or None). Ray Serve restarts a dead replica; the proxy
routes requests to the live ones meanwhile.
"""

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import UserError
from . import ray_api

APP_NAME = "reactinfer"


def build_app(models: Sequence[Any], config: Any) -> Any:
    """The serving package's app, with every response naming the replica process in
    `x-react-replica`."""
    from ..serving.app import create_app

    app = create_app(models, config)
    pid = str(os.getpid())

    @app.middleware("http")
    async def name_replica(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-react-replica"] = pid
        return response

    return app


class ReactIngress:
    """The deployment class: stores its arguments; Serve calls __serve_build_asgi_app__
    on each replica after construction to get the ASGI app."""

    def __init__(self, models: list[Any], config: Any):
        self.models, self.config = models, config

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(self.models, self.config)


@dataclass
class Served:
    url: str
    replicas: int
    started_ray: bool
    stopped_by: str | None = None  # the signal that ended a blocking run (SIGTERM, SIGINT)
    owns_cluster: bool = False  # Ray was started here, not joined

    def replica_actors(self) -> list[Any]:
        return ray_api.serve_replica_actors(APP_NAME)

    def stop(self) -> None:
        # Our own Ray goes down whole, Serve with it. Asking Serve's controller to shut
        # down first would wait 30 s for nothing when a signal to the process group (a
        # terminal's Ctrl-C, systemd, `timeout`) has already ended it.
        if not (self.started_ray and self.owns_cluster):
            ray_api.serve_shutdown()
        if self.started_ray:
            ray_api.shutdown()


def _wait_ready(url: str, timeout: float, stop: threading.Event | None = None) -> None:
    """Until the app answers ready (or `stop` is set: a stop signal came first)."""
    import httpx

    deadline = time.time() + timeout
    last: Exception | str = "no answer"
    while time.time() < deadline:
        if stop is not None and stop.is_set():
            return
        try:
            r = httpx.get(url + "/v2/health/ready", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise UserError(f"the Ray Serve app was not ready at {url} after {timeout:.0f} s ({last}); "
                    "see the replicas' logs (ray logs), or raise the ready timeout")


def run(models: Sequence[Any] | Any, config: Any = None, replicas: int = 2,
        ray_address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
        cpus_per_replica: float = 1.0, block: bool = False, ready_timeout: float = 180
        ) -> Served:
    """Serve `models` (names, paths or handles) on `replicas` Ray Serve replicas.
    block=True serves until interrupted, then stops Serve (and Ray if started here)."""
    if replicas < 1:
        raise UserError(f"--replicas must be at least 1, got {replicas}")
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    models = [str(m) if isinstance(m, os.PathLike) else m for m in models]
    started = not ray_api.is_initialized()
    if started:
        ray_api.init(ray_address)
    serve = ray_api.serve_module()
    deployment = serve.deployment(
        name="ReactIngress", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        health_check_period_s=2, health_check_timeout_s=10)(serve.ingress()(ReactIngress))
    ray_term = signal.getsignal(signal.SIGTERM)
    # Blocking: the stop signals are noted from now on, so one that arrives while the
    # replicas start still stops Serve and Ray in order (not Ray's SystemExit mid-way).
    stops = _StopSignals() if block else contextlib.nullcontext(None)
    with stops as noted:
        ray_api.serve_run(deployment.bind(models, config), APP_NAME, host, port)
        served = Served(url=f"http://{host}:{port}", replicas=replicas, started_ray=started,
                        owns_cluster=started and ray_api.owns_cluster())
        try:
            _wait_ready(served.url, ready_timeout, noted.event if noted else None)
            if noted is not None:
                if not noted.event.is_set():
                    print(f"serving {len(models)} model(s) on {replicas} Ray Serve "
                          f"replica(s) at {served.url} (Ctrl-C or SIGTERM stops)", flush=True)
                served.stopped_by = noted.wait()
        finally:
            if block or sys.exc_info()[1] is not None:
                # never leave Serve (and a Ray started here) running behind an error
                served.stop()
    if block:
        signal.signal(signal.SIGTERM, ray_term)
    return served


class _StopSignals:
    """While entered, SIGTERM and SIGINT are only noted; `wait()` blocks until one came.

    ray.init makes SIGTERM raise SystemExit wherever the main thread happens to be, and
    the process then dies half-way through Ray's teardown (a native stack dump). Noting
    the signal lets the caller stop Serve and Ray in order."""

    def __enter__(self) -> "_StopSignals":
        self.got: list[str] = []
        self.event = threading.Event()
        self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGTERM,
                                                                    signal.SIGINT)}
        return self

    def _note(self, signum: int, frame: object) -> None:
        self.got.append(signal.Signals(signum).name)
        self.event.set()

    def wait(self) -> str:
        while not self.event.wait(0.5):  # short waits: the handler runs between them
            pass
        return self.got[0]

    def __exit__(self, *exc: object) -> None:
        # a second Ctrl-C while Ray shuts down interrupts as usual; SIGTERM is already
        # being obeyed, so a repeat of it is ignored rather than tearing the shutdown
        signal.signal(signal.SIGINT, self.previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _wait_for_stop_signal() -> str:
    """Block until SIGTERM or SIGINT; return its name."""
    with _StopSignals() as stops:
        return stops.wait()
