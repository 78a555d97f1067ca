"""Every Ray call ReAct makes, behind one small surface.

Nothing else in the package imports `ray`; the other cluster modules call these
functions, so a test (or another engine) can replace this module. Ray is imported
lazily, inside the functions, so `import reactinfer.cluster.ray_api` stays cheap.

Without an address a local Ray instance is started with small resources (the
embedded default) and stopped by `session()` when the command ends; with
`address` ("auto" or "ray://host:10001" or "host:6379") it joins that cluster and
leaves it running.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.errors import UserError

# Local defaults sized for a small machine: the object store holds blocks of texts and
# results in flight, not the data set, so a few hundred MB is plenty.
LOCAL_OBJECT_STORE_MB = 200


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("scale-out needs Ray: pip install 'reactinfer[all]' "
                        "(or pip install 'ray[data,serve]')") from None
    return ray


def is_initialized() -> bool:
    return _ray().is_initialized()


def init(address: str | None = None, num_cpus: int | None = None,
         object_store_mb: int = LOCAL_OBJECT_STORE_MB, num_gpus: int | None = None) -> None:
    """Start a local Ray instance (address None) or join a running cluster."""
    ray = _ray()
    # Our actors pick their own thread counts; keep tokenizers from oversubscribing. The
    # workers get these (the caller's own values win); the caller's process is left as is.
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in env.items()}}
    if os.environ.get("PYTHONPATH"):  # workers must import the same reactinfer as the driver
        runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                          "logging_level": logging.WARNING, "runtime_env": runtime_env,
                          "ignore_reinit_error": True}
    if address is None:
        kw.update(num_cpus=num_cpus if num_cpus is not None else os.cpu_count() or 1,
                  object_store_memory=object_store_mb * 1024 * 1024)
        if num_gpus is not None:
            kw["num_gpus"] = num_gpus
    else:
        kw = {"address": address, "log_to_driver": False, "runtime_env": runtime_env,
              "logging_level": logging.WARNING, "ignore_reinit_error": True}
    try:
        ray.init(**kw)
    except ConnectionError as e:
        raise UserError(f"cannot join the Ray cluster at {address!r}: {e}; check the address "
                        "(ray status on the head node prints it)") from None
    _quiet_data()


def _quiet_data() -> None:
    """We draw our own progress line; Ray Data's bars would interleave with it."""
    try:
        from ray.data import DataContext
    except ImportError:
        return
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def shutdown() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


def owns_cluster() -> bool:
    """True when this process started the Ray instance it is connected to (ray.init
    with no cluster to join): shutting Ray down then ends every Ray process, Serve's
    included. Ray has no public call for this; its driver keeps the node it started."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    return bool(is_initialized() and node is not None and getattr(node, "head", False))


@contextlib.contextmanager
def session(address: str | None = None, **kw: Any) -> Iterator[None]:
    """Ray for the duration of a command: started here (and stopped at the end) unless
    it was already running in this process, in which case it is left as it was."""
    started = not is_initialized()
    if started:
        init(address, **kw)
    try:
        yield
    finally:
        if started:
            shutdown()


def cluster_resources() -> dict[str, float]:
    return dict(_ray().cluster_resources())


# -- actors and the object store ---------------------------------------------------------
def actor_class(cls: type, **options: Any) -> Any:
    """`ray.remote(**options)(cls)`: options such as num_cpus, num_gpus, max_restarts."""
    return _ray().remote(**options)(cls)


def put(obj: Any) -> Any:
    return _ray().put(obj)


def get(refs: Any, timeout: float | None = None) -> Any:
    return _ray().get(refs, timeout=timeout)


def wait(refs: Sequence[Any], num_returns: int = 1, timeout: float | None = None
         ) -> tuple[list[Any], list[Any]]:
    return _ray().wait(list(refs), num_returns=num_returns, timeout=timeout)


def kill(actor: Any, no_restart: bool = False) -> None:
    """Kill an actor process; with no_restart=False Ray restarts it (if max_restarts)."""
    _ray().kill(actor, no_restart=no_restart)


def is_object_ref(obj: Any) -> bool:
    return isinstance(obj, _ray().ObjectRef)


def get_actor(name: str, namespace: str | None = None) -> Any:
    return _ray().get_actor(name, namespace=namespace)


def list_named_actors(all_namespaces: bool = True) -> list[dict[str, str]]:
    return list(_ray().util.list_named_actors(all_namespaces=all_namespaces))


# -- Ray Data ------------------------------------------------------------------------------
def data_from_arrow(tables: Sequence[Any]) -> Any:
    """A Dataset with one block per Arrow table (we size the blocks ourselves)."""
    import ray.data

    _ray()
    return ray.data.from_arrow(list(tables))


def data_map_batches(ds: Any, fn_class: type, constructor_kwargs: dict[str, Any],
                     workers: int, num_cpus: float = 1, num_gpus: float = 0) -> Any:
    """Run `fn_class` on an actor pool of `workers` actors, one whole block per call
    (batch_size=None), Arrow in and out. Ray Data restarts a dead actor and retries its
    block (max_restarts=-1, max_task_retries=-1 are its actor-pool defaults)."""
    import ray.data

    kw: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        kw["num_gpus"] = num_gpus
    return ds.map_batches(fn_class, fn_constructor_kwargs=constructor_kwargs, batch_size=None,
                          batch_format="pyarrow", zero_copy_batch=True,
                          compute=ray.data.ActorPoolStrategy(size=workers), **kw)


def data_iter_tables(ds: Any) -> Iterator[Any]:
    """Results as Arrow tables, as blocks finish (not necessarily in input order)."""
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)


def data_read_parquet(path: str) -> Any:
    import ray.data

    _ray()
    return ray.data.read_parquet(path)


# -- Ray Serve -----------------------------------------------------------------------------
def serve_module() -> Any:
    """`ray.serve`, for the decorators serve_ray.py needs (deployment, ingress)."""
    _ray()
    from ray import serve

    return serve


def serve_run(app: Any, name: str, host: str, port: int, route_prefix: str = "/") -> Any:
    serve = serve_module()
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=name, route_prefix=route_prefix, blocking=False)


def serve_replica_actors(app_name: str) -> list[Any]:
    """Handles of the replica actors of one Serve application (named actors in the
    "serve" namespace; their names carry the application name)."""
    out = []
    for a in list_named_actors():
        if a.get("namespace") == "serve" and "SERVE_REPLICA" in a["name"] \
                and f"::{app_name}#" in a["name"]:
            out.append(get_actor(a["name"], namespace="serve"))
    return out


def serve_shutdown() -> None:
    ray = _ray()
    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
