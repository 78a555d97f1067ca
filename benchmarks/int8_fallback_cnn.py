"""int8 with the layers the repair ranks kept float, against fp32 on the same engine: how
top-1 agreement and throughput move with the number of layers kept float on an image model.

    PYTHONPATH=src python benchmarks/int8_fallback_cnn.py [--model efficientnet-lite0]
        [--engine openvino] [--keep 0 4 8 16 32] [--rounds 3] [--batch 32]

The layers are ranked as the planner's repair ranks them (`Backend.rank_layers` on
calibration images, never the held-out ones), then int8 is built with the k highest kept
float (`fp32_layers`) for each k of `--keep`; `depthwise` rows keep the depthwise
convolutions float instead (the rule this measurement replaces). Quality: top-1 agreement
with torch fp32 on the held-out split, with its 95% interval. Speed: images/s at batch
`--batch`, rounds alternating between the models (median). Writes
benchmarks/results/int8_fallback_<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.backends.onnx_layers import depthwise_convs
from reactinfer.core.backend import get_backend
from reactinfer.core.hardware import hardware_profile, package_versions
from reactinfer.data import items_for, texts_for
from reactinfer.tasks import get_task, tokenize
from reactinfer.tasks.stats import proportion_ci

OUT = Path(__file__).parent / "results"
INT8 = {"openvino": "int8", "onnxruntime": "int8-static"}
CALIBRATION = 32  # the repair's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--engine", default="openvino", choices=sorted(INT8))
    ap.add_argument("--keep", type=int, nargs="+", default=[0, 4, 8, 16, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    h = ri.load(a.model)
    opts = {"precision": INT8[a.engine]}
    t0 = time.perf_counter()
    ranks = get_backend(a.engine).rank_layers(
        h, items_for(h, "calibration", None, CALIBRATION), **opts)
    rank_s = time.perf_counter() - t0
    order = sorted(ranks, key=ranks.__getitem__, reverse=True)
    print(f"ranked {len(order)} layers in {rank_s:.0f}s; first: {order[:8]}", flush=True)
    fp32 = to_backend(h, a.engine, precision="fp32")
    handles: dict[str, Any] = {f"{a.engine} fp32": fp32}
    for k in a.keep:
        handles[f"{a.engine} int8, {k} ranked kept float"] = to_backend(
            h, a.engine, **opts, fp32_layers=order[:k])
    dw = depthwise_convs(to_backend(h, "onnxruntime", precision="fp32").files["model.onnx"])
    if dw:
        handles[f"{a.engine} int8, {len(dw)} depthwise kept float"] = to_backend(
            h, a.engine, **opts, fp32_layers=dw)
    items = texts_for("eval", preprocess=h.tokenizer)
    task = get_task("image-classification")
    ref = task.evaluate(h.runner(), h.tokenizer, items, a.batch, 0)
    runners = {k: v.runner() for k, v in handles.items()}
    batch = tokenize(h.tokenizer, (items * (a.batch // len(items) + 1))[:a.batch], 0)
    secs: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():
        r(batch)  # warm-up
    for _ in range(a.rounds):
        for k, r in runners.items():
            t = time.perf_counter()
            r(batch)
            secs[k].append(time.perf_counter() - t)
    base = np.asarray(secs[f"{a.engine} fp32"])
    rows = []
    for k, r in runners.items():
        q = task.compare(ref, task.evaluate(r, h.tokenizer, items, a.batch, 0))
        hits = round(q["top1_agreement"] * len(items))  # Wilson: 78 images leave it wide
        ci = proportion_ci(np.r_[np.ones(hits), np.zeros(len(items) - hits)])
        rows.append({"variant": k, "images_per_s": a.batch / float(np.median(secs[k])),
                     "x_fp32": float(np.median(base / np.asarray(secs[k]))),
                     "fp32_layers": len(handles[k].backend_options.get("fp32_layers") or []),
                     "top1_ci95": ci, **q})
        print(f"{k}: {rows[-1]['images_per_s']:.1f} images/s (x{rows[-1]['x_fp32']:.2f} fp32), "
              f"top-1 agreement {q['top1_agreement']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]",
              flush=True)
    hw = hardware_profile()
    res = {"model": a.model, "engine": a.engine, "n_eval": len(items), "batch": a.batch,
           "rounds": a.rounds, "rank_s": rank_s, "ranking": [[n, ranks[n]] for n in order],
           "rows": rows, "hardware": hw.to_dict(), "versions": package_versions()}
    OUT.mkdir(exist_ok=True)
    name = f"int8_fallback_{a.model.replace('-', '_')}_{a.engine}"
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# {a.model}: {a.engine} int8 with ranked layers kept float", "",
             f"{hw.summary()}  ",
             f"ranking: {len(order)} layers in {rank_s:.0f}s on {CALIBRATION} calibration "
             f"images; quality on {len(items)} held-out images vs torch fp32 (95% interval); "
             f"batch {a.batch}, {a.rounds} alternating rounds, shared CPU: read the ratios.", "",
             "| variant | images/s | × fp32 | top-1 agreement | 95% interval | top-5 overlap |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["top1_ci95"]
        lines.append(f"| {r['variant']} | {r['images_per_s']:.1f} | {r['x_fp32']:.2f} | "
                     f"{r['top1_agreement']:.4f} | [{ci[0]:.3f}, {ci[1]:.3f}] | "
                     f"{r['top5_overlap']:.4f} |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
