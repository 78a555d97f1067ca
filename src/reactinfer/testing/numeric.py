"""Numeric helpers for judging lossy transforms."""
from __future__ import annotations

import numpy as np


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is closer; inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = ref - np.asarray(approx, dtype=np.float64)
    n = float(np.sum(noise**2))
    if n == 0.0:
        return float("inf")
    return float(10 * np.log10(float(np.sum(ref**2)) / n))
