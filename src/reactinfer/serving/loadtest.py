"""`react loadtest`: an open-loop load generator for a ReAct (or any OpenAI-compatible)
server on this machine. Requests leave at scheduled times (Poisson or constant), so a
slow server cannot slow the arrivals down; latency is measured from the scheduled time.
Bounded in count and time, and loopback only."""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..core.errors import UserError

MAX_REQUESTS = 200_000
MAX_DURATION_S = 3600.0
ARRIVALS = ("poisson", "constant")


def check_loopback(url: str) -> tuple[str, str]:
    """(base URL, path); refuses any host that is not this machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"loadtest: {url!r} is not an http URL; e.g. http://127.0.0.1:8000")
    host = parts.hostname
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop:
        raise UserError(f"loadtest: {host} is not a loopback address; load tests run only "
                        "against this machine (127.0.0.1, ::1 or localhost)")
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


def arrival_times(rate: float, duration: float, arrivals: str, seed: int = 0) -> list[float]:
    if arrivals not in ARRIVALS:
        raise UserError(f"loadtest: arrivals must be one of {', '.join(ARRIVALS)}")
    if not rate > 0 or not duration > 0:
        raise UserError("loadtest: --rate and --duration must be positive")
    if duration > MAX_DURATION_S or rate * duration > MAX_REQUESTS:
        raise UserError(f"loadtest: at most {MAX_REQUESTS} requests and {MAX_DURATION_S:.0f} s "
                        "per run; lower --rate or --duration")
    if arrivals == "constant":
        return list(np.arange(0.0, duration, 1.0 / rate))
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def _payload_for(client: Any, path: str) -> tuple[str, Any]:
    """Pick the endpoint and a payload builder from the server's models when no path is
    given; otherwise build the payload the path expects."""
    if not path:
        models = (await client.get("/v1/models")).json()["data"]
        first = models[0]
        path = "/v1/completions" if first.get("task") == "causal-lm" else "/v1/embeddings"
        model = first["id"]
    else:
        model = None
    return path, model


def _body(path: str, model: str | None, text: str) -> dict[str, Any]:
    if path.endswith("/infer"):
        return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    body: dict[str, Any] = {"model": model} if model else {}
    if path.endswith("/chat/completions"):
        return body | {"messages": [{"role": "user", "content": text}], "max_tokens": 8}
    if path.endswith("/completions"):
        return body | {"prompt": text, "max_tokens": 8}
    return body | {"input": text}


async def _run(url: str, rate: float, duration: float, arrivals: str, concurrency: int,
               slo_ms: float | None, texts: Sequence[str], seed: int,
               headers: dict[str, str] | None, timeout_s: float) -> dict[str, Any]:
    import httpx

    from .rawhttp import RawClient

    base, path = check_loopback(url)
    times = arrival_times(rate, duration, arrivals, seed)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s) as client:
        path, model = await _payload_for(client, path)
    parts = urlsplit(base)
    raw = RawClient(parts.hostname or "127.0.0.1", parts.port or 80, concurrency, timeout_s)
    records: list[tuple[int, float, str]] = []  # (status, latency s, variant or error)
    lags: list[float] = []
    shed_rtt: list[float] = []  # 429s timed from when they were written, not from schedule
    t0 = time.perf_counter() + 0.05

    async def one(i: int, at: float) -> None:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - (t0 + at)))
        sent: list[float] = []
        try:
            status, hdrs, _ = await raw.post_json(path, _body(path, model, texts[i % len(texts)]),
                                                  headers, sent_at=sent)
            variant = hdrs.get("x-react-variant", "")
        except Exception as e:  # noqa: BLE001  (every failure is counted by kind)
            status, variant = 0, _error_name(e)
        end = time.perf_counter()
        records.append((status, end - (t0 + at), variant))
        if status == 429 and sent:
            shed_rtt.append(end - sent[-1])

    await asyncio.gather(*(one(i, at) for i, at in enumerate(times)))
    wall = time.perf_counter() - t0
    await raw.close()
    out = summarise(records, wall, rate, duration, arrivals, slo_ms, path)
    lag_ms = np.asarray(lags) * 1e3
    # how far behind schedule the client itself sent: large values mean the client, not
    # the server, limited the load
    out["send_lag_ms"] = {"p50": float(np.percentile(lag_ms, 50)),
                          "p99": float(np.percentile(lag_ms, 99))} if len(lags) else None
    out["shed_round_trip_ms"] = _pct(shed_rtt)
    return out


def _error_name(e: BaseException) -> str:
    """ConnectError: refused before being taken (e.g. the listener closed); ReadError: the
    connection broke while a request was in flight (a lost request)."""
    from .rawhttp import ClosedBeforeResponse

    if isinstance(e, ConnectionRefusedError):
        return "ConnectError"
    if isinstance(e, ClosedBeforeResponse):
        return "ClosedBeforeResponse"
    if isinstance(e, asyncio.TimeoutError):
        return "Timeout"
    if isinstance(e, (ConnectionError, asyncio.IncompleteReadError)):
        return "ReadError"
    return type(e).__name__


def _pct(xs: Sequence[float]) -> dict[str, float | None]:
    """Percentiles in milliseconds of durations in seconds."""
    if not xs:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = np.asarray(xs) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def summarise(records: Sequence[tuple[int, float, str]], wall: float, rate: float,
              duration: float, arrivals: str, slo_ms: float | None, path: str
              ) -> dict[str, Any]:
    ok = [lat for s, lat, _ in records if s == 200]
    shed = [lat for s, lat, _ in records if s == 429]

    out: dict[str, Any] = {
        "endpoint": path, "arrivals": arrivals, "rate": rate, "duration_s": duration,
        "sent": len(records), "ok": len(ok), "wall_s": wall,
        "throughput_ok_per_s": len(ok) / wall if wall > 0 else 0.0,
        "latency_ms": _pct(ok), "shed_latency_ms": _pct(shed),
        "status_counts": dict(sorted(Counter(str(s) for s, _, _ in records).items())),
        "variant_mix": dict(Counter(v for s, _, v in records if s == 200 and v)),
        "client_errors": dict(Counter(v for s, _, v in records if s == 0)),
    }
    if slo_ms is not None:
        met = sum(1 for lat in ok if lat * 1e3 <= slo_ms)
        out["slo_ms"] = slo_ms
        out["slo_violations"] = len(ok) - met
        out["slo_attainment_admitted"] = met / len(ok) if ok else None
        out["slo_attainment_all"] = met / len(records) if records else None
    return out


def run_loadtest(url: str, rate: float, duration: float, arrivals: str = "poisson",
                 concurrency: int = 256, slo_ms: float | None = None,
                 texts: Sequence[str] | None = None, seed: int = 0,
                 headers: dict[str, str] | None = None, timeout_s: float = 30.0
                 ) -> dict[str, Any]:
    """Send `rate` requests/s for `duration` s to a loopback server; return the summary."""
    if concurrency < 1:
        raise UserError("loadtest: --concurrency must be at least 1")
    if texts is None:
        from ..data import texts_for

        texts = texts_for("eval", limit=1000)
    # A full collection over the caller's heap (torch, a model loaded before) stalls the
    # client's loop for 100 ms or more: it would measure its own pauses as server latency.
    # None run while the test lasts (young objects are still collected). Not gc.freeze():
    # its undo, gc.unfreeze(), would also thaw what the caller froze (an in-process server).
    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(threshold[0], threshold[1], 1 << 30)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(url, rate, duration, arrivals, concurrency, slo_ms, texts,
                                   seed, headers, timeout_s))
    finally:
        gc.set_threshold(*threshold)


def _loop_factory() -> Any:
    """uvloop when it is installed (it comes with uvicorn[standard]): the load generator
    must spend as little CPU per request as it can, or it measures itself."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def format_summary(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    lines = [f"{s['endpoint']}: {s['sent']} sent ({s['arrivals']}, {s['rate']:g}/s for "
             f"{s['duration_s']:g} s), {s['ok']} ok, {s['throughput_ok_per_s']:.1f} ok/s",
             f"latency ms  p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  p99 {f(lat['p99'])}  "
             f"max {f(lat['max'])}",
             "status      " + ", ".join(f"{k}: {v}" for k, v in s["status_counts"].items())]
    if s["variant_mix"]:
        lines.append("variants    " + ", ".join(f"{k}: {v}" for k, v in s["variant_mix"].items()))
    if "slo_ms" in s:
        a, b = s["slo_attainment_admitted"], s["slo_attainment_all"]
        lines.append(f"SLO {s['slo_ms']:g} ms  met by {f(a * 100 if a is not None else None)}% "
                     f"of answered, {f(b * 100 if b is not None else None)}% of sent "
                     f"({s['slo_violations']} late)")
    return "\n".join(lines)
