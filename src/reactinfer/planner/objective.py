"""The objectives the planner optimizes, and how two observations compare on one.

For a model that generates (a causal LM) speed means generation as it will be served:
"throughput" is the aggregate greedy tokens/s at the serving concurrency (`--streams`),
"latency" the milliseconds per token of one stream alone (measure/generation.py). This
is the one place that says so; the report names the figure with `objective_figure`.
"""
from __future__ import annotations

from typing import Any

OBJECTIVES = {  # name → (observation path, higher is better)
    "throughput": (("throughput", "items_per_s"), True),
    "latency": (("latency_ms", "p50"), False),
    "size": (("size_mb",), False),
}
# the same objectives for an observation that holds generation figures
GENERATION = {
    "throughput": (("generation", "tok_s_n"), True),
    "latency": (("generation", "ms_per_token"), False),
}


def _path(obs: dict[str, Any], objective: str) -> tuple[tuple[str, ...], bool]:
    if "generation" in obs and objective in GENERATION:
        return GENERATION[objective]
    return OBJECTIVES[objective]


def objective_value(obs: dict[str, Any], objective: str) -> float:
    if "generation" in obs and objective == "latency":
        return 1e3 / float(obs["generation"]["tok_s_1"])
    v: Any = obs
    for p in _path(obs, objective)[0]:
        v = v[p]
    return float(v)


def objective_figure(obs: dict[str, Any], objective: str) -> str:
    """What the objective's number is, in words, for this observation."""
    if "generation" in obs and objective in GENERATION:
        g = obs["generation"]
        return (f"greedy generation tokens/s at {g['streams']} streams (aggregate)"
                if objective == "throughput" else "ms per generated token, one stream")
    return {"throughput": "items/s", "latency": "p50 ms at batch 1",
            "size": "MB"}[objective]


def gain(obs: dict[str, Any], ref: dict[str, Any], objective: str) -> float:
    """How many times better `obs` is than `ref` on the objective (>1 is better)."""
    a, b = objective_value(obs, objective), objective_value(ref, objective)
    return a / b if _path(obs, objective)[1] else b / a
