"""95% confidence intervals for quality figures, from per-item values of one eval sample.

Every quality figure is a mean over the eval texts (or over queries), so its uncertainty
comes from which texts were drawn:
- per-item means (mean cosine): the normal interval with the sample standard error;
- proportions of yes/no items (top-1 agreement, accuracy): the Wilson score interval, which
  does not collapse to zero width at 0% or 100% as the standard error does (100 agreements
  of 100 still leave [0.963, 1]);
- ratios of sums (perplexity, token agreement: a text with more tokens weighs more): the
  linearised (delta-method) standard error of a ratio estimator, over texts;
- top-10 recall, whose per-query values share documents: bootstrapped over queries with a
  fixed seed, so the same results give the same interval on every run.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 0
CI_KEY = "ci95"  # quality[CI_KEY][figure] = [low, high]


def mean_ci(values: np.ndarray) -> list[float]:
    """Mean ± 1.96 standard errors of per-item values (one item: a zero-width interval)."""
    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return [m - half, m + half]


def proportion_ci(hits: np.ndarray) -> list[float]:
    """Wilson score interval of the share of true items in `hits` (booleans or 0/1)."""
    x = np.asarray(hits, dtype=np.float64)
    n = len(x)
    if n == 0:
        return [float("nan"), float("nan")]
    p, z2 = float(x.mean()), Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))]  # p is inside


def ratio_ci(num: np.ndarray, den: np.ndarray) -> list[float]:
    """Σnum / Σden ± 1.96 standard errors, per-item pairs (num_i, den_i): the ratio
    estimator's linearised variance var(num_i - R·den_i) / (n · mean(den)²)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    r = float(a.sum() / max(b.sum(), 1e-300))
    n = len(a)
    if n < 2:
        return [r, r]
    resid = a - r * b
    half = Z95 * math.sqrt(float(resid.var(ddof=1)) / n) / max(float(b.mean()), 1e-300)
    return [r - half, r + half]


def bootstrap_ci(values: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                 seed: int = BOOTSTRAP_SEED) -> list[float]:
    """2.5th and 97.5th percentiles of the mean over `rounds` resamples (seeded)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        m = float(x.mean()) if len(x) else float("nan")
        return [m, m]
    picks = np.random.default_rng(seed).integers(0, len(x), size=(rounds, len(x)))
    means = x[picks].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
