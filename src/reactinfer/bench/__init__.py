"""Measurement: latency, throughput, memory, size, quality; reports."""
from .measure import bench, percentiles, reference_for
from .report import format_report

__all__ = ["bench", "format_report", "percentiles", "reference_for"]
