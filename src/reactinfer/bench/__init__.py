"""Measurement: latency, throughput, memory, size, quality; reports."""
import sys
import types
from typing import Any

from .measure import bench, measure, percentiles, reference_for
from .report import format_report

__all__ = ["bench", "format_report", "measure", "percentiles", "reference_for"]


class _CallableModule(types.ModuleType):
    """`reactinfer.bench` is both this subpackage and the `bench` function: once anything
    imports the subpackage, Python binds the package attribute to the module, so
    `ri.bench(...)` would fail. Calling the module calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
