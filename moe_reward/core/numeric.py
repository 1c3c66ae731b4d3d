"""Numeric helpers that know nothing of reward models."""

from __future__ import annotations

import numpy as np


def column_moments(*arrays: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population standard deviation over the rows of several [N, D] arrays (any
    float dtype, memory-mapped or not), accumulated in float64 `chunk` rows at a time: no float64 copy
    of a whole array (a million rows at scale)."""
    width = arrays[0].shape[1]
    n, total, squares = 0, np.zeros(width), np.zeros(width)
    for a in arrays:
        for s in range(0, len(a), chunk):
            x = np.asarray(a[s : s + chunk], np.float64)
            n, total, squares = n + len(x), total + x.sum(0), squares + (x * x).sum(0)
    mean = total / max(n, 1)
    return mean, np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0))


def column_std(*arrays: np.ndarray, sample: bool = True) -> np.ndarray:
    """Per-column standard deviation over the rows of several arrays (`column_moments`); the sample
    (n - 1) estimate unless `sample` is False."""
    mean, std = column_moments(*arrays)
    n = sum(len(a) for a in arrays)
    if sample and n > 1:
        std = std * np.sqrt(n / (n - 1))
    return std.astype(np.float32)
