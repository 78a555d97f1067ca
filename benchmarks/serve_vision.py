"""Images served at engine speed? efficientnet-lite0 (torch eager fp32, 1 thread) measured
side by side, in alternating rounds (only same-run ratios count on a shared machine):

- in-process, model only: preprocessed pixels, batch --batch;
- in-process, end to end: the bundled photo FILES decoded and preprocessed
  (ImagePreprocess) then run, batch --batch: what a server must at least spend;
- served: `react serve efficientnet-lite0 --max-batch B --cache-size 0` on loopback,
  --concurrency closed-loop clients, each request one base64 photo file (KServe v2
  `image` BYTES), and the same with one client (batch-1 p50 over HTTP).

Writes benchmarks/results/serve_vision.{json,md} with the hardware profile.

    PYTHONPATH=src python benchmarks/serve_vision.py                 # ~3 min on 2 cores
    PYTHONPATH=src python benchmarks/serve_vision.py --rounds 3 --seconds 20 --note "quiet"
"""
from __future__ import annotations

import argparse
import base64
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, hardware, write_results
from serve_bench import closed_loop_bodies, server

import reactinfer as ri
from reactinfer.backends.torch_eager import set_threads
from reactinfer.data.images import photo_path

PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "china",
          "flower", "grace_hopper")
PATH = "/v2/models/efficientnet-lite0/infer"


def rate(fn: Any, items: int, seconds: float) -> float:
    """Items per second of repeated fn() calls (each handles `items`), after a warm-up."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += items
    return n / (time.perf_counter() - t0)


def in_process(handle: Any, files: list[Path], batch: int, seconds: float) -> dict[str, float]:
    runner, pre = handle.runner(), handle.tokenizer
    chosen = [files[i % len(files)] for i in range(batch)]
    pixels = pre(chosen)
    return {"model_only": rate(lambda: runner(pixels), batch, seconds),
            "end_to_end": rate(lambda: runner(pre(chosen)), batch, seconds)}


def closed_loop(base: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """One image file per request, `concurrency` clients back to back."""
    return closed_loop_bodies(base, PATH, bodies, concurrency, seconds)


def markdown(r: dict) -> str:
    med = r["median"]
    lines = [
        "# Images served: efficientnet-lite0 over KServe v2 vs in-process",
        "",
        f"`{r['command']}`; {r['rounds']} alternating rounds of {r['seconds']} s each; "
        f"torch eager fp32, 1 thread in both; batch {r['batch']}; "
        f"{r['concurrency']} closed-loop clients, one base64 photo file per request "
        f"(the 8 bundled photos in turn, {r['mean_file_kb']:.0f} KB on average).",
        f"Machine: {r['machine']}. {r['note']}",
        "",
        "| way | images/s (median) | rounds |",
        "|---|---|---|",
        f"| in-process, model only (preprocessed pixels) | {med['model_only']:.1f} | "
        f"{', '.join(f'{x:.1f}' for x in r['per_round']['model_only'])} |",
        f"| in-process, decode + preprocess + model | {med['end_to_end']:.1f} | "
        f"{', '.join(f'{x:.1f}' for x in r['per_round']['end_to_end'])} |",
        f"| served, {r['concurrency']} clients (files as base64) | {med['served']:.1f} | "
        f"{', '.join(f'{x:.1f}' for x in r['per_round']['served'])} |",
        "",
        f"Served / in-process end to end: ×{med['served'] / med['end_to_end']:.2f}; served / "
        f"model only: ×{med['served'] / med['model_only']:.2f}. One client, one photo per "
        f"request over HTTP: p50 {med['p50_one_ms']:.1f} ms (p95 {med['p95_one_ms']:.1f} ms).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_vision"))
    a = ap.parse_args()
    set_threads(1)
    files = [photo_path(n) for n in PHOTOS]
    bodies = [{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(f.read_bytes()).decode()]}]}
              for f in files]
    handle = ri.load("efficientnet-lite0")
    per: dict[str, list[float]] = {k: [] for k in ("model_only", "end_to_end", "served",
                                                   "p50_one_ms", "p95_one_ms")}
    with server(["efficientnet-lite0"], "--max-batch", str(a.batch)) as (base, _):
        for r in range(a.rounds):
            order = ("in", "served") if r % 2 == 0 else ("served", "in")
            for way in order:
                if way == "in":
                    got = in_process(handle, files, a.batch, a.seconds)
                    per["model_only"].append(got["model_only"])
                    per["end_to_end"].append(got["end_to_end"])
                else:
                    many = closed_loop(base, bodies, a.concurrency, a.seconds)
                    one = closed_loop(base, bodies, 1, a.seconds / 2)
                    assert many["errors"] == 0 and one["errors"] == 0, (many, one)
                    per["served"].append(many["items_per_s"])
                    per["p50_one_ms"].append(one["p50_ms"])
                    per["p95_one_ms"].append(one["p95_ms"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in per.items()),
                  flush=True)
    result = {"command": "PYTHONPATH=src python benchmarks/serve_vision.py " + shlex.join(
                  sys.argv[1:]),
              "rounds": a.rounds, "seconds": a.seconds, "batch": a.batch,
              "concurrency": a.concurrency, "note": a.note,
              "mean_file_kb": float(np.mean([f.stat().st_size for f in files]) / 1e3),
              "per_round": per, "median": {k: statistics.median(v) for k, v in per.items()},
              **hardware()}
    result["machine"] = result["hardware_summary"]  # the names serve_vision.md was written with
    result["packages"] = result.pop("versions")
    write_results(Path(a.out), result, markdown(result), indent=1)


if __name__ == "__main__":
    main()
