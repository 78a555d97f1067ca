"""Compression techniques, one module each; each registers its configs on import."""
from .prune import DropLayers, Prune2of4, PruneFFN, PruneHeads, PruneMagnitude, sparsity
from .quantize import (CastHalf, QuantizeDynamicInt8, QuantizeStaticInt8, QuantizeWeightOnly,
                       layer_sensitivity)

__all__ = ["CastHalf", "DropLayers", "Prune2of4", "PruneFFN", "PruneHeads", "PruneMagnitude",
           "QuantizeDynamicInt8", "QuantizeStaticInt8", "QuantizeWeightOnly",
           "layer_sensitivity", "sparsity"]
