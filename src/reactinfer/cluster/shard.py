"""Capability-weighted sharding over heterogeneous workers.

Workers differ (CPU counts, threads, batch size, GPU or not), so equal shards make the
fast ones wait for the slow one. We measure each worker's throughput Cᵢ (rows/s) on
the same probe rows, *all workers at once* so the measurement includes the contention
they will see in the real run, then give worker i a contiguous shard of ≈ N·Cᵢ/ΣC rows
so all finish together. The report has the measured Cᵢ, the shard sizes, each
worker's compute seconds and finish time, and the balance (slowest finish / fastest
finish, 1.0 = perfect), plus what equal shards would have predicted.

On this CPU-only machine the torch backend runs on CPU; `num_gpus` is passed to Ray
for placement, and a GPU worker is only as fast as its backend makes it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.errors import UserError
from . import ray_api
from .aggregate import ordered_gather
from .worker import ModelSource, ModelWorker


@dataclass(frozen=True)
class WorkerSpec:
    num_cpus: float = 1          # what Ray reserves for the actor
    threads: int | None = None   # torch threads (default: num_cpus)
    batch_size: int = 32
    num_gpus: float = 0
    name: str = ""

    def label(self, i: int) -> str:
        threads = self.threads or int(max(1, self.num_cpus))
        return self.name or (f"w{i}(cpus={self.num_cpus:g}, threads={threads}, "
                             f"batch={self.batch_size}, gpus={self.num_gpus:g})")


def capability_shares(capabilities: Sequence[float], n: int) -> list[int]:
    """Split n rows ∝ capabilities (largest-remainder rounding; sums to n exactly)."""
    c = np.asarray(capabilities, dtype=np.float64)
    if len(c) == 0 or np.any(~np.isfinite(c)) or np.any(c <= 0):
        raise UserError(f"capabilities must be positive numbers, got {list(capabilities)}")
    exact = n * c / c.sum()
    shares = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - shares), kind="stable")[: n - shares.sum()]:
        shares[i] += 1
    return shares.tolist()


def _bounds(shares: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(shares)
    return [(int(e - s), int(e)) for s, e in zip(shares, ends, strict=True)]


def run_sharded(model: ModelSource, texts: Sequence[str], workers: Sequence[WorkerSpec],
                weighting: str = "capability", probe_rows: int = 64,
                ray_address: str | None = None) -> dict[str, Any]:
    """Run `model` over `texts` on heterogeneous `workers`; outputs in input order."""
    if weighting not in ("capability", "equal"):
        raise UserError(f"weighting must be 'capability' or 'equal', not {weighting!r}")
    if not workers:
        raise UserError("give at least one worker")
    texts = list(texts)
    probe = texts[:probe_rows]
    with ray_api.session(ray_address):
        actors = []
        for spec in workers:
            cls = ray_api.actor_class(ModelWorker, num_cpus=spec.num_cpus,
                                      num_gpus=spec.num_gpus)
            threads = spec.threads or int(max(1, spec.num_cpus))
            actors.append(cls.remote(model, threads, spec.batch_size))
        caps = ray_api.get([a.probe.remote(probe) for a in actors])
        shares = capability_shares(caps if weighting == "capability" else [1.0] * len(caps),
                                   len(texts))
        t0 = time.time()
        refs = [a.run.remote(np.arange(lo, hi), texts[lo:hi])
                for a, (lo, hi) in zip(actors, _bounds(shares), strict=True)]
        results = ray_api.get(refs)
        for a in actors:
            ray_api.kill(a, no_restart=True)
    outputs = ordered_gather([(r["ids"], r["values"]) for r in results], len(texts))
    finish = [r["finished"] - t0 for r in results]
    total_c = float(sum(caps))
    rows = []
    per_worker = zip(workers, caps, shares, results, finish, strict=True)
    for i, (spec, c, s, r, f) in enumerate(per_worker):
        rows.append({"worker": spec.label(i), "spec": asdict(spec),
                     "capability_rows_per_s": round(c, 2), "weight": round(c / total_c, 4),
                     "rows": s, "compute_s": round(r["seconds"], 3), "finish_s": round(f, 3),
                     "equal_split_predicted_s": round(len(texts) / len(workers) / c, 3)})
    return {"outputs": outputs, "weighting": weighting, "rows": len(texts), "workers": rows,
            "balance": round(max(finish) / max(min(finish), 1e-9), 3),
            "makespan_s": round(max(finish), 3),
            "equal_split_predicted_balance": round(max(caps) / min(caps), 3)}
