"""`react loadtest`: an open-loop load generator for a ReAct (or any OpenAI-compatible)
server on this machine. Requests leave at scheduled times (Poisson or constant), so a
slow server cannot slow the arrivals down; latency is measured from the scheduled time.
Bounded in count and time, and loopback only.

Every request carries a text no request has sent before (a tag unique to the run and the
request), so the server's response cache cannot answer it: the figures are the model's,
not the cache's. `repeat_inputs=True` cycles the same texts instead, to measure with the
cache. Either way the summary gives the cache's hits and misses during the run, read from
the server's /metrics (None for a server that does not publish them)."""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import random
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..core.errors import UserError
from ..core.handle import task_names
from ..tasks import get_task

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


async def _payload_for(client: Any, base: str, path: str) -> tuple[str, Any]:
    """The endpoint and model to load: from the server's model list when the URL names no
    endpoint. A URL where nothing answers, or something that is not a ReAct (or OpenAI-
    compatible) server, is the user's to fix: one line, before any load is sent."""
    import httpx

    try:
        r = await client.get(path or "/v1/models")  # any answer proves someone listens
    except httpx.TransportError as e:
        raise UserError(f"loadtest: nothing answers at {base} ({_reason(e)}); start the "
                        "server first (react serve MODEL --port PORT) or check the URL"
                        ) from None
    if path:
        return path, None
    try:
        first = r.json()["data"][0]
        model = str(first["id"])
    except (ValueError, KeyError, IndexError, TypeError):  # not JSON, or not a model list
        raise UserError(f"loadtest: {base}/v1/models answered HTTP {r.status_code} without a "
                        "model list: is this a ReAct server? Otherwise name the endpoint in "
                        f"the URL, e.g. {base}/v1/embeddings") from None
    task = first.get("task")
    generates = task in task_names() and get_task(task).generates
    path = "/v1/completions" if generates else "/v1/embeddings"
    return path, model


def _reason(e: BaseException) -> str:
    """The innermost cause's words: 'Connection refused', not httpx's wrapper."""
    while (inner := e.__cause__ or e.__context__) is not None:
        e = inner
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


async def _cache_counts(client: Any) -> tuple[float, float] | None:
    """(hits, misses) of the server's response cache so far, summed over its models, from
    its Prometheus text; None when it publishes none (not a ReAct server)."""
    import httpx

    try:
        r = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    totals = {"react_cache_hits_total": 0.0, "react_cache_misses_total": 0.0}
    seen = False
    for line in r.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            try:
                totals[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen = True
    if not seen and "# TYPE react_cache_hits_total" not in r.text:
        return None
    return totals["react_cache_hits_total"], totals["react_cache_misses_total"]


def cache_summary(before: tuple[float, float] | None, after: tuple[float, float] | None
                  ) -> dict[str, Any] | None:
    """Hits, misses and hit rate of the cache over the run (items, not requests)."""
    if before is None or after is None:
        return None
    hits, misses = after[0] - before[0], after[1] - before[1]
    total = hits + misses
    return {"hits": int(hits), "misses": int(misses),
            "hit_rate": hits / total if total > 0 else None}


def request_texts(texts: Sequence[str], n: int, repeat_inputs: bool = False) -> list[str]:
    """The text of each of `n` requests: `texts` in turn, each tagged with this run and its
    request number unless `repeat_inputs` (then the same texts come round again, within a
    run and across runs, and the response cache answers the repeats)."""
    if not texts:
        raise UserError("loadtest: no texts to send")
    if repeat_inputs:
        return [texts[i % len(texts)] for i in range(n)]
    run = secrets.token_hex(4)  # a new run never repeats an earlier run's texts either
    return [f"{texts[i % len(texts)]} (#{run}-{i})" for i in range(n)]


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
               headers: dict[str, str] | None, timeout_s: float, repeat_inputs: bool
               ) -> dict[str, Any]:
    import httpx

    from .rawhttp import RawClient

    base, path = check_loopback(url)
    times = arrival_times(rate, duration, arrivals, seed)
    inputs = request_texts(texts, len(times), repeat_inputs)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, headers=headers) as client:
        path, model = await _payload_for(client, base, path)
        cache_before = await _cache_counts(client)
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
            status, hdrs, _ = await raw.post_json(path, _body(path, model, inputs[i]), headers,
                                                  sent_at=sent)
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
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, headers=headers) as client:
        cache_after = await _cache_counts(client)
    out = summarise(records, wall, rate, duration, arrivals, slo_ms, path)
    out["inputs"] = "repeated" if repeat_inputs else "unique"
    out["cache"] = cache_summary(cache_before, cache_after)
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
                 headers: dict[str, str] | None = None, timeout_s: float = 30.0,
                 repeat_inputs: bool = False) -> dict[str, Any]:
    """Send `rate` requests/s for `duration` s to a loopback server; return the summary.
    Each request's text is new to the server unless `repeat_inputs` (module docstring)."""
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
                                   seed, headers, timeout_s, repeat_inputs))
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


def _cache_line(s: dict[str, Any]) -> str:
    inputs = {"unique": "inputs unique per request",
              "repeated": "inputs repeated (--repeat-inputs)"}.get(s.get("inputs", ""), "")
    c = s.get("cache")
    if c is None:
        return f"cache       not reported by the server; {inputs}"
    rate = "-" if c["hit_rate"] is None else f"{c['hit_rate'] * 100:.1f}%"
    return f"cache       {c['hits']} hits, {c['misses']} misses ({rate} hit); {inputs}"


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
    lines.append(_cache_line(s))
    if "slo_ms" in s:
        a, b = s["slo_attainment_admitted"], s["slo_attainment_all"]
        lines.append(f"SLO {s['slo_ms']:g} ms  met by {f(a * 100 if a is not None else None)}% "
                     f"of answered, {f(b * 100 if b is not None else None)}% of sent "
                     f"({s['slo_violations']} late)")
    return "\n".join(lines)
