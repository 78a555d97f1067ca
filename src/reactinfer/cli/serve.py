"""`react serve` and `react loadtest`."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..core.bounds import check_at_least
from ..core.errors import UserError
from ..core.images import read_labels
from .loading import add_load_args, loaded
from .registry import command, print_json


@command("serve", "Serve models over HTTP (OpenAI + KServe v2 + /metrics) with dynamic "
                  "batching, deadlines, load shedding and a variant ladder.")
def _serve(p: argparse.ArgumentParser):
    from ..serving.config import ServeConfig
    from .defaults import field_default

    def d(name: str) -> Any:  # the flag's default is the config's: they cannot drift
        return field_default(ServeConfig, name)

    p.add_argument("models", nargs="+", metavar="ARTIFACT",
                   help="artifact directories, built-in names, or the output directory of "
                        "`react optimize` (its variants); several variants of one model "
                        "form its ladder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000,
                   help="1..65535, or 0 for any free port (the banner says which)")
    _add_batching_args(p, d)
    _add_input_limit_args(p, d)
    _add_generation_args(p, d)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the models")
    p.add_argument("--api-key", default=d("api_key"),
                   help="require 'Authorization: Bearer KEY' on the /v1 and /v2 inference "
                        "routes (default: $REACT_API_KEY; health and /metrics stay open)")
    p.add_argument("--log-level", default="warning")
    add_load_args(p)
    p.add_argument("--ray", action="store_true", help="run replicas with Ray Serve")
    p.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas (with --ray)")
    p.add_argument("--ray-address", default=None)

    def run(a: argparse.Namespace) -> int:
        from ..serving.config import SERVER_PACKAGES, require
        from ..serving.server import check_port

        check_port(a.port)
        check_at_least("--replicas", a.replicas)
        check_at_least("--threads", a.threads)
        require(SERVER_PACKAGES, "react serve")
        config = _serve_config(a)
        if a.threads is not None:
            from ..backends.torch_eager import set_threads

            set_threads(a.threads)
        if a.ray:
            return _serve_on_ray(a, config)
        return _serve_here(a, config)

    return run


# ServeConfig fields that a flag of the same name (--max-batch: max_batch) sets as given
_SAME_NAME = ("slo_ms", "tpot_ms", "max_batch", "max_delay_ms", "max_queue", "cache_size",
              "max_inputs", "max_body_bytes", "max_image_bytes", "max_image_pixels",
              "long_text", "admit_quantile", "max_tokens", "llm_backend", "speculate",
              "draft_tokens", "draft", "kv_memory_gb", "context", "flash_attn")


def _add_batching_args(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--slo-ms", type=float, default=d("slo_ms"),
                   help="latency objective (ms): the deadline of requests that state none "
                        "(X-Deadline-Ms), and what the variant ladder holds; default none: "
                        "such requests queue up to --max-queue")
    p.add_argument("--max-batch", type=int, default=d("max_batch"))
    p.add_argument("--max-delay-ms", type=float, default=d("max_delay_ms"))
    p.add_argument("--max-queue", type=int, default=d("max_queue"))
    p.add_argument("--cache-size", type=int, default=d("cache_size"))
    p.add_argument("--no-warmup", action="store_false", dest="warmup", default=d("warmup"),
                   help="skip measuring each variant at start-up (the ladder then learns "
                        "from live batches only)")
    p.add_argument("--no-deadline-admission", action="store_false", dest="deadline_admission",
                   default=d("deadline_admission"),
                   help="shed only when the queue is full, not when a deadline cannot be met")
    p.add_argument("--admit-quantile", type=float, default=d("admit_quantile"),
                   help="scale predictions by this quantile of recent actual/predicted "
                        "answer times: about this fraction of admitted requests is on time")


def _add_input_limit_args(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--max-inputs", type=int, default=d("max_inputs"))
    p.add_argument("--max-body-bytes", type=int, default=d("max_body_bytes"))
    p.add_argument("--max-image-bytes", type=int, default=d("max_image_bytes"),
                   help="largest image file (decoded from base64) an image model takes; "
                        f"larger ones get 413 (default {d('max_image_bytes') / (1 << 20):g} "
                        "MiB; an image model's body limit grows to hold one such image)")
    p.add_argument("--max-image-pixels", type=int, default=d("max_image_pixels"),
                   help="most pixels an image file may declare; more gets 413 before it is "
                        "decoded (a decompression bomb; default "
                        f"{d('max_image_pixels') / 1e6:g} megapixels)")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="an image model's class names: one per line in class-id order, or "
                        "a JSON list (default: the names its artifact holds, else the ids)")
    p.add_argument("--long-text", choices=("truncate", "error"), default=d("long_text"),
                   help="texts over the model's token limit: truncate, or answer 400")


def _add_generation_args(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument("--max-tokens", type=int, default=d("max_tokens"),
                   help="most new tokens a completion may ask for (default: up to the "
                        "model's context)")
    p.add_argument("--tpot-ms", type=float, default=d("tpot_ms"),
                   help="generation: time-per-output-token objective (ms); a new chat joins "
                        "the running ones only while their decode steps are within it, and "
                        "the variant ladder steps to a faster variant while finished "
                        "generations exceed it (back up when the better one has headroom)")
    p.add_argument("--kv-memory", type=float, default=d("kv_memory_gb"), dest="kv_memory_gb",
                   metavar="GIB",
                   help="memory for each LLM's KV cache (sequences × context), in GiB; "
                        "default: a quarter of the memory available at start-up (the plan "
                        "is printed then)")
    p.add_argument("--context", type=int, default=d("context"),
                   help="tokens (prompt + answer) one generation may hold; default 2048, "
                        "never more than the model's trained context, less when the KV "
                        "memory cannot hold it for every sequence")
    p.add_argument("--llm-backend", default=d("llm_backend"),
                   help="engine for a causal LM given as a built-in name or .gguf: auto "
                        "(llama.cpp, continuous batching) or a backend name such as torch")
    p.add_argument("--speculate", choices=("auto", "off", "lookup", "draft"),
                   default=d("speculate"),
                   help="speculative decoding of greedy completions on llama.cpp: auto "
                        "(while at most 2 streams decode, and while a stream's drafts are "
                        "accepted; from --draft when given, else by prompt lookup), lookup or "
                        "draft (always, from that source) or off; same answers either way")
    from ..serving.config import FLASH_ATTN_MODES

    p.add_argument("--flash-attn", choices=FLASH_ATTN_MODES, default=d("flash_attn"),
                   help="llama.cpp's flash attention: auto (llama.cpp's default), on, or off "
                        "(llama-cpp-python's default: the same greedy text as its Llama)")
    p.add_argument("--draft-tokens", type=int, default=d("draft_tokens"),
                   help="most tokens one draft proposes (drafts start at 4 tokens and "
                        "double while accepted whole)")
    p.add_argument("--draft", metavar="MODEL", default=d("draft"),
                   help="a draft model for speculative decoding: a smaller causal LM (GGUF "
                        "path or built-in name) with the served model's vocabulary")


def _serve_config(a: argparse.Namespace) -> Any:
    """The ServeConfig that `react serve`'s flags ask for."""
    from ..serving.auth import api_key_from_env
    from ..serving.config import ServeConfig

    return ServeConfig(**{k: getattr(a, k) for k in _SAME_NAME},
                       labels=read_labels(a.labels) if a.labels else None,
                       warmup=a.warmup, deadline_admission=a.deadline_admission,
                       api_key=api_key_from_env(a.api_key))


def _serve_here(a: argparse.Namespace, config: Any) -> int:
    """The server in this process: the port is bound before the models load, so a busy
    port fails fast; SIGTERM and Ctrl-C drain it."""
    from ..serving.app import create_app
    from ..serving.server import draining_server, listen_socket

    sock = listen_socket(a.host, a.port)
    try:
        app = create_app([loaded(m, a) for m in a.models], config)
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]
    key = "  API key required" if config.api_key else ""
    print(f"react serve: http://{a.host}:{port}  models: {', '.join(app.state.react.groups)}"
          f"{key}  (ready once /v2/health/ready says so; Ctrl-C or SIGTERM drains)",
          flush=True)
    draining_server(app, a.host, port, a.log_level).run(sockets=[sock])
    return 0


def _serve_on_ray(a: argparse.Namespace, config: Any) -> int:
    """The same API on Ray Serve replicas (cluster/serve_ray.py). SIGTERM and Ctrl-C stop
    Serve and Ray cleanly; the command says so in one line."""
    from ..cluster.serve_ray import run as serve_on_ray
    from ..serving.server import listen_socket

    if a.port == 0:
        raise UserError("serve --ray: give a --port (Ray Serve's proxy does not take 0)")
    if a.ray_address is None:  # Ray starts here: a busy port fails now, not after start-up
        listen_socket(a.host, a.port).close()
    served = serve_on_ray(a.models, config, replicas=a.replicas, ray_address=a.ray_address,
                          host=a.host, port=a.port, block=True)
    print(f"react serve: {served.stopped_by or 'stopped'}: Ray Serve stopped", file=sys.stderr,
          flush=True)
    return 130 if served.stopped_by == "SIGINT" else 0


@command("loadtest", "Open-loop load test of a server on this machine: throughput, latency "
                     "percentiles, SLO attainment, status counts, variant mix.")
def _loadtest(p: argparse.ArgumentParser):
    p.add_argument("url", help="server URL (loopback only), e.g. http://127.0.0.1:8000 or "
                               "http://127.0.0.1:8000/v1/embeddings")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--concurrency", type=int, default=256, help="most requests in flight")
    p.add_argument("--slo-ms", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat-inputs", action="store_true",
                   help="cycle the same texts, so the server's response cache answers "
                        "repeats (default: every request's text is new, and the figures "
                        "are the model's)")
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from ..serving.config import CLIENT_PACKAGES, require

        require(CLIENT_PACKAGES, "react loadtest")
        from ..serving.loadtest import format_summary, run_loadtest

        s = run_loadtest(a.url, a.rate, a.duration, a.arrivals, a.concurrency, a.slo_ms,
                         seed=a.seed, repeat_inputs=a.repeat_inputs)
        print_json(s) if a.json else print(format_summary(s))
        return 0

    return run
