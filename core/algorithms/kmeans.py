"""Plaintext k-means baselines.

* `KMeans`: Euclidean Lloyd with the first k rows as initial centres, the worker's plaintext KMeans
  operation. It reproduces `sklearn.cluster.KMeans(n_clusters=k, init=X[:k], n_init=1,
  algorithm="lloyd")` (same tolerance scaling, strict-convergence test, final E-step and empty-cluster
  relocation) without importing scikit-learn. Caveat: exact distance ties (tie-heavy integer data)
  are decided by float rounding in both implementations and may then be broken differently.
* `l1_kmeans`: Manhattan assignment + mean update, the plaintext reference whose labels the secure
  k-means (SKMeans with the corrected UDM rule) reproduces exactly, iteration by iteration, with the
  same initialisation (first k rows, records 0..k-1 pre-assigned in the first iteration like Rory's
  START step), first-index tie-breaking, empty cluster keeps its previous centroid, and the stopping
  rule max |c_old - c_new| <= tolerance.

No leakage concerns: these run on plaintext (the worker's KMeans operation receives plaintext data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.checks import data_matrix
from core.errors import CoreError

__all__ = ["KMeans", "L1KMeansResult", "l1_assign", "l1_kmeans", "mean_centroids"]

_BLOCK_ELEMENTS = 1 << 22


def _check_k(k: int, n: int) -> int:
    k = int(k)
    if not 1 <= k <= n:
        raise CoreError(f"k must be in [1, n={n}], got {k}")
    return k


def l1_assign(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid in L1 (first index on ties), blocked: no n x k x a temporary."""
    x = np.asarray(data, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    n, a = x.shape
    k = c.shape[0]
    labels = np.empty(n, dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(1, k * a))
    buf = np.empty((min(step, n), k, a))
    scores = np.empty((min(step, n), k))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        b = buf[: hi - lo]
        np.subtract(x[lo:hi, None, :], c[None, :, :], out=b)
        np.abs(b, out=b)
        s = scores[: hi - lo]
        np.sum(b, axis=2, out=s)
        labels[lo:hi] = np.argmin(s, axis=1)
    return labels


def mean_centroids(data: np.ndarray, labels: np.ndarray, k: int, previous: np.ndarray) -> np.ndarray:
    """Per-cluster means (one-hot matmul); an empty cluster keeps its row of `previous`."""
    x = np.asarray(data, dtype=np.float64)
    counts = np.bincount(labels, minlength=k)
    onehot = np.zeros((k, x.shape[0]))
    onehot[labels, np.arange(x.shape[0])] = 1.0
    sums = onehot @ x
    out = np.array(previous, dtype=np.float64, copy=True)
    nz = counts > 0
    out[nz] = sums[nz] / counts[nz, None]
    return out


@dataclass(frozen=True)
class L1KMeansResult:
    labels: np.ndarray
    centroids: np.ndarray
    n_iter: int
    converged: bool


def l1_kmeans(data: np.ndarray, k: int, max_iter: int = 10, tolerance: float = 1e-6) -> L1KMeansResult:
    """L1-assignment / mean-update k-means from the first k rows (reference of the secure k-means).

    Iteration i: assign (first iteration: records 0..k-1 fixed to clusters 0..k-1), recompute means,
    shift = old - new; stop when max |shift| <= tolerance or after `max_iter` iterations. The labels
    returned are those of the last assignment (same as the secure protocol).
    """
    x = data_matrix(data)
    k = _check_k(k, x.shape[0])
    if max_iter < 1:
        raise CoreError(f"max_iter must be >= 1, got {max_iter}")
    centroids = x[:k].copy()
    labels = np.empty(0, dtype=np.int64)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        labels = l1_assign(x, centroids)
        if it == 1:
            labels[:k] = np.arange(k)
        new = mean_centroids(x, labels, k, centroids)
        shift = centroids - new
        centroids = new
        if float(np.max(np.abs(shift))) <= tolerance:
            converged = True
            break
    return L1KMeansResult(labels=labels, centroids=centroids, n_iter=it, converged=converged)


class KMeans:
    """Euclidean Lloyd k-means initialised with the first `n_clusters` rows (or an explicit `init`).

    Attributes after `fit`: `labels_`, `cluster_centers_`, `n_iter_`, `inertia_`.
    """

    def __init__(self, n_clusters: int = 8, *, max_iter: int = 300, tol: float = 1e-4,
                 init: np.ndarray | None = None) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.init = init

    @staticmethod
    def _distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
        # ||c||^2 - 2 x.c (the ||x||^2 term does not change the argmin), as scikit-learn computes it.
        return (centers * centers).sum(axis=1)[None, :] - 2.0 * (x @ centers.T)

    def _assign(self, x: np.ndarray, centers: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        labels = np.empty(n, dtype=np.int64)
        step = max(1, _BLOCK_ELEMENTS // max(1, centers.shape[0]))
        for lo in range(0, n, step):
            labels[lo : lo + step] = np.argmin(self._distances(x[lo : lo + step], centers), axis=1)
        return labels

    @staticmethod
    def _update(x: np.ndarray, labels: np.ndarray, centers_old: np.ndarray) -> np.ndarray:
        k = centers_old.shape[0]
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        onehot = np.zeros((k, x.shape[0]))
        onehot[labels, np.arange(x.shape[0])] = 1.0
        sums = onehot @ x
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # scikit-learn's relocation: the farthest points (from their own centre) seed empty clusters.
            dist = ((x - centers_old[labels]) ** 2).sum(axis=1)
            far = np.argpartition(dist, -empty.size)[: -empty.size - 1 : -1]
            if np.max(dist) != 0:
                for new_id, idx in zip(empty, far, strict=True):
                    old_id = labels[idx]
                    sums[old_id] -= x[idx]
                    sums[new_id] = x[idx]
                    counts[new_id] = 1.0
                    counts[old_id] -= 1.0
        out = sums.copy()
        nz = counts > 0
        out[nz] = sums[nz] / counts[nz, None]
        return out

    def fit(self, X: np.ndarray, y: object = None) -> KMeans:
        x = data_matrix(X)
        k = _check_k(self.n_clusters, x.shape[0])
        init = x[:k] if self.init is None else np.asarray(self.init, dtype=np.float64)
        if init.shape != (k, x.shape[1]):
            raise CoreError(f"init must have shape {(k, x.shape[1])}, got {init.shape}")
        mean = x.mean(axis=0)
        xc = x - mean
        centers = init - mean
        tol = float(np.mean(np.var(x, axis=0)) * self.tol) if self.tol else 0.0
        labels_old = np.full(x.shape[0], -1, dtype=np.int64)
        labels = labels_old
        strict = False
        it = 0
        for it in range(self.max_iter):  # noqa: B007 (it is the iteration count after the loop)
            labels = self._assign(xc, centers)
            new = self._update(xc, labels, centers)
            shift_tot = float(((new - centers) ** 2).sum())
            centers = new
            if np.array_equal(labels, labels_old):
                strict = True
                break
            if shift_tot <= tol:
                break
            labels_old = labels
        if not strict:
            labels = self._assign(xc, centers)
        diff = xc - centers[labels]
        self.inertia_ = float((diff * diff).sum())
        self.labels_ = labels
        self.cluster_centers_ = centers + mean
        self.n_iter_ = it + 1
        return self

    def fit_predict(self, X: np.ndarray, y: object = None) -> np.ndarray:
        return self.fit(X).labels_

    def predict(self, X: np.ndarray) -> np.ndarray:
        x = data_matrix(X)
        return self._assign(x, np.asarray(self.cluster_centers_))
