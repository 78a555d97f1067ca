"""Scale-out on Ray: batch inference, serving replicas, heterogeneous and pipeline
parallelism, aggregation and result compression.

    from reactinfer.cluster import run_batch, run_sharded, WorkerSpec, compress_embeddings

This is the only package that uses Ray, and only through `cluster.ray_api`; importing
`reactinfer` or `reactinfer.cluster` (or any name below, until it is called) does not
import Ray. See docs/cluster.md.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "run_batch": "reactinfer.cluster.batch:run_batch",
    "serve": "reactinfer.cluster.serve_ray:run",
    "WorkerSpec": "reactinfer.cluster.shard:WorkerSpec",
    "run_sharded": "reactinfer.cluster.shard:run_sharded",
    "run_pipeline": "reactinfer.cluster.pipeline:run_pipeline",
    "ordered_gather": "reactinfer.cluster.aggregate:ordered_gather",
    "ensemble": "reactinfer.cluster.aggregate:ensemble",
    "run_ensemble": "reactinfer.cluster.aggregate:run_ensemble",
    "compress_embeddings": "reactinfer.cluster.aggregate:compress_embeddings",
    "decompress_embeddings": "reactinfer.cluster.aggregate:decompress_embeddings",
    "compression_report": "reactinfer.cluster.aggregate:compression_report",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
