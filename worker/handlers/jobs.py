"""CPU-bound steps of the non-CKKS operations, run in the compute pool (``ctx.compute``).

Every function here is a picklable top-level function: it receives numpy arrays and plain values,
calls the pure core, and returns arrays and plain values. No I/O, no asyncio, no settings: the handler
fetched the inputs and will store the outputs. Core errors (``CoreError``, a ``ValueError``) propagate
and are mapped to 400 by the runtime; handlers validate shapes first so those are the exception.
"""

from __future__ import annotations

import numpy as np

from core.algorithms import dbskmeans, knn, nnc, skmeans, sknn
from core.algorithms.kmeans import KMeans
from core.algorithms.lr import LogisticRegression

__all__ = [
    "dbsnnc_labels",
    "kmeans_fit",
    "knn_predict",
    "lr_predict",
    "lr_train",
    "nnc_labels",
    "secure_kmeans_step1",
    "sknn_distances",
]


# ------------------------------------------------------------------ clustering
def kmeans_fit(data: np.ndarray, k: int, max_iterations: int, tolerance: float) -> tuple[np.ndarray, int]:
    """Plaintext Euclidean k-means from the first k rows: (labels int64, iterations)."""
    model = KMeans(n_clusters=k, max_iter=max_iterations, tol=tolerance).fit(data)
    return np.asarray(model.labels_, dtype=np.int64), int(model.n_iter_)


def secure_kmeans_step1(
    encrypted_data: np.ndarray,
    udm: np.ndarray,
    k: int,
    start: bool,
    previous_centroids: np.ndarray | None,
    double_blind: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One encrypted phase: (labels, previous centroids, new centroids, encrypted shift).

    The previous centroids are returned too because the worker stores them as ``<P>centi``: at START
    they are the first k encrypted records, which the core derives internally.
    """
    phase = dbskmeans.encrypted_phase if double_blind else skmeans.encrypted_phase
    result = phase(encrypted_data, udm, k, start, previous_centroids)
    if previous_centroids is None:
        previous = np.asarray(encrypted_data[:k], dtype=np.float64)
    else:
        previous = np.asarray(previous_centroids, dtype=np.float64)
    return result.labels, previous, result.centroids, result.shift


def nnc_labels(dm: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """Plaintext NNC; threshold -1 means the smallest non-zero distance. Returns (labels, threshold used)."""
    used = nnc.resolve_threshold(dm, threshold)
    return nnc.nnc(dm, used), used


def dbsnnc_labels(encrypted_dm: np.ndarray, encrypted_threshold: float) -> np.ndarray:
    """NNC on an FDH-OPE-encrypted distance matrix with an encrypted threshold (comparisons only)."""
    return nnc.dbsnnc(encrypted_dm, encrypted_threshold)


# ------------------------------------------------------------------ classification
def knn_predict(model: np.ndarray, labels: np.ndarray, records: np.ndarray, metric: str) -> np.ndarray:
    """Plaintext 1-NN: the label of the nearest model row for every record."""
    return np.asarray(knn.knn_predict(model, labels, records, metric))


def sknn_distances(
    encrypted_records: np.ndarray, encrypted_model: np.ndarray, metric: str
) -> tuple[np.ndarray, bool]:
    """SKNN step 1: (n_rec x n_model x m^2 exact squared Euclidean, or x m approximate Manhattan, exact)."""
    result = sknn.encrypted_distances(encrypted_records, encrypted_model, metric)
    return result.values, bool(result.exact)


# ------------------------------------------------------------------ machine learning
def lr_train(
    x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch logistic regression from zero weights: (weights (a,), bias (1,)); see core.algorithms.lr."""
    model = LogisticRegression(epochs=epochs, learning_rate=learning_rate).fit(x, y)
    return model.weights_, np.array([model.bias_], dtype=np.float64)


def lr_predict(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """Predicted classes (int64, 0/1), decided on the margin x.w + b >= 0."""
    return LogisticRegression.from_weights(weights, bias).predict(x)
