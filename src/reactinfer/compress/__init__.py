"""Compression techniques, one module each; each registers its configs on import."""
from .distill import Distill, recalibrate_batchnorm
from .merge import EnsembleRunner, MergeWeights, ensemble, merge_models, tree_merge
from .prune import DropLayers, Prune2of4, PruneFFN, PruneHeads, PruneMagnitude, sparsity
from .quantize import (CastHalf, QuantizeDynamicInt8, QuantizeStaticInt8, QuantizeWeightOnly,
                       layer_sensitivity)

__all__ = ["CastHalf", "Distill", "DropLayers", "EnsembleRunner", "MergeWeights", "ensemble", "merge_models",
           "tree_merge", "Prune2of4", "PruneFFN", "PruneHeads", "PruneMagnitude",
           "QuantizeDynamicInt8", "QuantizeStaticInt8", "QuantizeWeightOnly",
           "layer_sensitivity", "recalibrate_batchnorm", "sparsity"]
