"""Numeric helpers for judging lossy transforms, and the tamper check of artifacts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is closer; inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = ref - np.asarray(approx, dtype=np.float64)
    n = float(np.sum(noise**2))
    if n == 0.0:
        return float("inf")
    return float(10 * np.log10(float(np.sum(ref**2)) / n))


def assert_tamper_refused(artifact: Any, name: str) -> None:
    """Flip one byte in the middle of `artifact/name`: loading the artifact must then be
    refused by its sha256."""
    import pytest

    from .. import load
    from ..core.errors import ArtifactError

    path = Path(artifact) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name}.*sha256"):
        load(artifact)
