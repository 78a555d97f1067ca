"""Served at engine speed? One artifact measured three ways, side by side, in alternating
rounds (the machine drifts; only same-run ratios count):

- in-process: the artifact's own runner, batch 32 (texts sorted by length, as `react
  bench` does, and in arrival order, as a server gets them) and batch-1 p50 (tokenizing
  included);
- served: `react serve ARTIFACT` (default settings, cache off) on loopback, called by
  --concurrency closed-loop clients of --per-request texts each, OpenAI `/v1/embeddings`
  with float and base64 vectors; and one text at a time for the batch-1 p50 over HTTP;
- sentence-transformers' own `encode` in-process (benchmarks/anchor_st.py), batch 32
  and single-text p50: the anchor.

Writes benchmarks/results/serve_engine.{json,md} with the hardware profile.

    PYTHONPATH=src python benchmarks/serve_engine.py                  # ~5 min on 2 cores
    PYTHONPATH=src python benchmarks/serve_engine.py --artifact DIR --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import ROOT, hardware, write_results
from anchor_st import run_st_anchor
from serve_bench import server, short_texts

import reactinfer as ri
from reactinfer.serving.rawhttp import RawClient
from reactinfer.tasks import iter_batches, tokenize


def make_artifact(path: Path) -> Path:
    """minilm on ONNX Runtime fp32: what `react optimize minilm --max-drop 0.01` kept."""
    if not (path / "manifest.json").exists():
        from reactinfer.backends import to_backend
        from reactinfer.core.artifact import Artifact

        Artifact.save(to_backend(ri.load("minilm"), "onnxruntime"), path)
    return path


def in_process(handle: Any, texts: list[str], batch: int, latency_runs: int) -> dict[str, float]:
    runner = handle.runner()
    for _, b in iter_batches(handle.tokenizer, texts[:2 * batch], batch, handle.max_length):
        runner(b)  # warm-up
    t0 = time.perf_counter()
    for _, b in iter_batches(handle.tokenizer, texts, batch, handle.max_length):
        runner(b)
    by_length = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch):
        runner(tokenize(handle.tokenizer, texts[s:s + batch], handle.max_length))
    arrival = len(texts) / (time.perf_counter() - t0)
    lat = []
    for i in range(latency_runs):
        t0 = time.perf_counter()
        runner(tokenize(handle.tokenizer, [texts[i % len(texts)]], handle.max_length))
        lat.append(time.perf_counter() - t0)
    return {"items_per_s_sorted": by_length, "items_per_s_arrival": arrival,
            "p50_ms": 1e3 * statistics.median(lat)}


def served(base: str, texts: list[str], concurrency: int, per_request: int,
           latency_runs: int) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, each sending its next `per_request` texts when
    its last answer is in, until every text was sent once; then one text at a time."""
    parts = urlsplit(base)

    async def closed_loop(fmt: str) -> dict[str, Any]:
        client = RawClient(parts.hostname or "127.0.0.1", parts.port or 80, concurrency,
                           timeout_s=600)
        chunks = [texts[i:i + per_request] for i in range(0, len(texts), per_request)]
        codes: dict[int, int] = {}
        nxt = 0

        async def worker() -> None:
            nonlocal nxt
            while nxt < len(chunks):
                chunk, nxt = chunks[nxt], nxt + 1
                status, _, _ = await client.post_json(
                    "/v1/embeddings", {"input": chunk, "encoding_format": fmt})
                codes[status] = codes.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        await client.close()
        return {"items_per_s": len(texts) / wall, "status": codes}

    async def one_at_a_time() -> float:
        client = RawClient(parts.hostname or "127.0.0.1", parts.port or 80, 1, timeout_s=60)
        lat = []
        for i in range(latency_runs + 3):
            t0 = time.perf_counter()
            await client.post_json("/v1/embeddings", {"input": texts[i % len(texts)],
                                                      "encoding_format": "base64"})
            lat.append(time.perf_counter() - t0)
        await client.close()
        return 1e3 * statistics.median(lat[3:])

    return {"float": asyncio.run(closed_loop("float")),
            "base64": asyncio.run(closed_loop("base64")),
            "p50_ms": asyncio.run(one_at_a_time())}


def median_of(rounds: list[dict[str, Any]], *path: str) -> float:
    vals = []
    for r in rounds:
        for p in path:
            r = r[p]
        vals.append(float(r))  # type: ignore[arg-type]
    return statistics.median(vals)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, path in {"inproc_sorted": ("inproc", "items_per_s_sorted"),
                      "inproc_arrival": ("inproc", "items_per_s_arrival"),
                      "inproc_p50_ms": ("inproc", "p50_ms"),
                      "served_float": ("served", "float", "items_per_s"),
                      "served_base64": ("served", "base64", "items_per_s"),
                      "served_p50_ms": ("served", "p50_ms"),
                      "st_items_per_s": ("st", "items_per_s"),
                      "st_p50_ms": ("st", "latency_ms", "p50")}.items():
        if all("error" not in r.get(path[0], {}) for r in rounds):
            out[key] = median_of(rounds, *path)
    # ratios within each round, then their median: the machine drifts between rounds
    for name, num, den in (("float_vs_inproc_sorted", ("served", "float", "items_per_s"),
                            ("inproc", "items_per_s_sorted")),
                           ("base64_vs_inproc_sorted", ("served", "base64", "items_per_s"),
                            ("inproc", "items_per_s_sorted")),
                           ("base64_vs_inproc_arrival", ("served", "base64", "items_per_s"),
                            ("inproc", "items_per_s_arrival")),
                           ("http_p50_vs_st_p50", ("served", "p50_ms"),
                            ("st", "latency_ms", "p50")),
                           ("float_vs_st", ("served", "float", "items_per_s"),
                            ("st", "items_per_s")),
                           ("base64_vs_st", ("served", "base64", "items_per_s"),
                            ("st", "items_per_s"))):
        if all("error" not in r.get(den[0], {}) for r in rounds):
            ratios = [median_of([r], *num) / median_of([r], *den) for r in rounds]
            out[name] = statistics.median(ratios)
    return out


def markdown(result: dict[str, Any]) -> str:
    s, hw = result["summary"], result["hardware"]
    a = result["args"]

    def f(key: str, nd: int = 1) -> str:
        return f"{s[key]:.{nd}f}" if key in s else "n/a"

    return "\n".join([
        f"# Served at engine speed ({result.get('engine', 'minilm, ONNX Runtime fp32')})", "",
        f"CPU: {hw.get('cpu_model', '?')}, {hw.get('cores_physical', '?')} cores, "
        f"{','.join(k for k, v in hw.get('isa', {}).items() if v) or '?'}. "
        f"{a['rounds']} alternating rounds, "
        f"{a['n']} query-sized texts; medians. The load generator shares the server's cores; "
        f"{result['note']}", "",
        "| measure | in-process | served (HTTP) | sentence-transformers |",
        "|---|---|---|---|",
        f"| texts/s, batch {a['batch']}, sorted by length | {f('inproc_sorted')} | | "
        f"{f('st_items_per_s')} |",
        f"| texts/s, batch {a['batch']}, arrival order | {f('inproc_arrival')} | | |",
        f"| texts/s, {a['concurrency']} clients x {a['per_request']} texts, float | | "
        f"{f('served_float')} | |",
        f"| texts/s, {a['concurrency']} clients x {a['per_request']} texts, base64 | | "
        f"{f('served_base64')} | |",
        f"| batch-1 p50 ms | {f('inproc_p50_ms', 2)} | {f('served_p50_ms', 2)} | "
        f"{f('st_p50_ms', 2)} |", "",
        "Ratios (per round, then the median):", "",
        f"- served float / in-process sorted: **{f('float_vs_inproc_sorted', 2)}** "
        "(target at least 0.8)",
        f"- served base64 / in-process sorted: **{f('base64_vs_inproc_sorted', 2)}**",
        f"- served base64 / in-process arrival order: {f('base64_vs_inproc_arrival', 2)}",
        f"- batch-1 p50 over HTTP / sentence-transformers' single-text p50: "
        f"**{f('http_p50_vs_st_p50', 2)}** (target at most 1)",
        f"- served float / sentence-transformers' torch encode in-process: "
        f"**×{f('float_vs_st', 2)}**",
        f"- served base64 / sentence-transformers' torch encode in-process: "
        f"**×{f('base64_vs_st', 2)}**", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=None,
                    help="an embedding artifact (default: minilm on ONNX Runtime fp32, made "
                         "in --work)")
    ap.add_argument("--work", default="/tmp/react-serve-engine")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=512, help="texts per measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--per-request", type=int, default=8)
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    ap.add_argument("--note", default="the CPU was shared with other work while this ran.")
    ap.add_argument("--stem", default="serve_engine")
    ap.add_argument("--render", action="store_true",
                    help="recompute the summary and the table from results/STEM.json; measure "
                         "nothing")
    a = ap.parse_args()
    out = ROOT / "benchmarks" / "results"
    if a.render:
        result = json.loads((out / f"{a.stem}.json").read_text())
        result["summary"] = summarise(result["rounds"])
        write_results(out / a.stem, result, markdown(result), indent=1)
        return

    from reactinfer.models.zoo import BUILTINS

    artifact = Path(a.artifact) if a.artifact else make_artifact(Path(a.work) / "minilm-ort")
    texts = (short_texts(2 * a.n) * 4)[:a.n]
    handle = ri.load(artifact)
    rounds: list[dict[str, Any]] = []
    with server([str(artifact)]) as (base, _):
        for k in range(a.rounds):
            r: dict[str, Any] = {}
            # alternate the order too, so neither side always runs first
            steps = [("inproc", lambda: in_process(handle, texts, a.batch, a.latency_runs)),
                     ("served", lambda: served(base, texts, a.concurrency, a.per_request,
                                               a.latency_runs))]
            if not a.no_st:
                steps.append(("st", lambda: {k: v for k, v in run_st_anchor(
                    "torch", texts, str(BUILTINS["minilm"].path()),
                    latency_runs=a.latency_runs, batch_size=a.batch).items()
                    if k != "embeddings"}))
            for name, fn in steps if k % 2 == 0 else steps[::-1]:
                r[name] = fn()
                print(f"round {k + 1} {name}: {json.dumps(r[name])}", flush=True)
            rounds.append(r)
    manifest = json.loads((Path(artifact) / "manifest.json").read_text()) \
        if (Path(artifact) / "manifest.json").exists() else {}
    engine = f"{manifest.get('name', 'minilm')}, {manifest.get('backend', '?')} " \
             f"{json.dumps(manifest.get('backend_options', {}))}"
    result = {"args": vars(a), "artifact": str(artifact), "rounds": rounds, "engine": engine,
              "summary": summarise(rounds), "note": a.note,
              **hardware()}
    write_results(out / a.stem, result, markdown(result), indent=1)


if __name__ == "__main__":
    main()
