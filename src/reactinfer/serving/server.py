"""Running the app with uvicorn, with a drain on SIGTERM / SIGINT that loses nothing:
readiness turns false, new requests get 503, every accepted request is answered, then
the server exits. A second signal exits at once."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from ..core.errors import UserError
from .app import create_app
from .auth import api_key_from_env
from .config import ServeConfig
from .state import ServingState

if TYPE_CHECKING:
    pass

log = logging.getLogger("reactinfer.serving")


def draining_server(app: Any, host: str, port: int, log_level: str = "warning",
                    drain_grace_s: float = 0.0) -> Any:
    """A uvicorn Server whose first exit signal starts a drain instead of stopping."""
    import uvicorn

    state: ServingState = app.state.react

    class DrainingServer(uvicorn.Server):
        drain_task: asyncio.Task | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            loop = getattr(self, "_loop", None)
            if self.drain_task is not None or state.draining or loop is None:
                super().handle_exit(sig, frame)  # second signal, or not serving yet: stop
                return
            state.begin_drain()
            loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self) -> None:
            self.drain_task = asyncio.ensure_future(self._drain())

        async def _drain(self) -> None:
            # Let load balancers see readiness go false while we still answer 503s.
            await asyncio.sleep(drain_grace_s)
            done = await state.wait_drained()
            if not done:
                log.warning("drain timed out after %ss with requests still open",
                            state.config.drain_timeout_s)
            # stderr, whatever the log level: the record that nothing taken was dropped
            print(f"react serve: drained; {state.taken_http} requests taken, "
                  f"{state.answered_http} answered", file=sys.stderr, flush=True)
            self.should_exit = True

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

    # uvicorn annotates the shutdown timeout as int, but hands it to asyncio.wait_for,
    # which takes fractions of a second too
    grace: Any = state.config.drain_timeout_s
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=grace, access_log=False)
    return DrainingServer(config)


def check_port(port: int) -> None:
    """1..65535, or 0 for any free port (the socket then tells which one it got)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"serve: --port must be in 1..65535 (or 0: any free port), got {port}")


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT, for uvicorn to listen on.

    Bound before any model loads, so a port in use (or a host that is not this
    machine's) is one line at once rather than a traceback after the load; and port 0
    becomes a real port that the banner can print."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"serve: --host {host!r} does not resolve ({e.strerror}); give an "
                        "address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    # IPv4 first: 'localhost' may list ::1 first, and clients mostly try 127.0.0.1
    family, _, _, _, address = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    # what uvicorn sets: a restart need not wait for the old connections' TIME_WAIT (a
    # port someone listens on is still refused)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)  # holds the port: a second server starting now fails here, at once
    except OSError as e:
        sock.close()
        raise UserError(_bind_error(host, port, e)) from None
    return sock


def _bind_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return (f"serve: port {port} on {host} is already in use (another server?); stop "
                "it, or pick another --port")
    if e.errno == errno.EACCES:
        return f"serve: port {port} needs privileges on this machine; pick one above 1023"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"serve: --host {host} is not an address of this machine; try 127.0.0.1"
    return f"serve: cannot listen on {host}:{port}: {e.strerror or e}"


def serve(models: Any, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "warning", drain_grace_s: float = 0.0, **config: Any) -> None:
    """Serve `models` over HTTP until SIGTERM / SIGINT (then drain and return).

    `models`: one model or a list, each anything `load` takes (a name or path, an artifact
    or `react optimize` output directory, a ModelHandle, or a torch.nn.Module: load()'s
    keyword arguments such as `task=` and `preprocess=` are passed to it).
    `config` takes ServeConfig's fields (slo_ms, max_batch, max_delay_ms, api_key, ...);
    without `api_key`, REACT_API_KEY gives it."""
    from ..core.handle import ModelHandle
    from ..models import LOAD_KEYS, load

    load_kw = {k: config.pop(k) for k in LOAD_KEYS if k in config}
    models = _as_list(models)
    if load_kw or any(not isinstance(m, (str, os.PathLike, ModelHandle)) for m in models):
        models = [m if isinstance(m, ModelHandle) else load(m, **load_kw) for m in models]
    config.setdefault("api_key", api_key_from_env(None))
    serve_config = ServeConfig.from_kwargs(**config)
    sock = listen_socket(host, port)
    try:
        app = create_app(models, serve_config)
    except BaseException:
        sock.close()
        raise
    server = draining_server(app, host, sock.getsockname()[1], log_level, drain_grace_s)
    server.run(sockets=[sock])


def _as_list(models: Any) -> list[Any]:
    if isinstance(models, (list, tuple)):
        return list(models)
    return [models]
