"""The objectives the planner optimizes, and how two observations compare on one."""
from __future__ import annotations

from typing import Any

OBJECTIVES = {  # name → (observation path, higher is better)
    "throughput": (("throughput", "items_per_s"), True),
    "latency": (("latency_ms", "p50"), False),
    "size": (("size_mb",), False),
}


def objective_value(obs: dict[str, Any], objective: str) -> float:
    path, _ = OBJECTIVES[objective]
    v: Any = obs
    for p in path:
        v = v[p]
    return float(v)


def gain(obs: dict[str, Any], ref: dict[str, Any], objective: str) -> float:
    """How many times better `obs` is than `ref` on the objective (>1 is better)."""
    a, b = objective_value(obs, objective), objective_value(ref, objective)
    return a / b if OBJECTIVES[objective][1] else b / a
