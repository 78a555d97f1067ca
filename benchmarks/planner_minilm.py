"""The planner's target for minilm, measured side by side in one process tree.

    python benchmarks/planner_minilm.py [--run react-out/minilm] [--budget-s 900] [--rounds 3]

Runs `react optimize minilm --max-drop 0.01` into --run (or reuses a finished run there),
then measures on all 1,000 held-out eval texts, in alternating rounds:
  - sentence-transformers' own encode, torch fp32 (it sorts by length itself);
  - sentence-transformers' ONNX and OpenVINO backends (from .venv-anchor: `make anchor-env`);
  - ReAct's baseline (the original model, torch eager) and ReAct's best artifact;
throughput at batch 32 and latency at batch 1, and the best artifact's quality (mean cosine,
top-10 neighbour recall) against the original. Writes results/planner_minilm.{json,md}.
Issue target: best ≥ 2× ST torch and ≥ 1.5× ST ONNX throughput, cosine ≥ 0.99, recall ≥
0.95, batch-1 latency ≤ half the baseline's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS as OUT
from _common import ROOT, alternate, hardware, write_results
from anchor_st import run_st_anchor


def react_engine(label: str, handle, texts: list[str], rounds: int) -> dict:
    from reactinfer.measure.harness import measure

    runs = [measure(handle, texts, 32, latency_runs=50, progress=False) for _ in range(rounds)]
    report, results = runs[-1]
    return {"engine": label, "items_per_s": float(np.median(
        [r[0]["throughput"]["items_per_s"] for r in runs])), "rounds": rounds,
            "latency_ms": report["latency_ms"], "size_mb": report["size_mb"],
            "embeddings": results["embeddings"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default=str(ROOT / "react-out" / "minilm"))
    p.add_argument("--budget-s", type=float, default=900)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    import reactinfer as ri
    from reactinfer.data import texts_for
    from reactinfer.models.zoo import BUILTINS
    from reactinfer.planner import optimize
    from reactinfer.tasks import get_task

    run = Path(a.run)
    if not (run / "report.json").exists():
        optimize("minilm", objective="throughput", max_drop=0.01, budget_s=a.budget_s, out=run,
                 resume=(run / "trials.sqlite").exists())
    plan = json.loads((run / "report.json").read_text())
    texts = texts_for("eval")
    model_dir = str(BUILTINS["minilm"].path())

    base, best = ri.load("minilm"), ri.load(run / "best")
    engines = alternate({  # engines round by round: the machine drifts
        "st-torch": lambda: run_st_anchor("torch", texts, model_dir),
        "st-onnx": lambda: run_st_anchor("onnx", texts, model_dir),
        "st-openvino": lambda: run_st_anchor("openvino", texts, model_dir),
        "react-baseline": lambda: react_engine("ReAct baseline (torch eager)", base, texts, 1),
        "react-best": lambda: react_engine(f"ReAct best: {plan['best_recipe']}", best, texts,
                                           1),
    }, a.rounds)
    task = get_task("embedding")
    ref = engines["react-baseline"][-1]["embeddings"]
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in engines.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            summary[name] = {"engine": runs[0]["engine"], "error": runs[0]["error"]}
            continue
        summary[name] = {
            "engine": ok[0]["engine"],
            "items_per_s": float(np.median([x["items_per_s"] for x in ok])),
            "items_per_s_rounds": [x["items_per_s"] for x in ok],
            "latency_ms": ok[-1]["latency_ms"],
            "quality_vs_original": task.compare({"embeddings": ref},
                                                {"embeddings": ok[-1]["embeddings"]}),
        }
    # the eval texts are the ones the planner chose on; the checker's are its own: 2,000
    # texts of the train split, never measured by the planner (no step of the best trains)
    unseen = texts_for("train", limit=2000)
    q_unseen = task.compare(task.evaluate(base.runner(), base.tokenizer, unseen, 32,
                                          base.max_length),
                            task.evaluate(best.runner(), best.tokenizer, unseen, 32,
                                          best.max_length))
    best_s = summary["react-best"]
    ratios = {f"best_vs_{k}": best_s["items_per_s"] / v["items_per_s"]
              for k, v in summary.items() if k != "react-best" and "items_per_s" in v}
    ratios["latency_p50_baseline_over_best"] = (summary["react-baseline"]["latency_ms"]["p50"]
                                                / best_s["latency_ms"]["p50"])
    result = {"command": "python benchmarks/planner_minilm.py " + " ".join(sys.argv[1:]),
              "n_texts": len(texts), "rounds": a.rounds, "engines": summary, "ratios": ratios,
              "best_on_unseen": {
                  "n_texts": len(unseen), "trained_on_them": "Distill" in plan["best_recipe"],
                  "mean_cosine": q_unseen["mean_cosine"],
                  "top10_recall": q_unseen["top10_recall"], "ci95": q_unseen.get("ci95")},
              "plan": {k: plan[k] for k in ("verdict", "best_recipe", "stop", "seconds")},
              **hardware()}
    write_results(OUT / "planner_minilm", result, markdown(result))


def markdown(r: dict) -> str:
    lines = ["# Planner target: minilm, `react optimize --max-drop 0.01`", "",
             f"`{r['command']}` — {r['n_texts']} held-out texts, median of {r['rounds']} "
             "alternating rounds, batch 32 throughput, batch 1 latency; "
             f"{r['hardware']['cpu_model']}, {r['hardware']['cores_logical']} threads.", "",
             f"Plan: {r['plan']['verdict']}; best recipe `{r['plan']['best_recipe']}`; "
             f"stopped: {r['plan']['stop']} after {r['plan']['seconds']:.0f}s.", "",
             "| engine | items/s @32 | p50 ms @1 | p95 ms @1 | mean cos vs original | "
             "top-10 recall |", "|---|---|---|---|---|---|"]
    for v in r["engines"].values():
        if "error" in v:
            lines.append(f"| {v['engine']} | error: {v['error']} | | | | |")
            continue
        q = v["quality_vs_original"]
        lines.append(f"| {v['engine']} | {v['items_per_s']:.1f} | {v['latency_ms']['p50']:.2f} "
                     f"| {v['latency_ms']['p95']:.2f} | {q['mean_cosine']:.4f} | "
                     f"{q['top10_recall']:.3f} |")
    u = r.get("best_on_unseen")
    if u:
        ci = (u.get("ci95") or {}).get("top10_recall")
        lines += ["", f"Best on {u['n_texts']} texts the planner never measured on (the train "
                  "split" + (", which its distillation trained on" if u["trained_on_them"]
                             else "") + f"): mean cosine {u['mean_cosine']:.4f}, top-10 recall "
                  f"{u['top10_recall']:.3f}" + (f" (95% CI [{ci[0]:.3f}, {ci[1]:.3f}])"
                                                 if ci else "") + "."]
    lines += ["", "Ratios (best ReAct artifact vs each):", ""]
    lines += [f"- {k}: ×{v:.2f}" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
