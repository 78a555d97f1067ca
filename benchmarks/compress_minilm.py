"""Every compression technique on `minilm`, measured side by side in one run.

    PYTHONPATH=src python benchmarks/compress_minilm.py [--n-eval 300] [--threads 1]

For each technique: size, parameters, batch-1 latency (tokenization included) and batch-32
throughput on real dynamic-length eval texts (length-bucketed), and quality against the
original fp32 model on the same texts (mean cosine, top-10 neighbour recall). Writes
benchmarks/results/compress_minilm.json and .md. Timings are only comparable within one
run (the machine is shared); quality numbers are deterministic.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from _common import RESULTS as OUT
from _common import hardware, write_results

from reactinfer import load
from reactinfer.core import ModelHandle
from reactinfer.data import texts_for
from reactinfer.tasks import get_task, tokenize


def techniques(distill_seconds: float) -> list[tuple[str, list]]:
    from reactinfer.compression import (  # imports torch: under main(), --help stays fast
        CastHalf,
        Distill,
        DropLayers,
        Prune2of4,
        PruneFFN,
        PruneHeads,
        PruneMagnitude,
        QuantizeDynamicInt8,
        QuantizeStaticInt8,
        QuantizeWeightOnly,
    )

    return [
        ("baseline fp32", []),
        ("dynamic int8 per-tensor", [QuantizeDynamicInt8()]),
        ("dynamic int8 per-channel", [QuantizeDynamicInt8(per_channel=True)]),
        ("static int8 (simulated QDQ, minmax)", [QuantizeStaticInt8()]),
        ("weight-only int8 per-channel", [QuantizeWeightOnly(bits=8, group_size=None)]),
        ("weight-only int4 g32", [QuantizeWeightOnly(bits=4, group_size=32)]),
        ("fp16", [CastHalf("fp16")]),
        ("bf16", [CastHalf("bf16")]),
        ("2:4 semi-structured", [Prune2of4()]),
        ("unstructured 50% (global)", [PruneMagnitude(0.5)]),
        ("FFN prune 50% (activation)", [PruneFFN(keep=0.5, importance="activation")]),
        ("head prune 50% (activation)", [PruneHeads(keep=0.5, importance="activation")]),
        ("layer drop 6->3", [DropLayers(keep=0.5)]),
        ("layer drop 6->3 + distillation", [Distill(
            student=({"type": "DropLayers", "keep": 0.5},), steps=2000, batch_size=16,
            lr=1e-4, eval_every=100, patience=3, time_budget_s=distill_seconds,
            progress=False)]),
        # the machine is shared: measuring the baseline again shows how far timings drifted
        ("baseline fp32 (again, drift check)", []),
    ]


def measure(handle: ModelHandle, texts: list[str], ref_results: dict[str, Any] | None,
            latency_runs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from reactinfer.compression._common import effective_params
    from reactinfer.measure.harness import latency_batch1

    assert handle.model is not None  # compress() keeps torch models
    task = get_task(handle.task)
    runner = handle.runner()
    runner(tokenize(handle.tokenizer, texts[:32], handle.max_length))  # warm-up
    t0 = time.perf_counter()
    results = task.evaluate(runner, handle.tokenizer, texts, 32, handle.max_length)
    seconds = time.perf_counter() - t0
    lat = latency_batch1(handle, runner, texts, latency_runs)
    row: dict[str, Any] = {
        "size_mb": handle.size_bytes() / 2**20, "params": effective_params(handle.model),
        "latency_b1_p50_ms": lat["p50"], "latency_b1_p95_ms": lat["p95"],
        "throughput_b32_items_s": len(texts) / seconds}
    row["quality"] = task.compare(ref_results, results) if ref_results is not None else None
    return row, results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-runs", type=int, default=30)
    ap.add_argument("--distill-seconds", type=float, default=240)
    ap.add_argument("--md-only", action="store_true",
                    help="rewrite the .md from the saved .json, measuring nothing")
    a = ap.parse_args()
    if a.md_only:
        report = json.loads((OUT / "compress_minilm.json").read_text())
        (OUT / "compress_minilm.md").write_text(markdown(report))
        return
    import torch

    from reactinfer import compress

    torch.set_num_threads(a.threads)
    base = load("minilm")
    texts = texts_for("eval", limit=a.n_eval)
    rows, ref = [], None
    for name, recipe in techniques(a.distill_seconds):
        t0 = time.perf_counter()
        h = compress(base, recipe)
        build = time.perf_counter() - t0
        row, results = measure(h, texts, ref, a.latency_runs)
        if ref is None:
            ref = results
            row["quality"] = get_task("embedding").compare(ref, results)
        row.update(name=name, recipe=[c.to_dict() for c in recipe], build_seconds=build)
        if "distill" in h.metrics:
            row["distill"] = h.metrics["distill"]
        if "sparsity" in h.metrics:
            row["sparsity"] = h.metrics["sparsity"]
        rows.append(row)
        print(f"{name:<38} {row['latency_b1_p50_ms']:7.2f} ms  "
              f"{row['throughput_b32_items_s']:7.1f}/s  cos {row['quality']['mean_cosine']:.4f}"
              f"  r@10 {row['quality']['top10_recall']:.3f}", flush=True)
    report = {"model": "minilm", "n_eval": len(texts), "threads": a.threads,
              "latency_runs": a.latency_runs, "rows": rows,
              **hardware(),
              "command": f"PYTHONPATH=src python benchmarks/compress_minilm.py --n-eval "
                         f"{a.n_eval} --threads {a.threads} --latency-runs {a.latency_runs} "
                         f"--distill-seconds {a.distill_seconds}"}
    write_results(OUT / "compress_minilm", report, markdown(report), echo=False)


def markdown(r: dict) -> str:
    b = r["rows"][0]
    hw = r["hardware"]
    isa = ", ".join(k for k, v in (hw.get("isa") or {}).items() if v)
    lines = [f"# Compression of minilm: measured, {r['n_eval']} eval texts, "
             f"{r['threads']} thread(s)", "",
             f"Command: `{r['command']}`  ",
             f"CPU: {hw.get('cpu_model')} (ISA: {isa}); torch "
             f"{r['versions'].get('torch')}", "",
             "| technique | size MB | params | b1 p50 ms | b32 items/s | speed-up b1 | "
             "speed-up b32 | mean cos | top-10 recall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        q = x["quality"]
        lines.append(
            f"| {x['name']} | {x['size_mb']:.1f} | {x['params'] / 1e6:.2f}M | "
            f"{x['latency_b1_p50_ms']:.2f} | {x['throughput_b32_items_s']:.1f} | "
            f"{b['latency_b1_p50_ms'] / x['latency_b1_p50_ms']:.2f}x | "
            f"{x['throughput_b32_items_s'] / b['throughput_b32_items_s']:.2f}x | "
            f"{q['mean_cosine']:.4f} | {q['top10_recall']:.3f} |")
    again = next((x for x in r["rows"] if "drift" in x["name"]), None)
    if again is not None:
        d1 = again["latency_b1_p50_ms"] / b["latency_b1_p50_ms"] - 1
        d32 = again["throughput_b32_items_s"] / b["throughput_b32_items_s"] - 1
        lines += ["", f"The baseline measured again at the end differs by {d1:+.0%} (batch-1 "
                  f"latency) and {d32:+.0%} (batch-32 throughput) from the first measurement: "
                  "the machine is shared, so speed ratios smaller than that are noise."]
    lines += ["", "- speed-up columns are baseline / technique (above 1 = faster); quality is "
              "against the fp32 original on the same eval texts, without recovery training "
              "unless the row says distillation.",
              "- size is the in-memory bytes of the weights (packed int8 / int4 included); "
              "artifacts of replay_on_load steps store the float weights plus the recipe.",
              "- params count packed quantized weights too; the word-embedding table is "
              "about half of minilm's parameters and no technique here prunes it.",
              "- static int8 is simulated (quantize-dequantize in float): its row shows "
              "quality, its speed is not that of int8 kernels."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
