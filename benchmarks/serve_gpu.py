"""What the server's dynamic batching gains on a GPU, side by side with the same machine's
CPU, in one run: serve_bench.py's batching section (the same `react serve` process with
batching on, then off; closed loop at 2 x max batch clients, then p95 under a light
Poisson load), serving minilm fp32 on CUDA (the torch backend's device 'auto') at max
batch 16 and 64, and on the CPU (CUDA hidden from the server; 1 torch thread, as in
serve.md) at max batch 16.

    PYTHONPATH=src python benchmarks/serve_gpu.py [--minilm DIR] [--out DIR] [--quick]

The server needs fastapi and uvicorn importable by `python -m reactinfer serve`. Writes
gpu_serve.json and gpu_serve.md to --out (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS as OUT
from _common import write_results
from gpu import load_minilm
from serve_bench import batching, short_texts

from reactinfer.core.artifact import Artifact
from reactinfer.core.hardware import hardware_profile


def run(label: str, device: str, max_batch: int, variants: dict, texts: list[str],
        a: argparse.Namespace) -> dict:
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device == "cpu":  # the server is a subprocess: it inherits this
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
        res = batching(variants, texts, argparse.Namespace(max_batch=max_batch,
                                                           duration=a.duration, device=device))
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
    return {"label": label, "device": device, "max_batch": max_batch, **res}


def markdown(r: dict) -> str:
    hw = r["hardware"]
    lines = ["# Dynamic batching on a GPU vs the same machine's CPU", "",
             (f"Command: `{r['command']}` ({r['date']}). Server: `react serve` of minilm fp32 "
              f"(torch backend, device auto), 1 torch thread, cache off, on {hw['cpu_model']} "
              f"({hw['cores_logical']} logical cores) with {hw.get('gpu_name')}; the CPU rows "
              "hide the GPU from the server. The load generator (serve_bench.py's closed loop, "
              "one asyncio process) runs on the same machine. Ratios are on / off within a row."),
             "", ("| server | max batch | items/s on | items/s off | ratio | p50 ms on (closed "
             "loop) | p95 ms on / off at low load (req/s) | the model alone, no server: "
             "items/s at max batch / batch 1 |"), "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        on, off = row["on"], row["off"]
        lines.append(
            f"| {row['label']} | {row['max_batch']} | {on['closed_loop']['items_per_s']:.0f} | "
            f"{off['closed_loop']['items_per_s']:.0f} | {row['throughput_ratio']:.2f}× | "
            f"{on['closed_loop']['p50_ms']:.1f} | {on['low_load']['latency_ms']['p95']:.1f} / "
            f"{off['low_load']['latency_ms']['p95']:.1f} ({row['low_load_rate']:.0f}) | "
            + (f"{row['model_alone']['ratio']:.2f}× |" if "model_alone" in row else "- |"))
    over = [f"{row['label']} max batch {row['max_batch']}" for row in r["rows"]
            if row["low_load_rate"] > row["off"]["closed_loop"]["items_per_s"]]
    if over:
        lines.append(f"\nThe 'low load' rate (a quarter of the batched throughput) is above what "
                     f"the unbatched server sustains for {', '.join(over)}: there the 'off' p95 "
                     "is a growing queue, not a light-load latency.")
    for e in r.get("errors", []):
        lines.append(f"\n- failed: {e}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", help="HF directory of all-MiniLM-L6-v2 (fp16 is upcast)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--quick", action="store_true", help="CPU only, 1 s per phase")
    a = ap.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    plan = [("GPU (cuda)", "cuda", 16), ("GPU (cuda)", "cuda", 64)] if gpu else []
    plan.append(("CPU, 1 thread", "cpu", 16))
    if a.quick:
        a.duration, plan = 1.0, plan[-1:]
    out = Path(a.out)
    r: dict = {"command": "PYTHONPATH=src python benchmarks/serve_gpu.py " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a),
               "hardware": hardware_profile().to_dict(), "rows": []}
    texts = short_texts()
    with tempfile.TemporaryDirectory(prefix="react-serve-gpu-") as tmp:
        base, r["weights"] = load_minilm(a.minilm)
        Artifact.save(base, Path(tmp) / "minilm-fp32")
        variants = {"fp32": {"path": str(Path(tmp) / "minilm-fp32")}}
        for label, device, mb in plan:
            try:
                r["rows"].append(run(label, device, mb, variants, texts, a))
            except Exception as e:  # noqa: BLE001 - record it, run the rest
                r.setdefault("errors", []).append(f"{label} max batch {mb}: "
                                                  f"{type(e).__name__}: {e}"[:500])
            write_results(out / "gpu_serve", r, markdown(r), indent=1, echo=False)
    print(markdown(r))


if __name__ == "__main__":
    main()
