"""Agreement measures the owner uses to compare secure results with plaintext references.

Adjusted Rand index is permutation-invariant (cluster ids may differ between runs), which is why
it is used instead of accuracy for clustering (reference 9: Rory's Jaccard is not invariant).
Implemented in numpy so the client does not need scikit-learn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "adjusted_rand_index", "contingency"]


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts n_ij of items with label i in ``a`` and j in ``b`` (labels re-coded 0..c-1)."""
    x = np.asarray(a).reshape(-1)
    y = np.asarray(b).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"label vectors differ in length: {x.size} vs {y.size}")
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((int(xi.max(initial=-1)) + 1, int(yi.max(initial=-1)) + 1), dtype=np.int64)
    np.add.at(table, (xi, yi), 1)
    return table


def _pairs(v: np.ndarray) -> float:
    v = v.astype(np.float64)
    return float(np.sum(v * (v - 1) / 2))


def adjusted_rand_index(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Hubert-Arabie ARI: 1 for identical partitions (up to relabelling), ~0 for random ones.

    Degenerate cases follow scikit-learn: both partitions trivial (one cluster, or all singletons
    on both sides) give 1.0.
    """
    table = contingency(truth, predicted)
    n = int(table.sum())
    if n < 2:
        return 1.0
    index = _pairs(table)
    rows = _pairs(table.sum(axis=1))
    cols = _pairs(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = rows * cols / total
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of equal entries."""
    x = np.asarray(truth).reshape(-1)
    y = np.asarray(predicted).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"label vectors differ in length: {x.size} vs {y.size}")
    if x.size == 0:
        return 1.0
    return float(np.mean(x == y))
