"""Measurement: latency, throughput, memory, size, quality; reports; and the choices made
by measuring on this machine (which backend, how many threads, which batch size)."""
from .choose import choose_backend
from .harness import bench, measure, percentiles, reference_for
from .report import format_report
from .tuning import tune_batch_size, tune_threads

__all__ = ["bench", "choose_backend", "format_report", "measure", "percentiles",
           "reference_for", "tune_batch_size", "tune_threads"]
