"""Compression techniques, one module each; each registers its configs on import.
The verb is `reactinfer.compress(handle, configs)` (core/transform.py)."""
from ..core.transform import compress
from .channels import PruneChannels
from .distill import Distill, RecalibrateBatchNorm, recalibrate_batchnorm
from .fold import FoldBatchNorm, conv_bn_pairs
from .merge import EnsembleRunner, MergeWeights, ensemble, merge_models, tree_merge
from .prune import DropLayers, Prune2of4, PruneFFN, PruneHeads, PruneMagnitude, sparsity
from .quantize import (
                       CastHalf,
                       QuantizeDynamicInt8,
                       QuantizeStaticInt8,
                       QuantizeWeightOnly,
                       layer_sensitivity,
)

__all__ = ["CastHalf", "Distill", "DropLayers", "EnsembleRunner", "FoldBatchNorm", "MergeWeights",
           "Prune2of4", "PruneChannels", "PruneFFN", "PruneHeads", "PruneMagnitude",
           "QuantizeDynamicInt8", "RecalibrateBatchNorm", "compress", "conv_bn_pairs",
           "QuantizeStaticInt8", "QuantizeWeightOnly", "ensemble", "layer_sensitivity",
           "merge_models", "recalibrate_batchnorm", "sparsity", "tree_merge"]
