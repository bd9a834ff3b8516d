"""Plaintext 1-nearest-neighbour classification (the worker's KNN operation, reference 5 and 8).

Despite the name the original is 1-NN: each record takes the label of its nearest model row. Metrics:
Manhattan (sum |x - y|, the original's default, spelt "MANHATHAN" there) or squared Euclidean
(sum (x - y)^2, same argmin as Euclidean). Distances are computed in row blocks so that no
n_records x n_model x a temporary exceeds a few tens of MB. Ties go to the first model row.

No leakage concerns: plaintext model and records.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from core.errors import CoreError

__all__ = ["Metric", "knn_predict", "nearest_indices", "normalise_metric", "pairwise_distances"]

Metric = Literal["manhattan", "euclidean"]
_ALIASES: dict[str, Metric] = {
    "manhattan": "manhattan",
    "manhathan": "manhattan",
    "cityblock": "manhattan",
    "l1": "manhattan",
    "euclidean": "euclidean",
    "sqeuclidean": "euclidean",
    "l2": "euclidean",
}
_BLOCK_ELEMENTS = 1 << 22


def normalise_metric(metric: str) -> Metric:
    """Map the accepted spellings (including the original's "MANHATHAN") to "manhattan"/"euclidean"."""
    try:
        return _ALIASES[str(metric).strip().lower()]
    except KeyError:
        raise CoreError(f"unknown distance metric {metric!r}; use 'manhattan' or 'euclidean'") from None


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise CoreError(f"{name} must be 2-D, got shape {arr.shape}")
    return arr


def _blocks(n_rows: int, n_cols: int, a: int) -> range:
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols * a))
    return range(0, n_rows, step)


def _block_distances(x: np.ndarray, y: np.ndarray, metric: Metric, buf: np.ndarray) -> np.ndarray:
    np.subtract(x[:, None, :], y[None, :, :], out=buf)
    if metric == "manhattan":
        np.abs(buf, out=buf)
    else:
        np.square(buf, out=buf)
    return buf.sum(axis=2)


def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str = "manhattan") -> np.ndarray:
    """(n_a, n_b) matrix of Manhattan or squared-Euclidean distances, computed in row blocks."""
    x = _as_2d(a, "a")
    y = _as_2d(b, "b")
    if x.shape[1] != y.shape[1]:
        raise CoreError(f"attribute counts differ: {x.shape[1]} vs {y.shape[1]}")
    met = normalise_metric(metric)
    out = np.empty((x.shape[0], y.shape[0]))
    blocks = _blocks(x.shape[0], y.shape[0], x.shape[1])
    buf = np.empty((min(blocks.step, max(1, x.shape[0])), y.shape[0], x.shape[1]))
    for lo in blocks:
        hi = min(x.shape[0], lo + blocks.step)
        out[lo:hi] = _block_distances(x[lo:hi], y, met, buf[: hi - lo])
    return out


def nearest_indices(model: np.ndarray, records: np.ndarray, metric: str = "manhattan") -> np.ndarray:
    """Index (int64) of the nearest model row for every record (first on ties), without an n x n matrix."""
    y = _as_2d(model, "model")
    x = _as_2d(records, "records")
    if y.shape[0] == 0:
        raise CoreError("model is empty")
    if x.shape[1] != y.shape[1]:
        raise CoreError(f"attribute counts differ: records {x.shape[1]} vs model {y.shape[1]}")
    met = normalise_metric(metric)
    idx = np.empty(x.shape[0], dtype=np.int64)
    blocks = _blocks(x.shape[0], y.shape[0], x.shape[1])
    buf = np.empty((min(blocks.step, max(1, x.shape[0])), y.shape[0], x.shape[1]))
    for lo in blocks:
        hi = min(x.shape[0], lo + blocks.step)
        idx[lo:hi] = np.argmin(_block_distances(x[lo:hi], y, met, buf[: hi - lo]), axis=1)
    return idx


def knn_predict(
    model: np.ndarray, model_labels: np.ndarray, records: np.ndarray, metric: str = "manhattan"
) -> np.ndarray:
    """1-NN: the label of the nearest model row for every record."""
    labels = np.asarray(model_labels).reshape(-1)
    if labels.size != np.asarray(model).shape[0]:
        raise CoreError(f"{labels.size} model labels for {np.asarray(model).shape[0]} model rows")
    return labels[nearest_indices(model, records, metric)]
