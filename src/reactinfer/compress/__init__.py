"""Compression techniques, one module each; each registers its configs on import."""
import sys
import types
from typing import Any

from .distill import Distill, recalibrate_batchnorm
from .merge import EnsembleRunner, MergeWeights, ensemble, merge_models, tree_merge
from .prune import DropLayers, Prune2of4, PruneFFN, PruneHeads, PruneMagnitude, sparsity
from .quantize import (CastHalf, QuantizeDynamicInt8, QuantizeStaticInt8, QuantizeWeightOnly,
                       layer_sensitivity)

__all__ = ["CastHalf", "Distill", "DropLayers", "EnsembleRunner", "MergeWeights", "Prune2of4",
           "PruneFFN", "PruneHeads", "PruneMagnitude", "QuantizeDynamicInt8",
           "QuantizeStaticInt8", "QuantizeWeightOnly", "ensemble", "layer_sensitivity",
           "merge_models", "recalibrate_batchnorm", "sparsity", "tree_merge"]


class _CallableModule(types.ModuleType):
    """`reactinfer.compress` is both this package and the verb `compress(handle, configs)`:
    once the package is imported it shadows the lazily exported function on `reactinfer`,
    so the package itself is made callable and forwards to the function."""

    def __call__(self, handle: Any, configs: Any) -> Any:
        from ..core.transform import compress

        return compress(handle, configs)


sys.modules[__name__].__class__ = _CallableModule
