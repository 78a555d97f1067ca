"""Built-in commands: models, bench, info, backends. The other commands live beside this
module (compress.py, optimize.py, serve.py, cluster.py); `main.build_parser` imports them all.
No other subpackage imports `cli`: the command line sits on top of everything."""
from __future__ import annotations

import argparse
import sys

from .loading import add_load_args, loaded
from .registry import command, print_json


@command("models", "List the built-in models (they load with no network).")
def _models(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true", help="print JSON")

    def run(a: argparse.Namespace) -> int:
        from ..models.zoo import BUILTINS, DEFAULT_MODEL

        rows = []
        for m in BUILTINS.values():
            try:
                where = str(m.path())
            except ValueError as e:
                where = f"not installed ({e})"
            rows.append({"name": m.name, "task": m.task, "params": m.params,
                         "package": m.package, "default": m.name == DEFAULT_MODEL,
                         "description": m.description, "path": where})
        if a.json:
            print_json(rows)
        else:
            for r in rows:
                star = " (default)" if r["default"] else ""
                print(f"{r['name']}{star}\n  {r['description']}\n  task {r['task']} · "
                      f"{r['params']} params · package {r['package']}\n  {r['path']}")
        return 0

    return run


@command("bench", "Measure latency, throughput, memory, size and quality of a model or "
                  "artifact on held-out data.")
def _bench(p: argparse.ArgumentParser):
    p.add_argument("model", help="built-in name, model path, or artifact directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", help="your texts: one per line, or JSONL with a 'text' field; "
                   "for an image model, a folder of images (class subfolders give labels)")
    p.add_argument("--n-eval", type=_n_eval, default=None, metavar="N|all",
                   help="evaluate on the first N held-out texts, or 'all' of them (default: "
                   "all for encoders and classifiers, 64 for causal LMs, whose evaluation "
                   "costs a full-vocabulary forward per text)")
    p.add_argument("--latency-runs", type=int, default=None,
                   help="timed batch-1 requests (default 50; 20 for causal LMs)")
    p.add_argument("--time-budget-s", type=float, default=None, metavar="S",
                   help="evaluate as many held-out texts (of --n-eval, default all) and "
                   "latency runs as fit in about S seconds; quality figures come with 95%% "
                   "confidence intervals either way")
    p.add_argument("--reference", help="judge quality against this model instead")
    p.add_argument("--backend", help="run on this backend (see `react backends`), or 'auto' "
                   "to measure them here and pick the fastest within the quality bound")
    p.add_argument("--threads", type=int, help="threads for the backend")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="torch backends: where "
                   "to run (default auto: a CUDA GPU when torch sees one, else the CPU)")
    p.add_argument("--precision", help="backend precision: onnxruntime fp32|int8-dynamic|"
                   "int8-static|fp16, openvino fp32|bf16|int8, llama.cpp "
                   "source|f16|q8_0|q4_0|...")
    p.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="another option of the named backend, e.g. hint=throughput or "
                   "fp32_layers='[\"/model/.../MatMul\"]' (VALUE is read as JSON when it "
                   "parses, else as text; repeatable; `react backends` lists the options)")
    p.add_argument("--max-drop", type=float, help="quality drop --backend auto may accept "
                   "(default: 0.005 embeddings, 0.01 LMs and classifiers)")
    add_load_args(p)
    p.add_argument("--metric", help="report this metric too (accuracy, or f1: macro-F1) on "
                   "labelled --data, and its drop against the reference")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from ..measure import bench, format_report

        report = bench(loaded(a.model, a), batch_size=a.batch_size, data=a.data, n_eval=a.n_eval,
                       latency_runs=a.latency_runs, reference=a.reference,
                       progress=not a.no_progress, backend=a.backend, threads=a.threads,
                       precision=a.precision, max_drop=a.max_drop, device=a.device,
                       backend_options=parse_backend_opts(a.backend_opt),
                       time_budget_s=a.time_budget_s, metric=a.metric)
        print_json(report) if a.json else print(format_report(report))
        if report.get("eval_warning"):
            print(f"react bench: warning: {report['eval_warning']}", file=sys.stderr)
        return 0

    return run


def parse_backend_opts(items: list[str]) -> dict:
    """--backend-opt KEY=VALUE items as options: VALUE as JSON when it parses (numbers,
    booleans, lists), else as text."""
    import json

    from ..core.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--backend-opt takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _n_eval(value: str) -> int | str:
    """--n-eval: a count or 'all'; bench() checks it up front (one line, exit 2)."""
    try:
        return int(value)
    except ValueError:
        return value


@command("info", "Print an artifact's manifest readably (verifies its files).")
def _info(p: argparse.ArgumentParser):
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from ..core.artifact import verify_artifact

        m = verify_artifact(a.artifact)
        if a.json:
            print_json(m)
            return 0
        src = m.get("source", {})
        print(f"artifact   {a.artifact} (format {m['format_version']}, created {m.get('created')})")
        print(f"model      {m.get('name')} · task {m['task']} · source {src.get('kind')} "
              f"{src.get('ref')} (sha256 {str(src.get('sha256'))[:12]}…)")
        print(f"backend    {m.get('backend')} {m.get('backend_options') or ''}".rstrip())
        print("transforms " + (", ".join(
            f"{t['type']}({', '.join(f'{k}={v}' for k, v in _fields(t))})"
            for t in m.get("transforms", [])) or "none"))
        print("files      " + "\n           ".join(
            f"{name}  {digest[:12]}…" for name, digest in m["files"].items()))
        metrics = m.get("metrics") or {}
        if metrics:
            print("metrics    " + json_line(metrics))
        hw = m.get("hardware", {})
        print(f"hardware   {hw.get('cpu_model')} · {hw.get('cores_logical')} threads")
        print("versions   " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))
        print("verified   every file matches its sha256")
        return 0

    return run


def _fields(transform: dict) -> list[tuple[str, object]]:
    return [(k, v) for k, v in transform.items() if k not in ("type", "version")]


def json_line(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = "{" + ", ".join(f"{kk}: {vv:.4g}" if isinstance(vv, float) else f"{kk}: {vv}"
                                for kk, vv in v.items()) + "}"
        elif isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k}={v}")
    return "; ".join(parts)


def _config_facts(c: dict) -> str:
    """One engine configuration in a line: its options, tasks and what it needs."""
    opts = ", ".join(f"{k}={v}" for k, v in c["options"].items()) or "no options"
    facts = [opts, f"tasks {', '.join(c['tasks'])}", f"format {c['format']}"]
    facts += ["lossless"] * c["lossless"] + ["calibrated"] * c["calibrated"]
    facts += [f"needs native {n}" + ("" if c["runs_here"] else " (not on this CPU)")
              for n in c["native"]]
    facts += [f"auto selection only when asked: {c['slow']}"] * bool(c["slow"])
    return "; ".join(facts)


@command("backends", "List backends, whether each is available here, and what it runs.")
def _backends(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from ..core.backend import list_backends
        from ..core.hardware import hardware_profile

        isa = hardware_profile().isa
        # the engine configurations auto selection and the planner try, and whether this
        # CPU runs each (a half precision it lacks natively is refused, never emulated)
        rows = [{"name": b.name, "available": b.available(),
                 "why_unavailable": None if b.available() else b.why_unavailable(),
                 "description": b.description,
                 **b.capabilities(),
                 "configs": [{**c.describe(), "runs_here": c.missing_native(isa) is None}
                             for c in b.engine_configs()]}
                for b in list_backends().values()]
        if a.json:
            print_json(rows)
        else:
            for r in rows:
                state = "yes" if r["available"] else f"no ({r['why_unavailable']})"
                print(f"{r['name']:<14} available: {state}\n{'':<14} {r['description']}")
                if r.get("tasks"):
                    print(f"{'':<14} tasks: {', '.join(r['tasks'])}")
                for k, v in r.get("options", {}).items():
                    print(f"{'':<14} option {k}: {', '.join(v) if isinstance(v, list) else v}")
                for c in r["configs"]:
                    print(f"{'':<14} config {c['name']}: {_config_facts(c)}")
        return 0

    return run
