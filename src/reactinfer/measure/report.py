"""Readable tables for bench reports."""
from __future__ import annotations

from typing import Any

from ..core.hardware import isa_text
from ..tasks import get_task


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _eval_texts(r: dict[str, Any]) -> str:
    n, available = r["n_eval"], r.get("n_eval_available")
    text = f"{n} of {available}" if available and available != n else f"{n}"
    if r.get("time_budget"):
        tb = r["time_budget"]
        text += (f" (as many as fit in --time-budget-s {tb.get('budget_s', 0):.0f}; "
                 f"took {tb.get('seconds', 0):.0f} s)")
    elif r.get("n_eval_default"):
        text += f" (the default sample for {r['task']} models; --n-eval all for every one)"
    return text + (f" (max length {r['max_length']} tokens)" if r["max_length"] else "")


def format_quality(q: dict[str, Any]) -> str:
    """Each figure, with its 95% confidence interval where it has one."""
    ci = q.get("ci95", {})
    return " · ".join(f"{k} {_fmt(v)}" + (f" [95% CI {_fmt(ci[k][0])}–{_fmt(ci[k][1])}]"
                                          if k in ci else "")
                      for k, v in q.items() if k not in ("ci95", "metric"))


def format_report(r: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in (r.get("backend_options") or {}).items())
    rows: list[tuple[str, str]] = [
        ("model", f"{r['model']} ({r['task']}) on {r['backend']}"
                  + (f" [{opts}]" if opts else "")
                  + (f" ({r['device']})" if r.get("device") else "")),
        ("transforms", ", ".join(t["type"] for t in r["transforms"]) or "none"),
        (f"eval {get_task(r['task']).item_noun}", _eval_texts(r)),
    ]
    lat = r["latency_ms"]
    rows.append(("latency @ batch 1",
                 f"p50 {lat['p50']:.2f} ms · p95 {lat['p95']:.2f} ms · p99 {lat['p99']:.2f} ms"))
    tp = r["throughput"]
    rows.append((f"throughput @ batch {tp['batch_size']}",
                 f"{tp['items_per_s']:.1f} items/s"
                 + (f" · {tp['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in tp else "")))
    if "generation" in r:
        g = r["generation"]
        rows.append(("generation @ batch 1",
                     f"{g['tokens_per_s']:.1f} tokens/s ({g['ms_per_token']:.1f} ms/token, "
                     f"{g['new_tokens']} new tokens)"))
    if r.get("warmup_s") is not None:
        rows.append(("warm-up (excluded)", f"{r['warmup_s']:.2f} s first call"
                     + (f" · {r['compile_s']:.1f} s compiling" if "compile_s" in r else "")))
    if r.get("backend_selection"):
        sel = r["backend_selection"]
        rows.append(("backend choice", sel["reason"]))
        for c in sel["candidates"]:
            what = (f"{c['score']:.1f} {c['unit']} · drop {c['quality_drop']:.4f}"
                    if "score" in c else c.get("error", "?"))
            rows.append(("  candidate", f"{c['backend']} {c['options']}: {what}"))
    rows.append(("peak memory (RSS)", f"{r['peak_rss_mb']:.0f} MiB"))
    params = f" · {r['params'] / 1e6:.1f}M params" if r.get("params") else ""
    rows.append(("size", f"{r['size_mb']:.1f} MiB{params}"))
    if r.get("metric"):  # the user's metric (tasks/metrics.py), and its drop vs the reference
        m, vs = r["metric"], (r.get("quality") or {}).get("metric")
        rows.append((m["name"], f"{m['value']:.4f}" + (
            f" (reference {vs['reference']:.4f}, drop {vs['drop']:.4f})" if vs else "")))
    if r.get("quality"):
        rows.append((f"quality vs {r['reference']}", format_quality(r["quality"])))
    else:
        rows.append(("quality", r.get("quality_note", "not measured")))
    hw = r["hardware"]
    flags = isa_text(hw["isa"])
    rows.append(("hardware", f"{hw['cpu_model']} · {hw['cores_logical']} threads · {flags}"
                             + (f" · GPU {hw['gpu_name']}" if hw.get("gpu") else "")))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
