"""`react optimize`: the ReAct loop from the command line."""
from __future__ import annotations

import argparse

from ..models.zoo import DEFAULT_MODEL
from .loading import add_load_args, labels_kwargs, load_kwargs
from .registry import command, print_json


@command("optimize", "Find the fastest model within a quality bound on this machine "
                     "(reason → act → observe), and write artifacts + report.")
def _optimize(p: argparse.ArgumentParser):
    from ..planner.objective import OBJECTIVES
    from ..planner.settings import DEFAULT_N_EVAL, PlanSettings
    from .defaults import field_default

    def d(name: str) -> object:  # the flag's default is optimize()'s: they cannot drift
        return field_default(PlanSettings, name)

    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"built-in name or model path (default {DEFAULT_MODEL})")
    p.add_argument("--objective", choices=tuple(OBJECTIVES), default=d("objective"))
    p.add_argument("--max-drop", type=float, default=d("max_drop"),
                   help="allowed relative quality drop vs the original (default %(default)s)")
    p.add_argument("--budget-s", type=float, default=d("budget_s"),
                   help="time budget in seconds for the whole command, saving and report "
                        "included (default %(default)g); it ends within the budget plus a "
                        "margin of 10%% (at least 10 s), unless measuring the original model alone "
                        "takes longer")
    p.add_argument("--data", help="your texts: one per line, or JSONL with a 'text' field")
    p.add_argument("--metric", help="bound the relative drop of this metric (accuracy, or "
                   "f1: macro-F1) on labelled --data instead of agreement with the original")
    p.add_argument("-o", "--out", help="output directory (default react-out/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--n-eval", type=int, default=d("n_eval"),
                   help=f"held-out items per trial (default {DEFAULT_N_EVAL}; embeddings: "
                        f"{d('confirm_n_eval')}, as the final re-measure, since top-10 "
                        "recall falls as the corpus grows)")
    p.add_argument("--batch-size", type=int, default=d("batch_size"), help="serving batch size")
    p.add_argument("--streams", type=int, default=d("streams"),
                   help="causal LMs: concurrent streams the model will serve; speed is greedy "
                        "generation tokens/s at this many and at one (default %(default)s)")
    p.add_argument("--max-trials", type=int, default=d("max_trials"))
    p.add_argument("--target", type=float, default=d("target"),
                   help="stop once the objective is this many times the baseline's")
    p.add_argument("--labels", metavar="FILE", default=None,
                   help="an image model's class names, kept in its artifacts: one per line "
                        "in class-id order, or a JSON list (default: --data's class "
                        "subfolders when there is one per class)")
    add_load_args(p)
    p.add_argument("--json", action="store_true", help="print the report data as JSON")
    p.add_argument("--no-progress", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from pathlib import Path

        import psutil

        from ..planner import optimize
        from ..planner.report import render_markdown

        out = a.out or f"react-out/{Path(a.model).name}"
        data = optimize(a.model, objective=a.objective, max_drop=a.max_drop,
                        budget_s=a.budget_s, data=a.data, out=out, resume=a.resume,
                        progress=not a.no_progress, n_eval=a.n_eval, batch_size=a.batch_size,
                        streams=a.streams, max_trials=a.max_trials, target=a.target,
                        metric=a.metric,
                        **load_kwargs(a), **labels_kwargs(a),
                        # the budget counts from when the command started, imports included
                        started=psutil.Process().create_time())
        if a.json:
            print_json(data)
        else:
            md = render_markdown(data)
            print(md.split("## Trace")[0].rstrip())
            print(f"\nreport: {out}/report.md · best artifact: {out}/best · "
                  f"variants: {out}/variants/")
        return 0

    return run
