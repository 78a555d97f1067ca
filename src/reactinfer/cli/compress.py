"""`react compress MODEL --recipe RECIPE.json -o ARTIFACT [--data FILE] [--sensitivity]`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..core.bounds import check_at_least
from ..core.errors import UserError
from .loading import add_load_args, load_kwargs
from .registry import command, print_json


def with_data(cfgs: list[Any], data: str | None) -> list[Any]:
    """Give `--data` to every config that reads data and has none of its own."""
    if data is None:
        return cfgs
    return [dataclasses.replace(c, data=data)
            if any(f.name == "data" for f in dataclasses.fields(c)) and c.data is None else c
            for c in cfgs]


def summary(before: Any, after: Any, n_eval: int, data: str | None) -> dict[str, Any]:
    """Params, size, batch-1 latency and quality against the original on held-out texts.
    The quality is saved in the artifact (metrics.compress) and read by the server's
    ladder, so it is judged against the original model, also when `before` is itself an
    artifact (compressing a compressed model), whenever that original can be reloaded."""
    from ..data import items_for
    from ..measure import bench, reference_for

    texts = items_for(before, "eval", data, n_eval)
    kw: dict[str, Any] = {"eval_texts": texts, "latency_runs": 10, "progress": False,
                          "gen_tokens": 0}
    b = bench(before, **kw)
    a = bench(after, reference=reference_for(before) or before, **kw)
    from ..compression._common import effective_params

    out = {"params": [effective_params(before.model), effective_params(after.model)],
           "size_mb": [round(b["size_mb"], 3), round(a["size_mb"], 3)],
           "latency_p50_ms": [round(b["latency_ms"]["p50"], 2), round(a["latency_ms"]["p50"], 2)],
           "items_per_s": [round(b["throughput"]["items_per_s"], 1),
                           round(a["throughput"]["items_per_s"], 1)],
           "quality": a["quality"], "quality_drop": a.get("quality_drop"),
           "reference": a.get("reference"), "n_eval": len(texts)}
    if a.get("eval_warning"):
        out["eval_warning"] = a["eval_warning"]
    return out


def _print_summary(s: dict[str, Any]) -> None:
    def ratio(pair: list[float]) -> str:
        return f"{pair[1] / pair[0]:.2f}x" if pair[0] else "-"

    print(f"{'':<16}{'before':>12}{'after':>12}{'ratio':>8}")
    for key in ("params", "size_mb", "latency_p50_ms", "items_per_s"):
        b, a = s[key]
        print(f"{key:<16}{b:>12,}{a:>12,}{ratio(s[key]):>8}")
    q = s.get("quality") or {}
    print("quality vs original (" + str(s["n_eval"]) + " eval texts): "
          + ", ".join(f"{k} {v:.4f}" for k, v in q.items() if isinstance(v, float)))


def _print_sensitivity(rows: list[dict[str, Any]], method: Any) -> None:
    print(f"per-layer sensitivity to {type(method).__name__} (SQNR of the layer output, "
          "only that layer quantized; lower = hurts more)")
    for r in rows:
        print(f"  {r['sqnr_db']:7.2f} dB  {r['layer']}  {r['shape'][0]}x{r['shape'][1]}")


@command("compress", "Apply a compression recipe (JSON list of transform configs) and save "
                     "an artifact; or print per-layer quantization sensitivity.")
def _compress(p: argparse.ArgumentParser):
    p.add_argument("model", help="built-in name, model path, or artifact directory")
    p.add_argument("--recipe", help="JSON file: a list of {\"type\": ..., fields} configs")
    p.add_argument("-o", "--output", help="artifact directory to write")
    p.add_argument("--data", help="your texts (calibration / training / eval parts are split "
                                  "from it): one per line, or JSONL with a 'text' field")
    p.add_argument("--sensitivity", action="store_true",
                   help="print per-layer SQNR for the recipe's first quantization step "
                        "(default: dynamic int8 per-tensor)")
    p.add_argument("--n-eval", type=int, default=100,
                   help="eval texts for the before/after summary (default 100)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after measurement")
    p.add_argument("--overwrite", action="store_true")
    add_load_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    def run(a: argparse.Namespace) -> int:
        from ..compression.quantize import _LAYER_QUANTIZERS, QuantizeDynamicInt8, layer_sensitivity
        from ..core.artifact import Artifact
        from ..core.transform import compress, load_recipe
        from ..models import load

        if not a.recipe and not a.sensitivity:
            raise UserError("give --recipe RECIPE.json (with -o ARTIFACT), or --sensitivity")
        if a.recipe and not a.output:
            raise UserError("give -o ARTIFACT: where to save the compressed model")
        check_at_least("--n-eval", a.n_eval)
        cfgs = with_data(load_recipe(a.recipe), a.data) if a.recipe else []
        handle = load(a.model, **load_kwargs(a))
        out: dict[str, Any] = {}
        if a.sensitivity:
            method = next((c for c in cfgs if type(c) in _LAYER_QUANTIZERS),
                          QuantizeDynamicInt8())
            rows = layer_sensitivity(handle, method, data=a.data)
            out["sensitivity"] = {"method": method.to_dict(), "layers": rows}
            if not a.json:
                _print_sensitivity(rows, method)
        if cfgs:
            new = compress(handle, cfgs)
            if not a.no_eval:
                out["summary"] = summary(handle, new, a.n_eval, a.data)
            # the steps' own records (pruned params / MACs, the distillation run) stay
            Artifact.save(new, a.output, metrics={**new.metrics, "compress": out.get("summary")},
                          overwrite=a.overwrite)
            out["artifact"] = a.output
            out["recipe"] = list(new.transforms)
            if out.get("summary", {}).get("eval_warning"):
                print(f"react compress: warning: {out['summary']['eval_warning']}",
                      file=sys.stderr)
            if not a.json:
                if "summary" in out:
                    _print_summary(out["summary"])
                print(f"saved {a.output} ({len(cfgs)} step(s): "
                      + ", ".join(type(c).__name__ for c in cfgs) + ")")
        if a.json:
            print_json(out)
        return 0

    return run
