"""Serving benchmark, measured side by side in one run on loopback with minilm:

1. dynamic batching vs batching off (closed loop at concurrency 2 x max batch; p95 at low load)
2. the reactive ladder (fp32 -> int8 -> 3 layers distilled + int8) under Poisson load at 3x the fp32
   server's measured saturation rate, vs fixed fp32 deployments (same server with one
   variant: with deadline-aware admission, and with a bounded queue only)
3. overload at 10x saturation: 429 latency, server memory, recovery
4. drain under load (SIGTERM): no accepted request lost

Each server is `react serve` in its own process (one at a time); the load generator runs
here. On a machine with cores to spare, --server-cpus / --client-cpus pin the server and
the load generator to separate cores, so the client does not take the server's CPU time
(on a 2-core machine they share both). Section 1 also times the model alone, without a
server, at batch 1 and at max batch on the server's cores: the most batching can gain.
The cheaper variants are made with ReAct's compression transforms (see build_variants);
their quality is measured with reactinfer.measure against minilm and
stored in the artifact manifests.

    PYTHONPATH=src python benchmarks/serve_bench.py            # ~5 minutes
    # a bare machine: minilm from a directory (see gpu.py --make-carry), server on 2 cores
    CUDA_VISIBLE_DEVICES= PYTHONPATH=src python benchmarks/serve_bench.py --minilm DIR \
        --server-cpus 0,1 --client-cpus 2-5 --stem serve_pinned
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from _common import ROOT, hardware, serving, write_results

import reactinfer as ri
from reactinfer.core.artifact import Artifact
from reactinfer.data import texts_for
from reactinfer.serving.loadtest import run_loadtest

SERVER_CPUS: set[int] | None = None  # --server-cpus: the server processes' affinity
THREADS = 1  # --threads: the servers' torch threads


def cpu_list(spec: str | None) -> set[int] | None:
    """'0,1' or '2-5' or '0,2-3' as a set of CPU numbers."""
    if not spec:
        return None
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def short_texts(n: int = 400) -> list[str]:
    """Query-sized texts: the first line (at most 120 characters) of held-out docstrings."""
    out = [t.strip().splitlines()[0][:120] for t in texts_for("eval", limit=n)]
    return [t for t in out if t.strip()]


LADDER = ("fp32", "int8", "3l-int8")  # best quality first


def build_variants(work: Path, n_eval: int, minilm: str | None = None) -> dict[str, Any]:
    """The ladder, made with ReAct's own transforms: the original; dynamic int8
    (per-channel); half the layers recovered by a short distillation, then int8.
    Quality is measured against minilm and stored in each manifest (the server's
    effective-quality metric reads it)."""
    from gpu import load_minilm

    from reactinfer.compression import Distill, DropLayers, QuantizeDynamicInt8

    base, _ = load_minilm(minilm)
    out = {"fp32": {"path": str(work / "minilm-fp32"), "quality": {"mean_cosine": 1.0}}}
    Artifact.save(base, work / "minilm-fp32")
    recipes: dict[str, list[Any]] = {
        "int8": [QuantizeDynamicInt8(per_channel=True)],
        "3l-int8": [DropLayers(keep=0.5), Distill(steps=400, time_budget_s=120, progress=False),
                    QuantizeDynamicInt8(per_channel=True)]}
    for name, recipe in recipes.items():
        h = ri.compress(base, recipe)
        report = ri.bench(h, n_eval=n_eval, latency_runs=3, progress=False, reference=base)
        metrics = {"quality": report["quality"], "quality_drop": report["quality_drop"]}
        path = work / f"minilm-{name}"
        Artifact.save(h, path, metrics=metrics)
        out[name] = {"path": str(path), "recipe": [c.to_dict() for c in recipe],
                     "quality": report["quality"]}
    return out


@contextlib.contextmanager
def server(models: list[str], *flags: str, src: Path = ROOT / "src"
           ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`react serve` of `models` from the package in `src`, until the block ends."""
    cpus = SERVER_CPUS
    with serving([sys.executable, "-m", "reactinfer", "serve", *models, "--threads",
                  str(THREADS), "--cache-size", "0", *flags], "/v2/health/ready",
                 dict(os.environ, PYTHONPATH=str(src)), timeout_s=120,
                 preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None) as up:
        yield up


def metric(base: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            if line[len(name)] in "{ ":
                total += float(line.rsplit(" ", 1)[1])
    return total


def closed_loop(base: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    """`concurrency` clients, each sending its next text when its last one returns."""
    return closed_loop_bodies(base, "/v1/embeddings", [{"input": t} for t in texts],
                              concurrency, seconds, {"X-Deadline-Ms": "600000"})


def closed_loop_bodies(base: str, path: str, bodies: list[dict], concurrency: int,
                       seconds: float, headers: dict[str, str] | None = None) -> dict:
    """`concurrency` clients POSTing `bodies` (round robin) to `path`, each sending its
    next request when its last one returns: requests/s and latency percentiles."""
    from urllib.parse import urlsplit

    from reactinfer.serving.rawhttp import RawClient

    async def go() -> tuple[list[float], int, float]:
        parts = urlsplit(base)
        client = RawClient(str(parts.hostname), int(parts.port or 80), concurrency,
                           timeout_s=120)
        lat: list[float] = []
        errors = 0
        end = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                status, _, _ = await client.post_json(path, bodies[i % len(bodies)], headers)
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
        await client.close()
        return lat, errors, wall

    lat, errors, wall = asyncio.run(go())
    ms = np.asarray(lat) * 1e3
    return {"ok": len(lat), "errors": errors, "seconds": wall, "items_per_s": len(lat) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def model_ceiling(path: str, texts: list[str], max_batch: int, seconds: float,
                  device: str = "auto") -> dict:
    """The model alone, as the server runs it (its torch threads, on the server's cores):
    items/s at batch 1 and at `max_batch`, texts drawn at random. Their ratio is the most
    a server's batching can gain on this machine."""
    import random

    import torch

    from reactinfer.backends import to_backend
    from reactinfer.tasks import tokenize

    h = to_backend(ri.load(path), "torch", device=device)
    runner = h.runner()
    mine, threads = os.sched_getaffinity(0), torch.get_num_threads()
    if SERVER_CPUS:
        os.sched_setaffinity(0, SERVER_CPUS)
    torch.set_num_threads(THREADS)
    rng, out = random.Random(0), {}
    try:
        for n in (1, max_batch):
            runner(tokenize(h.tokenizer, rng.sample(texts, n), h.max_length))  # warm-up
            items, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                runner(tokenize(h.tokenizer, rng.sample(texts, n), h.max_length))
                items += n
            out[f"items_per_s@{n}"] = items / (time.perf_counter() - t0)
    finally:
        os.sched_setaffinity(0, mine)
        torch.set_num_threads(threads)
    out["ratio"] = out[f"items_per_s@{max_batch}"] / out["items_per_s@1"]
    return out


def batching(variants: dict, texts: list[str], a: argparse.Namespace) -> dict:
    """Same server, batching on then off: closed-loop throughput at 2 x max batch clients,
    then p95 under a light Poisson load (a quarter of the batched throughput); and the
    model's own batching gain without a server (model_ceiling)."""
    fp32 = [variants["fp32"]["path"]]
    common = ["--slo-ms", "600000", "--max-queue", "4096"]
    res: dict[str, Any] = {}
    low_rate = None
    for name, flags in (("on", ["--max-batch", str(a.max_batch), "--max-delay-ms", "5"]),
                        ("off", ["--max-batch", "1", "--max-delay-ms", "0"])):
        with server(fp32, *common, *flags) as (base, _):
            closed_loop(base, texts, 4, 1.0)  # warm the connections and the model
            res[name] = {"closed_loop": closed_loop(base, texts, 2 * a.max_batch, a.duration)}
            if low_rate is None:
                low_rate = 0.25 * res[name]["closed_loop"]["items_per_s"]
            res[name]["low_load"] = run_loadtest(base + "/v1/embeddings", low_rate, a.duration,
                                                 texts=texts, seed=1, repeat_inputs=True)
    res["model_alone"] = model_ceiling(fp32[0], texts, a.max_batch, a.duration / 2,
                                       getattr(a, "device", "auto"))
    on, off = res["on"], res["off"]
    res["throughput_ratio"] = on["closed_loop"]["items_per_s"] / off["closed_loop"]["items_per_s"]
    res["low_load_rate"] = low_rate
    res["low_load_p95_ratio"] = on["low_load"]["latency_ms"]["p95"] / \
        off["low_load"]["latency_ms"]["p95"]
    return res


def _quality(base: str) -> dict[str, float]:
    return {"effective_quality": metric(base, "react_effective_quality"),
            "ontime_quality": metric(base, "react_ontime_quality"),
            "steps_down": metric(base, "react_variant_switches_total", direction="down"),
            "steps_up": metric(base, "react_variant_switches_total", direction="up"),
            "server_answered": metric(base, "react_variant_requests_total"),
            "server_late": metric(base, "react_slo_violations_total")}


def ladder(variants: dict, texts: list[str], sat: float, a: argparse.Namespace) -> dict:
    flags = ["--slo-ms", str(a.slo_ms), "--max-batch", str(a.max_batch)]
    rate = 3 * sat
    runs: dict[str, Any] = {}
    paths = [variants[k]["path"] for k in LADDER]
    setups = {"ladder": (paths, []), "fixed_fp32": (paths[:1], []),
              "fixed_fp32_queue_only": (paths[:1], ["--no-deadline-admission"])}
    for name, (models, extra) in setups.items():
        with server(models, *flags, *extra) as (base, _):
            s = run_loadtest(base + "/v1/embeddings", rate, a.duration, slo_ms=a.slo_ms,
                             texts=texts, seed=2, repeat_inputs=True)
            s.update(_quality(base))
            runs[name] = s
    lad, fixed = runs["ladder"], runs["fixed_fp32"]
    runs["rate"] = rate
    runs["violation_ratio_vs_fixed"] = {
        k: runs[k]["slo_violations"] / max(lad["slo_violations"], 1)
        for k in ("fixed_fp32", "fixed_fp32_queue_only")}
    runs["goodput_ratio_vs_fixed"] = (lad["slo_attainment_all"] or 0) / \
        max(fixed["slo_attainment_all"] or 0, 1e-9)
    return runs


def overload(variants: dict, texts: list[str], sat: float, a: argparse.Namespace) -> dict:
    paths = [variants[k]["path"] for k in LADDER]
    with server(paths, "--slo-ms", str(a.slo_ms), "--max-batch", str(a.max_batch)) as (base, proc):
        p = psutil.Process(proc.pid)
        rss_before = p.memory_info().rss
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(psutil.Error):
                    samples.append(p.memory_info().rss)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        over = run_loadtest(base + "/v1/embeddings", 10 * sat, a.overload_s, slo_ms=a.slo_ms,
                            texts=texts, seed=3, repeat_inputs=True)
        stop.set()
        sampler.join()
        time.sleep(1.0)
        recovery = run_loadtest(base + "/v1/embeddings", 0.3 * sat, a.duration / 2,
                                slo_ms=a.slo_ms, texts=texts, seed=4, repeat_inputs=True)
        return {"rate": 10 * sat, "overload": over, "recovery": recovery,
                "achieved_send_rate": over["sent"] / over["wall_s"],
                "rss_mb": {"before": rss_before / 2**20, "peak": max(samples) / 2**20,
                           "after": p.memory_info().rss / 2**20}}


def drain(variants: dict, texts: list[str], sat: float, a: argparse.Namespace) -> dict:
    paths = [variants[k]["path"] for k in LADDER]
    with server(paths, "--slo-ms", str(a.slo_ms), "--max-batch", str(a.max_batch)) as (base, proc):
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(run_loadtest(
            base + "/v1/embeddings", sat, a.duration, slo_ms=a.slo_ms, texts=texts, seed=5,
            timeout_s=60, repeat_inputs=True)))
        t.start()
        time.sleep(a.duration / 2)
        proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        rc = proc.wait(120)
        exit_s = time.perf_counter() - t0
        t.join()
        assert proc.stderr is not None  # serving() pipes it when given no log
        closing = [ln for ln in proc.stderr.read().decode().splitlines() if "drained;" in ln]
    errors = result.get("client_errors", {})
    # ConnectError: refused (listener closed). ClosedBeforeResponse: a keep-alive connection
    # closed before the server read the request, and the retry on a new connection did not
    # get in either. Anything else (a reset or timeout mid-request) is an accepted request lost.
    not_taken = ("ConnectError", "ClosedBeforeResponse")
    lost = sum(v for k, v in errors.items() if k not in not_taken)
    # the server's own count: requests past its drain gate, and those it answered
    taken, answered = (int(x) for x in re.findall(r"(\d+) requests taken, (\d+) answered",
                                                  closing[-1])[0]) if closing else (None, None)
    got = sum(v for k, v in result.get("status_counts", {}).items() if k in ("200", "429"))
    return {"rate": sat, "load": result, "exit_code": rc, "drain_seconds": exit_s,
            "server_taken": taken, "server_answered": answered, "client_got_200_or_429": got,
            "refused_after_listener_closed": errors.get("ConnectError", 0),
            "closed_before_read": errors.get("ClosedBeforeResponse", 0),
            "accepted_lost": lost}


def _cosine(q: Any) -> float:
    return q if isinstance(q, float) else q["mean_cosine"]


def markdown(r: dict) -> str:
    b, lad, o, d = r["batching"], r["ladder"], r["overload"], r["drain"]

    def f(x: Any, nd: int = 1) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    on, off, alone = b["on"], b["off"], b.get("model_alone")
    args = r["args"]
    pinned = (f"the servers pinned to CPUs {args['server_cpus']} and the load generator to "
              f"CPUs {args['client_cpus']}" if args.get("server_cpus") else
              "the load generator shares the server's cores")
    lines = [
        "# Serving benchmark (minilm, loopback)", "",
        f"Command: `{r.get('command', '')}`. Host: {r['hardware'].get('cpu_model')} "
        f"({r['hardware'].get('cores_logical')} threads; timings vary between runs: ratios "
        f"taken in this one run are what matter), {pinned}. Server: `react serve`, "
        f"{args.get('threads', 1)} torch thread(s), max batch {args['max_batch']}, cache off. "
        "Texts: first line (<=120 chars) of held-out docstrings.", "",
        "## 1. Dynamic batching", "",
        "| | batching on | batching off | ratio |", "|---|---|---|---|",
        f"| throughput, {2 * r['args']['max_batch']} closed-loop clients (items/s) | "
        f"{f(on['closed_loop']['items_per_s'])} | {f(off['closed_loop']['items_per_s'])} | "
        f"{f(b['throughput_ratio'], 2)}x |",
        *([f"| the model alone, no server (items/s at batch {args['max_batch']} / batch 1): "
           "the most batching can gain here | "
           f"{f(alone['items_per_s@' + str(args['max_batch'])])} | "
           f"{f(alone['items_per_s@1'])} | {f(alone['ratio'], 2)}x |"] if alone else []),
        f"| p95 at low load ({f(b['low_load_rate'])} req/s Poisson), ms | "
        f"{f(on['low_load']['latency_ms']['p95'])} | {f(off['low_load']['latency_ms']['p95'])}"
        f" | {f(b['low_load_p95_ratio'], 2)}x |", "",
        f"## 2. Reactive ladder at 3x fp32 saturation ({f(lad['rate'])} req/s Poisson, "
        f"SLO {r['args']['slo_ms']:g} ms)", "",
        "| deployment | sent | 200 | 429 | SLO met (answered) | SLO met (all sent) | late "
        "(client) | late (server) | effective quality | variant mix | client send lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("ladder", "fixed_fp32", "fixed_fp32_queue_only"):
        s = lad[name]
        sa, sb = (None if x is None else 100 * x
                  for x in (s["slo_attainment_admitted"], s["slo_attainment_all"]))
        lines.append(f"| {name} | {s['sent']} | {s['status_counts'].get('200', 0)} | "
                     f"{s['status_counts'].get('429', 0)} | {f(sa)}% | "
                     f"{f(sb)}% | {s['slo_violations']} | {s['server_late']:.0f} | "
                     f"{f(s['effective_quality'], 3)} | "
                     f"{', '.join(f'{k}: {v}' for k, v in s['variant_mix'].items())} | "
                     f"{f((s.get('send_lag_ms') or {}).get('p99'))} |")
    late = {k: lad[k]["slo_violations"] for k in ("ladder", "fixed_fp32", "fixed_fp32_queue_only")}

    def ratio(k: str) -> str:
        return f"{late[k] / late['ladder']:.1f}x" if late["ladder"] else \
            f"{late[k]} vs 0 (no finite ratio)"

    lines += ["", f"Late answers, fixed / ladder: {ratio('fixed_fp32')} (fixed with deadline "
              f"admission), {ratio('fixed_fp32_queue_only')} (fixed, queue bound only). "
              f"On-time answers, ladder / fixed with admission: "
              f"{f(lad['goodput_ratio_vs_fixed'], 2)}x. "
              "Variant quality (mean cosine to minilm): " + ", ".join(
                  f"{k} {f(_cosine(v['quality']), 3)}" for k, v in r["variants"].items())
              + ".", "",
              f"## 3. Overload at 10x saturation ({f(o['rate'])} req/s asked, "
              f"{f(o['achieved_send_rate'])} req/s sent by the client)", "",
              f"- 429 latency (client-side, from scheduled send): p50 "
              f"{f(o['overload']['shed_latency_ms']['p50'])} ms, p99 "
              f"{f(o['overload']['shed_latency_ms']['p99'])} ms; statuses "
              f"{o['overload']['status_counts']}",
              f"- 429 round trip (from the moment the request was written): p50 "
              f"{f(o['overload']['shed_round_trip_ms']['p50'])} ms, p99 "
              f"{f(o['overload']['shed_round_trip_ms']['p99'])} ms, max "
              f"{f(o['overload']['shed_round_trip_ms']['max'])} ms",
              f"- client send lag p99 {f((o['overload'].get('send_lag_ms') or {}).get('p99'))} ms"
              f"; answered {o['overload']['status_counts'].get('200', 0)}, late (client) "
              f"{o['overload']['slo_violations']}",
              f"- server RSS: before {f(o['rss_mb']['before'])} MB, peak "
              f"{f(o['rss_mb']['peak'])} MB, after {f(o['rss_mb']['after'])} MB",
              f"- recovery at 0.3x saturation right after: statuses "
              f"{o['recovery']['status_counts']}, p95 "
              f"{f(o['recovery']['latency_ms']['p95'])} ms", "",
              "## 4. Drain under load (SIGTERM half-way)", "",
              f"- statuses {d['load'].get('status_counts')}, accepted requests lost: "
              f"**{d['accepted_lost']}**, refused after the listener closed: "
              f"{d['refused_after_listener_closed']}, closed before being read: "
              f"{d['closed_before_read']}, exit code {d['exit_code']}, drain took "
              f"{f(d['drain_seconds'], 2)} s",
              f"- the server's closing line: {d.get('server_taken')} requests taken past the "
              f"drain gate, {d.get('server_answered')} answered; the client received "
              f"{d.get('client_got_200_or_429')} answers (200 or 429)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--overload-s", type=float, default=3.0)
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default=None,
                    help="keep the variants here and reuse them on the next run")
    ap.add_argument("--only", default=None,
                    help="comma-separated sections to run (ladder,overload,drain need "
                         "--saturation); prints JSON and writes no results")
    ap.add_argument("--saturation", type=float, default=None,
                    help="fp32 saturation rate (req/s) for --only without batching")
    ap.add_argument("--minilm", default=None,
                    help="minilm from this directory (default: the built-in package)")
    ap.add_argument("--server-cpus", default=None, help="pin the servers here, e.g. 0,1")
    ap.add_argument("--client-cpus", default=None, help="pin the load generator here, e.g. 2-5")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server")
    ap.add_argument("--stem", default="serve", help="results file name: STEM.md, STEM.json")
    a = ap.parse_args()
    global SERVER_CPUS, THREADS
    SERVER_CPUS, THREADS = cpu_list(a.server_cpus), a.threads
    texts = short_texts()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="react-serve-bench-") as tmp:
        work = Path(a.work or tmp)
        cached = work / "variants.json"
        if a.work and cached.exists():
            variants = json.loads(cached.read_text())
        else:
            variants = build_variants(work, a.n_eval, a.minilm)
            cached.write_text(json.dumps(variants, default=str))
        print("variants ready", round(time.time() - t0), "s", flush=True)
        client_cpus = cpu_list(a.client_cpus)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        r: dict[str, Any] = {"args": vars(a), "variants": variants}
        sections: dict[str, Callable[..., dict]] = {
            "ladder": ladder, "overload": overload, "drain": drain}
        for name in (a.only.split(",") if a.only else ["batching", *sections]):
            if name == "batching":
                r["batching"] = batching(variants, texts, a)
                r["saturation_rate_fp32"] = r["batching"]["on"]["closed_loop"]["items_per_s"]
            else:
                sat = r.get("saturation_rate_fp32") or a.saturation
                if sat is None:
                    raise SystemExit(f"--only {name} needs --saturation or batching first")
                r[name] = sections[name](variants, texts, sat, a)
            print(name, "done", round(time.time() - t0), "s", flush=True)
    if a.only:
        print(json.dumps({k: r[k] for k in a.only.split(",")}, indent=1, default=str))
        return
    r["command"] = "PYTHONPATH=src python benchmarks/serve_bench.py " + " ".join(sys.argv[1:])
    r.update(hardware())
    r["wall_s"] = time.time() - t0
    write_results(Path(a.out) / a.stem, r, markdown(r) + "\n")


if __name__ == "__main__":
    main()
