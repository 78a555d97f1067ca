"""Throughput and quality of the image built-ins on every CPU engine, side by side: torch
eager fp32 (the baseline), ONNX Runtime fp32 and static int8 (QDQ, per-channel), OpenVINO
fp32, bf16 (only where the CPU has it native) and int8 (NNCF).

    PYTHONPATH=src python benchmarks/vision_backends.py [--rounds 5] [--threads 1] [--batch 32]

All runners are prepared in one process; rounds alternate (torch, onnxruntime, ..., torch,
...) so machine load hits all alike; each speed-up is the median of per-round ratios to
torch eager in the same round. Quality is measured on the whole held-out split against
torch eager fp32: top-1 agreement, top-5 overlap, KL, and accuracy on the labelled digits.
`... fp32 depthwise` keeps the depthwise convolutions in float (`fp32_layers`).

Writes benchmarks/results/vision_backends.json and .md (with the hardware profile; `--out`
names other files).
"""
from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any

import numpy as np
from _common import RESULTS as OUT
from _common import alternate, hardware, write_results

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.backends.onnx_layers import depthwise_convs
from reactinfer.core.backend import list_backends
from reactinfer.core.hardware import hardware_profile, native_bf16
from reactinfer.data import texts_for
from reactinfer.tasks import get_task, tokenize

MIN_ROUND_S = 0.3


def engines(h: Any, threads: int) -> dict[str, Any]:
    """name → handle on its backend (skipping what this machine cannot run)."""
    out = {"torch eager fp32": to_backend(h, "torch", threads=threads)}
    ort: dict[str, Any] = {"threads": threads}
    fp32 = to_backend(h, "onnxruntime", precision="fp32", **ort)
    out["onnxruntime fp32"] = fp32
    out["onnxruntime int8-static"] = to_backend(h, "onnxruntime", precision="int8-static",
                                                **ort)
    dw = depthwise_convs(fp32.files["model.onnx"])
    if dw:
        out["onnxruntime int8-static fp32 depthwise"] = to_backend(
            h, "onnxruntime", precision="int8-static", fp32_layers=dw, **ort)
    if list_backends()["openvino"].available():
        out["openvino fp32"] = to_backend(h, "openvino", precision="fp32", threads=threads)
        if native_bf16(hardware_profile().isa):
            out["openvino bf16"] = to_backend(h, "openvino", precision="bf16", threads=threads)
        out["openvino int8"] = to_backend(h, "openvino", precision="int8", threads=threads)
        if dw:
            out["openvino int8 fp32 depthwise"] = to_backend(
                h, "openvino", precision="int8", fp32_layers=dw, threads=threads)
    return out


def _timed(runner: Any, batch: Any, reps: int = 1) -> float:
    """Seconds per call, over `reps` calls in a row."""
    t0 = time.perf_counter()
    for _ in range(reps):
        runner(batch)
    return (time.perf_counter() - t0) / reps


def run_model(name: str, batch_size: int, rounds: int, threads: int) -> dict[str, Any]:
    h = ri.load(name)
    items = texts_for("eval", preprocess=h.tokenizer)
    batch = tokenize(h.tokenizer, (items * (batch_size // len(items) + 1))[:batch_size], 0)
    t0 = time.perf_counter()
    handles = engines(h, threads)
    convert_s = time.perf_counter() - t0
    runners = {k: v.runner() for k, v in handles.items()}
    task = get_task("image-classification")
    results = {k: task.evaluate(r, h.tokenizer, items, batch_size, 0)
               for k, r in runners.items()}
    ref = results["torch eager fp32"]
    # small batches (8×8 digits) take a millisecond: repeat them to about MIN_ROUND_S
    reps = {k: max(1, int(MIN_ROUND_S / max(_timed(r, batch), 1e-6))) for k, r in runners.items()}
    # each round times every engine once
    secs = alternate({k: partial(_timed, r, batch, reps[k]) for k, r in runners.items()}, rounds)
    base = np.asarray(secs["torch eager fp32"])
    rows = []
    for k in runners:
        q = task.compare(ref, results[k])
        rows.append({"engine": k, "images_per_s": batch_size / float(np.median(secs[k])),
                     "x_torch": float(np.median(base / np.asarray(secs[k]))),
                     "options": handles[k].backend_options, **q})
    return {"model": name, "batch": batch_size, "n_eval": len(items), "rounds": rounds,
            "threads": threads, "convert_s": convert_s, "rows": rows}


def write(res: dict[str, Any], name: str) -> None:
    lines = ["# Image models on every CPU engine", "",
             f"{res['hardware_summary']}  ",
             "one process, rounds alternate between engines; the CPU is shared with other "
             "jobs, so read the ratios (median of per-round ratios), not the absolute rates.",
             ""]
    for m in res["models"]:
        lines += [f"## {m['model']} (batch {m['batch']}, {m['threads']} thread(s), "
                  f"{m['rounds']} rounds; quality on {m['n_eval']} held-out images vs torch "
                  "eager fp32)", "",
                  "| engine | images/s | × torch eager | top-1 agreement | top-5 overlap | KL "
                  "| accuracy |", "|---|---|---|---|---|---|---|"]
        for r in m["rows"]:
            acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "—"
            lines.append(f"| {r['engine']} | {r['images_per_s']:.1f} | {r['x_torch']:.2f} | "
                         f"{r['top1_agreement']:.4f} | {r['top5_overlap']:.4f} | "
                         f"{r['kl_divergence']:.2e} | {acc} |")
        lines.append("")
    write_results(OUT / name, res, "\n".join(lines), echo=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=["resnet18-digits", "efficientnet-lite0"])
    ap.add_argument("--out", default="vision_backends", help="results file name (no suffix)")
    a = ap.parse_args()
    res: dict[str, Any] = {**hardware(), "models": []}
    for name in a.models:
        m = run_model(name, a.batch, a.rounds, a.threads)
        res["models"].append(m)
        for r in m["rows"]:
            print(f"{name}: {r['engine']}: {r['images_per_s']:.1f} images/s, "
                  f"x{r['x_torch']:.2f} torch eager, top-1 agreement "
                  f"{r['top1_agreement']:.4f}"
                  + (f", accuracy {r['accuracy']:.4f}" if "accuracy" in r else ""), flush=True)
    write(res, a.out)


if __name__ == "__main__":
    main()
