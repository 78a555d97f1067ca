"""The planning report: report.json (all data), report.md (readable), and PNG plots of the
Pareto front and the trace. Everything is rebuilt from stored trials and measurements.

One source for each figure: the headline's ratio is `data["gain"]`, computed with `gain()`
from the same measurements the side-by-side table shows; "within the bound" is always
`within_bound()`, every criterion the loop decided with (for embeddings, mean cosine and
top-10 recall), in the table and in the plot alike."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..measure.refcache import describe as describe_reference
from ..tasks import get_task, recall_floor, within_bound
from ..tasks.metrics import METRIC_KEY, metric_text
from .actions import FALLBACK_OPTIONS
from .genreport import generation_lines
from .objective import OBJECTIVES, gain, objective_figure, objective_value
from .record import Decision, Trial


def bound_text(task: str, quality_name: str, max_drop: float) -> str:
    """Every criterion of `within_bound`, in words, for reports."""
    text = f"drop ≤ {max_drop} ({quality_name})"
    if get_task(task).bounds_recall:
        text += f" and top-10 recall ≥ {recall_floor(max_drop):.3f}"
    return text


UNITS = {"throughput": "items/s", "latency": "ms p50 @ batch 1", "size": "MiB"}


def _drop(t: Trial) -> float:
    assert t.observation is not None  # only measured trials are on a front
    return float(t.observation["quality_drop"])


def pareto_front(trials: list[Trial], objective: str) -> list[Trial]:
    """Trials not dominated on (quality drop ↓, objective ↑/↓), best quality first."""
    pts = [t for t in trials if t.observation]
    better_high = OBJECTIVES[objective][1]

    def obj(t: Trial) -> float:
        v = objective_value(t.observation or {}, objective)
        return v if better_high else -v

    front: list[Trial] = []
    for i, t in enumerate(pts):
        d, o = _drop(t), obj(t)

        def beats(j: int, u: Trial, i: int = i, d: float = d, o: float = o) -> bool:
            ud, uo = _drop(u), obj(u)
            if (ud, uo) == (d, o):
                return j < i  # a tie: the earlier trial (simpler recipe) stands for both
            return ud <= d and uo >= o

        if not any(beats(j, u) for j, u in enumerate(pts) if j != i):
            front.append(t)
    return sorted(front, key=_drop)


def in_bound(data: dict[str, Any], t: dict[str, Any]) -> tuple[bool, str]:
    """Whether a measured trial meets the run's quality bound, and why (from the trial when
    the run recorded it, else judged again with the same function)."""
    if "within_bound" in t:
        return t["within_bound"], t.get("bound", "")
    return within_bound(data["task"], t["observation"]["quality"], data["max_drop"])


def pareto_table(trials: list[Trial], objective: str) -> list[Trial]:
    """The Pareto set within the bound (`within_bound` set on each measured trial), plus the
    trials outside the bound that would be on the front if the bound were ignored, so the
    table shows what the bound cost. Best quality first."""
    measured = [t for t in trials if t.observation]
    inside = pareto_front([t for t in measured if t.within_bound], objective)
    outside = [t for t in pareto_front(measured, objective) if not t.within_bound]
    return sorted(inside + outside, key=_drop)


def _quality_str(q: dict[str, Any], metric: bool = True) -> str:
    """The quality figures: the user's metric first (unless `metric` is False), then
    agreement with the original."""
    ci = q.get("ci95", {})
    figures = [f"{k} {v:.4f}" + (f" [{ci[k][0]:.4f}, {ci[k][1]:.4f}]" if k in ci else "")
               for k, v in q.items()
               if k not in ("reference_perplexity", "min_cosine", "ci95", METRIC_KEY)]
    mine = metric_text(q) if metric else ""
    return ", ".join(([mine] if mine else []) + figures)


def unit(obs: dict[str, Any], objective: str) -> str:
    """The objective's unit for this observation (an LM's speed is generation)."""
    return objective_figure(obs, objective) if "generation" in obs else UNITS[objective]


def _fmt_obs(obs: dict[str, Any] | None, objective: str, baseline: dict[str, Any]) -> str:
    if obs is None:
        return "—"
    mine = metric_text(obs.get("quality"))
    return (f"{objective_value(obs, objective):.4g} {unit(obs, objective)} "
            f"(×{gain(obs, baseline, objective):.2f} vs baseline); "
            + (f"{mine}; agreement: {_quality_str(obs['quality'], metric=False)}"
               if mine else f"drop {obs['quality_drop']:.4f}"))


# a trial's colour in the plots by its decision (red: the rest)
COLOURS = {Decision.BASELINE: "black", Decision.KEPT: "tab:green"}


def write_plots(out: Path, data: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective = data["objective"]
    trials = [t for t in data["trials"] if t.get("observation")]
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    outside_label: str | None = "outside the bound (any criterion)"
    for t in trials:
        ok, why = in_bound(data, t)
        colour = COLOURS.get(t["decision"], "tab:red")
        # the y axis shows one criterion; a trial that fails another (e.g. top-10 recall)
        # may sit below the bound line, so it is drawn as a cross, never on the front
        ax.scatter(objective_value(t["observation"], objective),
                   t["observation"]["quality_drop"], c=colour, s=30 if ok else 45,
                   marker="o" if ok else "x", label=None if ok else outside_label)
        if not ok:
            outside_label = None  # one legend entry
        # below the line yet outside the bound: say which other criterion it failed
        hidden = not ok and t["observation"]["quality_drop"] <= data["max_drop"]
        ax.annotate(f"{t['action']}\n({why})" if hidden else t["action"],
                    (objective_value(t["observation"], objective),
                     t["observation"]["quality_drop"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    front = [t for t in data["pareto"] if in_bound(data, t)[0]]
    ax.plot([objective_value(t["observation"], objective) for t in front],
            [t["observation"]["quality_drop"] for t in front], "--", c="tab:blue",
            marker="o", mfc="none", ms=10, label="Pareto front within the bound")
    ax.axhline(data["max_drop"], c="grey", lw=0.8, ls=":",
               label=f"bound on the drop in {_bounded(data)}")
    ax.set_xlabel(f"{objective} ({unit(trials[0]['observation'], objective)})"
                  if trials else objective)
    ax.set_ylabel("quality drop vs original")
    ax.set_title(f"{data['model']}: quality vs {objective} (black = baseline, green = kept, "
                 "red = rolled back, x = outside the bound)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    files.append("pareto.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    base = data["baseline"]["observation"]
    xs = [t["step"] for t in trials]
    ys = [gain(t["observation"], base, objective) for t in trials]
    cs = [COLOURS.get(t["decision"], "tab:red") for t in trials]
    ax.scatter(xs, ys, c=cs)
    best_so_far, line = 1.0, []
    for t, y in zip(trials, ys, strict=True):
        if t["decision"] == Decision.KEPT:
            best_so_far = y
        line.append(best_so_far)
    ax.step(xs, line, where="post", c="tab:green", label="best so far")
    ax.axhline(1.0, c="grey", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{objective} gain vs baseline (×)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "trace.png", dpi=120)
    plt.close(fig)
    files.append("trace.png")
    return files


def write_report(out: Path, data: dict[str, Any],
                 clock: Callable[[], float] | None = None) -> None:
    """Plots first, then report.json and report.md: with `clock` (the run's seconds so
    far), the `seconds` they state include the plotting."""
    try:
        data["plots"] = write_plots(out, data)
    except ImportError:  # matplotlib missing: the numbers are still all in the report
        data["plots"] = []
    if clock is not None:
        data["seconds"] = clock()
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(data))


def _header(data: dict[str, Any]) -> list[str]:
    trials = [t for t in data["trials"] if t["decision"] != Decision.SKIPPED]
    skipped = len(data["trials"]) - len(trials)
    budget = (f" of a {data['budget_s']:.0f}s budget" if "budget_s" in data else "")
    lines = [f"# ReAct optimize: {data['model']}", "",
             f"- objective: **{data['objective']}**{_figure(data)}, quality bound: "
             + _bound_line(data),
             *_metric_line(data),
             f"- machine: {data['hardware_summary']}",
             *_search_line(data),
             f"- {len(trials)} trials ({data['reused']} reused from the store"
             + (f", {skipped} skipped for the time budget" if skipped else "")
             + f") in {data['seconds']:.0f}s{budget}; stopped: {data['stop']}",
             f"- result: **{data['verdict']}**"]
    if data.get("end_plan"):
        lines.append(f"- the end of the run was planned from the start: "
                     f"{data['end_plan']['text']}")
    lines += [f"- **not finished**: {e}" for e in data.get("errors", [])]
    lines += [f"- note: {n}" for n in data.get("notes", [])]
    return lines + _left_out_lines(data) + [""]


def _figure(data: dict[str, Any]) -> str:
    """' (what the number is)' where the objective is not the plain one (an LM's speed)."""
    obs = data["baseline"].get("observation") or {}
    return f" ({objective_figure(obs, data['objective'])})" if "generation" in obs else ""


def _left_out_lines(data: dict[str, Any]) -> list[str]:
    """The actions not offered to this model, grouped by why (one line per reason)."""
    by_why: dict[str, list[str]] = {}
    for name, why in data.get("left_out", {}).items():
        by_why.setdefault(why, []).append(name)
    return [f"- left out before the search: {', '.join(names)} — {why}"
            for why, names in by_why.items()]


def _bounded(data: dict[str, Any]) -> str:
    """The figure the bound is on: the user's metric, or the task's agreement score."""
    return data["settings"].get("metric") or data["quality_score"]


def _bound_line(data: dict[str, Any]) -> str:
    name = data["settings"].get("metric")
    if not name:
        return bound_text(data["task"], data["quality_score"], data["max_drop"])
    return (f"drop ≤ {data['max_drop']} in {name} (your metric, relative to the original "
            "model's value on the same held-out items; it replaces agreement with the "
            "original, which is reported beside it)")


def _metric_line(data: dict[str, Any]) -> list[str]:
    """The best's metric beside its agreement with the original (finish.metric_summary)."""
    m = data.get("metric")
    if not m:
        return []
    agree = ", ".join(f"{k} {v:.4f}" for k, v in m["agreement"].items() if v is not None)
    return [f"- {m['name']} of the best: {m['candidate']:.4f} (original {m['reference']:.4f}, "
            f"drop {m['drop']:.4f}); agreement with the original: {agree}"]


def _search_line(data: dict[str, Any]) -> list[str]:
    ref = [f"- {describe_reference(data['reference_outputs'])}"] \
        if data.get("reference_outputs") else []
    return ref + _sizing_line(data)


def item_noun(task: str | None) -> str:
    """What a task's held-out items are called in a report (texts when none is named)."""
    return get_task(task).item_noun if task else "texts"


def _items(data: dict[str, Any]) -> str:
    return item_noun(data.get("task"))


def _sizing_line(data: dict[str, Any]) -> list[str]:
    search, asked = data.get("search"), data["settings"]
    if search and search.get("latency_runs") == 0 and "quality_tokens" in search:
        # a model that generates (planner/lmquality.py): sized in tokens, not to the budget
        amount = (f"{search['n_texts']} held-out {_items(data)}, "
                  f"{search['quality_tokens']} tokens, a fixed amount whatever the budget"
                  if search["quality_tokens"] else f"{search['n_texts']} held-out "
                  f"{_items(data)} (as asked)")
        return [f"- each trial's quality pass scored {amount}; no batch-1 latency runs: a "
                "model that generates is judged by its generation as served"]
    if not search or (search["n_texts"], search["latency_runs"]) == (asked["n_eval"],
                                                                     asked["latency_runs"]):
        return []
    return [f"- each trial measured on {search['n_texts']} held-out {_items(data)} (of "
            f"{asked['n_eval']}"
            f" asked) and {search['latency_runs']} latency runs (of "
            f"{asked['latency_runs']}): sized so that measuring one model takes about a fifth "
            "of the time budget"]


def _side_by_side(data: dict[str, Any], conf: dict[str, Any]) -> list[str]:
    """The re-measure's table; the ratios come from `gain()`, as the headline's does."""
    b, o = conf["baseline"], conf["best"]
    unseen = " the search never judged on" if conf.get("unseen") else ""
    lines = ["## Baseline vs best (re-measured side by side on "
             f"{conf['n_eval']} held-out {_items(data)}{unseen})", "",
             "The headline's figure is this table's row for the objective; the trace below "
             "holds the search's own measurements (on "
             f"{data.get('search', {}).get('n_texts', data['settings']['n_eval'])} "
             f"{_items(data)}).", "",
             "| | baseline | best | ratio |", "|---|---|---|---|"]
    # the scoring figures' own ratios (for an LM, gain() reads generation: rows above)
    rows = [(f"throughput @ batch {b['throughput']['batch_size']} (items/s)",
             b["throughput"]["items_per_s"], o["throughput"]["items_per_s"],
             o["throughput"]["items_per_s"] / b["throughput"]["items_per_s"])]
    if "latency_ms" in b and "latency_ms" in o:  # an LM is not run at batch 1: none
        bl, ol = b["latency_ms"], o["latency_ms"]
        rows += [("latency p50 @ batch 1 (ms)", bl["p50"], ol["p50"], bl["p50"] / ol["p50"]),
                 ("latency p95 @ batch 1 (ms)", bl["p95"], ol["p95"], bl["p95"] / ol["p95"])]
    rows.append(("size (MiB)", b["size_mb"], o["size_mb"], gain(o, b, "size")))
    if "generation" in b and "generation" in o:  # an LM's speed: generation as served
        gb, go, n = b["generation"], o["generation"], b["generation"]["streams"]
        rows[:0] = [(f"generation tok/s @ {n} streams", gb["tok_s_n"], go["tok_s_n"],
                     go["tok_s_n"] / gb["tok_s_n"]),
                    ("generation tok/s @ 1 stream", gb["tok_s_1"], go["tok_s_1"],
                     go["tok_s_1"] / gb["tok_s_1"]),
                    ("TTFT, 1 stream (ms)", gb["ttft_ms"], go["ttft_ms"],
                     gb["ttft_ms"] / go["ttft_ms"])]
    for name, x, y, ratio in rows:
        lines.append(f"| {name} | {x:.4g} | {y:.4g} | ×{ratio:.2f} "
                     f"{'better' if ratio >= 1 else 'worse'} |")
    m = o["quality"].get(METRIC_KEY)
    if m:  # the user's metric of each model, and the relative drop the bound is on
        lines.append(f"| {m['name']} (your metric) | {m['reference']:.4f} | "
                     f"{m['candidate']:.4f} | drop {m['drop']:.4f} |")
    lines.append(f"| quality vs original | 1 | "
                 f"{_quality_str(o['quality'], metric=False)} | |")
    if "within_bound" in conf:
        lines.append(f"| within the bound | | {'yes' if conf['within_bound'] else 'no'}: "
                     f"{conf['bound']} | |")
    return lines + [""]


def _fallback_line(t: dict[str, Any]) -> list[str]:
    """The layers a trial kept in higher precision (planner/repair.py), by name."""
    opts = t["candidate"].get("backend_options", {})
    return [f"- Kept in higher precision ({key}, {len(opts[key])} of the layers): "
            + ", ".join(f"`{name}`" for name in opts[key])
            for key in FALLBACK_OPTIONS if opts.get(key)]


def render_markdown(data: dict[str, Any]) -> str:
    obj = data["objective"]
    base = data["baseline"]["observation"]
    lines = _header(data)
    conf = data.get("confirm")
    if conf:
        lines += _side_by_side(data, conf)
    lines += generation_lines(data, in_bound)
    lines += [f"Best recipe: `{data['best_recipe']}`", "",
              "## Trace (thought → action → observation)", ""]
    by_key = {t["key"]: t for t in data["trials"] if t["decision"] != Decision.SKIPPED}
    for t in data["trials"]:
        reused = " *(reused from store)*" if t.get("reused") else ""
        parent = by_key.get(t.get("parent") or "")
        on = f" — on step {parent['step']} ({parent['action']})" if parent else ""
        lines += [f"**{t['step']}. {t['action']}**{on} — {t['decision']}{reused}",
                  f"- Thought: {t['thought']}",
                  f"- Action: `{json.dumps(t['candidate'])}`",
                  *_fallback_line(t),
                  f"- Observation: {_fmt_obs(t.get('observation'), obj, base)}",
                  f"- Decision: {t['decision']} — {t['reason']}", ""]
    lines += ["## Pareto set (quality vs " + obj + (f", {unit(base, obj)}" if base else "")
              + ")", "",
              "| variant | " + obj + " | quality drop | within bound | artifact |",
              "|---|---|---|---|---|"]
    for t in data["pareto"]:
        o = t["observation"]
        ok, why = in_bound(data, t)
        lines.append(f"| {t['action']} | {objective_value(o, obj):.4g} | {o['quality_drop']:.4f} "
                     f"| {'yes' if ok else 'no: ' + why} | {t.get('artifact') or '—'} |")
    lines.append("")
    for p in data.get("plots", []):
        lines.append(f"![{p}]({p})")
    return "\n".join(lines) + "\n"
