"""Compression techniques, one module each; each registers its configs on import."""
from .quantize import (CastHalf, QuantizeDynamicInt8, QuantizeStaticInt8, QuantizeWeightOnly,
                       layer_sensitivity)

__all__ = ["CastHalf", "QuantizeDynamicInt8", "QuantizeStaticInt8", "QuantizeWeightOnly",
           "layer_sensitivity"]
