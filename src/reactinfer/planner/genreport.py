"""The report's section for a model that generates: every candidate measured as it will be
served (greedy tokens/s at 1 stream and at N, time to first token, size) beside its
quality against the original (perplexity ratio, greedy-token agreement), and which of
them are on the Pareto front of all five figures. For a GGUF model these rows are the
GGUF formats tried (the llama.cpp quantizer's types and the packaged file)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (figure, observation path, higher is better): the front's axes
AXES = (("quality drop", ("quality_drop",), False),
        ("tok/s @ 1", ("generation", "tok_s_1"), True),
        ("tok/s @ N", ("generation", "tok_s_n"), True),
        ("TTFT", ("generation", "ttft_ms"), False),
        ("size", ("size_mb",), False))


def _value(obs: dict[str, Any], path: tuple[str, ...], high: bool) -> float:
    v: Any = obs
    for p in path:
        v = v[p]
    return float(v) if high else -float(v)


def generation_front(rows: list[dict[str, Any]]) -> set[str]:
    """The keys of the trials no other trial beats on every axis (and strictly on one)."""
    pts = {t["key"]: [_value(t["observation"], p, h) for _, p, h in AXES] for t in rows}
    return {k for k, a in pts.items()
            if not any(all(x >= y for x, y in zip(b, a, strict=True)) and b != a
                       for j, b in pts.items() if j != k)}


def _fmt(x: Any, spec: str) -> str:
    return "—" if x is None or x != x else format(x, spec)


def _ratio(q: dict[str, Any]) -> str:
    """The perplexity ratio and its 95% interval: the resolution of the quality pass."""
    ci = (q.get("ci95") or {}).get("perplexity_ratio")
    r = _fmt(q.get("perplexity_ratio"), ".4f")
    return f"{r} ({ci[0]:.4f}–{ci[1]:.4f})" if ci and ci[0] != ci[1] else r


def _scored(data: dict[str, Any]) -> str:
    """On what the quality pass ran, for the table's header."""
    search = data.get("search") or {}
    if not search.get("n_texts"):
        return "the held-out texts"
    tokens = f", {search['quality_tokens']} tokens" if search.get("quality_tokens") else ""
    return f"{search['n_texts']} held-out texts{tokens}"


def generation_lines(data: dict[str, Any],
                     in_bound: Callable[[dict[str, Any], dict[str, Any]], tuple[bool, str]]
                     ) -> list[str]:
    """The table (markdown lines), or none when no trial measured generation; `in_bound`
    judges a trial as the rest of the report does."""
    by_key: dict[str, dict[str, Any]] = {}  # a trial reused from the store: one candidate
    for t in data["trials"]:
        if (t.get("observation") or {}).get("generation") and t["decision"] != "skipped":
            by_key.setdefault(t["key"], t)
    rows = list(by_key.values())
    if not rows:
        return []
    front = generation_front(rows)
    g0 = rows[0]["observation"]["generation"]
    n = g0["streams"]
    lines = [f"## Generation as served: {len(rows)} candidates", "",
             f"Speed is {g0['figure']}: {g0['new_tokens']} new tokens after prompts of "
             f"~{g0['prompt_tokens']} tokens, at 1 stream and {n} concurrent streams "
             f"(`--streams`), through {g0['how'].split(' (')[0]} where the engine has one; "
             "TTFT is one stream's time to its first token. Quality is against the original "
             f"on {_scored(data)} (perplexity ratio with its 95% interval over texts). "
             "★: on the Pareto front of quality, tok/s @ 1, "
             f"tok/s @ {n}, TTFT and size.", "",
             f"| candidate | perplexity ratio | token agreement | tok/s @ 1 | tok/s @ {n} | "
             "TTFT ms | size MiB | within bound | front |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in rows:
        o, g = t["observation"], t["observation"]["generation"]
        q = o["quality"]
        ok, why = in_bound(data, t)
        lines.append(
            f"| {t['action']} | {_ratio(q)} | "
            f"{_fmt(q.get('token_agreement'), '.4f')} | {g['tok_s_1']:.1f} | "
            f"{g['tok_s_n']:.1f} | {g['ttft_ms']:.0f} | {o['size_mb']:.1f} | "
            f"{'yes' if ok else 'no: ' + why} | {'★' if t['key'] in front else ''} |")
    return lines + [""]
