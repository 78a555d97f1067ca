"""Measurement: latency, throughput, memory, size, quality; reports."""
from .measure import bench, measure, percentiles, reference_for
from .report import format_report

__all__ = ["bench", "format_report", "measure", "percentiles", "reference_for"]

from ..core.verbs import make_callable  # noqa: E402

make_callable(__name__, "bench")  # `reactinfer.bench(model, ...)` (core/verbs.py)
