"""Precision per layer on minilm: ONNX Runtime int8 dynamic, its fallbacks, and fp32.

    python benchmarks/repair_minilm.py [--out react-out/repair-minilm] [--max-drop 0.01]
                                       [--budget-s 900] [--rounds 2] [--n-remeasure 200]

1. Runs the planner on minilm with two actions, ONNX Runtime fp32 and ONNX Runtime int8
   dynamic (which carries the `fp32_layers` fallback): when int8 overshoots the bound, the
   repair ranks the layers and searches the smallest set to keep in fp32 (planner/repair.py).
   Every fallback tried is in the run's report (--out/report.md).
   A finished run in --out (report.json there) is reused, not run again.
2. Re-measures, in alternating rounds in this one process, ONNX Runtime fp32, full int8 and
   each fallback the search tried (throughput at batch 32 on the first --n-remeasure of
   the run's held-out texts, median of --rounds; quality against the original on all of
   them: mean cosine, top-10 recall).
Writes results/repair_minilm.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS as OUT
from _common import alternate, table_head, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="react-out/repair-minilm")
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--budget-s", type=float, default=900)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=400)
    ap.add_argument("--n-remeasure", type=int, default=200)
    args = ap.parse_args()

    from reactinfer.backends import to_backend
    from reactinfer.core.hardware import hardware_profile
    from reactinfer.data import texts_for
    from reactinfer.measure.harness import measure
    from reactinfer.models import load
    from reactinfer.planner import optimize
    from reactinfer.planner.catalogue import catalogue
    from reactinfer.tasks import get_task, within_bound

    actions = [a for a in catalogue() if a.name in ("onnxruntime fp32",
                                                    "onnxruntime int8 dynamic")]
    done = Path(args.out) / "report.json"
    r = json.loads(done.read_text()) if done.is_file() else optimize(
        "minilm", max_drop=args.max_drop, budget_s=args.budget_s, out=args.out,
        actions=actions, n_eval=args.n_eval, confirm_n_eval=0, progress=False)
    variants = [("onnxruntime fp32", {"precision": "fp32"})]
    for t in r["trials"]:
        opts = t["candidate"]["backend_options"]
        if t["candidate"]["backend"] == "onnxruntime" and opts.get("precision") != "fp32" \
                and t.get("observation"):
            variants.append((t["action"], opts))
    base = load("minilm")
    texts = texts_for("eval", None, args.n_eval)
    task = get_task(base.task)
    _, ref = measure(base, texts, 32, latency_runs=1, progress=False)
    handles = [(name, to_backend(base, "onnxruntime", **opts)) for name, opts in variants]
    quality = {name: task.compare(ref, measure(h, texts, 32, latency_runs=1, progress=False)[1])
               for name, h in handles}
    def items_per_s(h: Any) -> float:
        rep, _ = measure(h, texts[:args.n_remeasure], 32, latency_runs=1, progress=False)
        return float(rep["throughput"]["items_per_s"])

    # alternating rounds: the machine's noise hits all alike
    speed = alternate({name: partial(items_per_s, h) for name, h in handles}, args.rounds)
    rows = [{"variant": name, "fp32_layers": len(opts.get("fp32_layers", [])),
             "items_per_s": float(np.median(speed[name])), "rounds": speed[name],
             "mean_cosine": quality[name]["mean_cosine"],
             "top10_recall": quality[name]["top10_recall"]}
            for name, opts in variants]
    fp32 = rows[0]["items_per_s"]
    hw = hardware_profile()
    lines = [f"# minilm: int8 per-layer fallback (max drop {args.max_drop})", "",
             f"machine: {hw.summary()} (2 cores shared with other jobs)", "",
             f"throughput at batch 32 on {min(len(texts), args.n_remeasure)} held-out texts, "
             f"median of {args.rounds} alternating rounds; quality against the original "
             f"(torch fp32) on {len(texts)}", "",
             *table_head("variant", "layers in fp32", "items/s", "× ORT fp32", "mean cosine",
                         "top-10 recall")]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['fp32_layers']} | {row['items_per_s']:.1f} | "
                     f"×{row['items_per_s'] / fp32:.2f} | {row['mean_cosine']:.4f} | "
                     f"{row['top10_recall']:.3f} |")
    met = [row for row in rows[1:] if within_bound(base.task, quality[row["variant"]],
                                                    args.max_drop)[0]]
    smallest = min(met, key=lambda row: row["fp32_layers"], default=None)
    lines += ["", f"planner best: {r['best']['action']}; smallest fallback within the bound: "
              + (f"{smallest['fp32_layers']} layers in fp32" if smallest else "none"), ""]
    write_results(OUT / "repair_minilm", {"rows": rows, "best": r["best"]["action"],
                                          "trials": r["trials"]}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
