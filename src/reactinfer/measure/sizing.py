"""Size one measurement to a time budget: how many held-out texts and batch-1 latency runs
fit, predicted from a probe (a `measure` on a few texts). Used by the planner for every
trial and by `react bench --time-budget-s`."""
from __future__ import annotations

from typing import Any

# one small measurement first, to size the others (an LM's batch of 4 costs seconds on
# a small CPU; a smaller batch than the real one overestimates per text: the safe side)
PROBE_TEXTS = 4
MIN_LATENCY_RUNS = 5


def size_search(probe: dict[str, Any], n_eval: int, latency_runs: int,
                room_s: float, text_cost: float = 1.0) -> tuple[int, int]:
    """Held-out texts and batch-1 latency runs per trial such that measuring one model takes
    about `room_s`, predicted from a probe (`measure` on a few texts, one latency run, no
    generation). At most what was asked; at least two batches and MIN_LATENCY_RUNS runs.
    `text_cost`: each eval text costs this many times the probe's (2: a reference model is
    evaluated on the same texts too)."""
    batch = int(probe["batch_size"])
    per_text = text_cost * float(probe["throughput"]["seconds"]) / max(1, int(probe["n_eval"]))
    one = float(probe["latency_ms"]["mean"]) / 1e3
    # the runner, a warm-up batch and three warm-up runs come with every measurement
    fixed = float(probe.get("prepare_s", 0.0)) + per_text * batch + 3 * one
    if fixed + per_text * n_eval + one * latency_runs <= room_s:
        return n_eval, latency_runs
    share = max(0.0, (room_s - fixed) / (per_text * n_eval + one * latency_runs))
    n = max(min(n_eval, max(10, 2 * batch)), int(n_eval * share) // batch * batch)
    runs = max(min(MIN_LATENCY_RUNS, latency_runs), int(latency_runs * share))
    return min(n, n_eval), min(runs, latency_runs)
