"""minilm on OpenVINO beside torch eager and ONNX Runtime, in one process on this machine:
throughput at batch 32 on the held-out eval texts (length-bucketed, as ReAct runs them),
and quality against the original (mean cosine, top-10 recall). Rounds alternate between
the candidates and each figure is the median of the rounds, so a noisy neighbour on a
shared CPU hits all of them alike: compare the ratios, not absolute figures across runs.

    PYTHONPATH=src python benchmarks/openvino_minilm.py [--n-texts 512] [--rounds 3]
        [--only openvino]

Prints one JSON object (hardware profile, versions, one row per candidate).
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Any

from _common import alternate, median

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.core.hardware import hardware_profile, native_bf16, package_versions
from reactinfer.data import texts_for
from reactinfer.tasks import get_task

CANDIDATES = [
    ("torch", {}),
    ("onnxruntime", {"precision": "fp32"}),
    ("onnxruntime", {"precision": "int8-dynamic"}),
    ("openvino", {"precision": "fp32", "hint": "latency"}),
    ("openvino", {"precision": "fp32", "hint": "throughput"}),
    ("openvino", {"precision": "bf16", "hint": "latency"}),
    ("openvino", {"precision": "bf16", "hint": "throughput"}),
    ("openvino", {"precision": "int8", "hint": "latency"}),
    ("openvino", {"precision": "int8", "hint": "throughput"}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-texts", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--only", help="only candidates of this backend (and the torch reference)")
    a = ap.parse_args()
    task = get_task("embedding")
    base = ri.load("minilm")
    texts = texts_for("eval", limit=a.n_texts)
    cands = [(n, o) for n, o in CANDIDATES if a.only in (None, n) or n == "torch"]
    if not native_bf16(hardware_profile().isa):
        cands = [(n, o) for n, o in cands if o.get("precision") != "bf16"]
    handles: list[Any] = []
    rows: list[dict[str, Any]] = []
    for name, opts in cands:
        t0 = time.perf_counter()
        h = base if name == "torch" else to_backend(base, name, **opts)
        runner = h.runner()
        results = task.evaluate(runner, h.tokenizer, texts[:64], a.batch_size, h.max_length)
        handles.append(h)
        rows.append({"backend": name, "options": h.backend_options,
                     "prepare_s": round(time.perf_counter() - t0, 1), "items_per_s": []})
    ref = task.evaluate(base.runner(), base.tokenizer, texts, a.batch_size, base.max_length)
    for h, row in zip(handles, rows, strict=True):
        results = task.evaluate(h.runner(), h.tokenizer, texts, a.batch_size, h.max_length)
        q = task.compare(ref, results)
        row.update(mean_cosine=round(q["mean_cosine"], 5), top10_recall=round(q["top10_recall"], 4))

    def speed(h: Any) -> float:
        t0 = time.perf_counter()
        task.evaluate(h.runner(), h.tokenizer, texts, a.batch_size, h.max_length)
        return len(texts) / (time.perf_counter() - t0)

    # every candidate once per round
    speeds = alternate({str(i): partial(speed, h) for i, h in enumerate(handles)}, a.rounds)
    for i, row in enumerate(rows):
        row["items_per_s"] = speeds[str(i)]
    torch_speed = median(rows[0]["items_per_s"])
    for row in rows:
        row["median_items_per_s"] = round(median(row["items_per_s"]), 1)
        row["x_torch"] = round(row["median_items_per_s"] / torch_speed, 2)
        row["items_per_s"] = [round(x, 1) for x in row["items_per_s"]]
    print(json.dumps({"hardware": hardware_profile().summary(), "versions": package_versions(),
                      "n_texts": len(texts), "batch_size": a.batch_size, "rounds": a.rounds,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
