"""NNC (nearest-neighbour threshold clustering) and DBSNNC (the same on FDH-OPE ciphertexts), reference 4.

Definition (the original's single pass): cluster 0 = {record 0}; for x = 1..n-1, among the existing
clusters take the one whose closest member is nearest, delta_C = min_{y in C} DM[x, y] (first cluster on
ties); join it if delta <= threshold, else open a new cluster. Labels are cluster creation indices.

Vectorised formulation used here (no loop over records). The cluster with the smallest delta is the
cluster of x's nearest earlier record, since min_C min_{y in C} DM[x, y] = min_{y < x} DM[x, y]. So:
* mn[x] = min_{y<x} DM[x, y] and p[x] = argmin (one blocked pass over the lower triangle);
* x joins iff mn[x] <= threshold; then x belongs to the cluster of p[x]: the clusters are the trees of
  the forest x -> p[x], their roots are the records that opened a cluster, and labels are the ranks of
  the roots (clusters are created in record order). Roots are found by pointer jumping (log depth);
* ties: when several earlier records are at distance mn[x] the original takes the cluster with the
  smallest index, i.e. root(x) = min over tied y of root(y). This is solved by re-pointing each tied
  record at its tied candidate with the smallest root and re-running pointer jumping until the roots
  are stable (the unique fixpoint of that recursion; usually one extra round, only when ties exist).

Only the strict lower triangle (DM[x, y], y < x) is read, and only comparisons are used, so the same
code runs on an FDH-OPE-encrypted DM with an encrypted threshold (DBSNNC). Labels equal plaintext NNC
whenever no two compared distances are closer than the OPE sensitivity; use
`core.crypto.fdhope.encrypt_threshold` for the threshold so that distances equal to the threshold
(the default threshold is one of the distances!) still compare as "<=".

Leakage (DBSNNC worker): the order of every pair of distances (and their OPE images), the threshold's
rank among them, the labels. NNC receives the plaintext DM.
"""

from __future__ import annotations

import numpy as np

from core.errors import CoreError

__all__ = ["dbsnnc", "default_threshold", "nnc", "resolve_threshold"]

_BLOCK_ELEMENTS = 1 << 22


def default_threshold(dm: np.ndarray) -> float:
    """The original's default (request threshold -1): the smallest positive entry of the plaintext DM."""
    d = np.asarray(dm, dtype=np.float64)
    pos = d[d > 0]
    return float(pos.min()) if pos.size else 0.0


def resolve_threshold(dm: np.ndarray, threshold: float) -> float:
    """`threshold`, or `default_threshold(dm)` when it is -1. Call on the PLAINTEXT DM (reference 4.2)."""
    return default_threshold(dm) if threshold == -1 else float(threshold)


def _check_dm(dm: np.ndarray) -> np.ndarray:
    d = np.asarray(dm)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise CoreError(f"distance matrix must be square, got shape {d.shape}")
    return d


def _lower_min(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row x: min and first argmin over y < x, and whether the min is attained more than once."""
    n = d.shape[0]
    mn = np.full(n, np.inf)
    arg = np.arange(n, dtype=np.int64)
    tied = np.zeros(n, dtype=bool)
    step = max(1, _BLOCK_ELEMENTS // max(1, n))
    cols = np.arange(n)
    for lo in range(1, n, step):
        hi = min(n, lo + step)
        sub = np.array(d[lo:hi, : hi - 1], dtype=np.float64)
        if np.isnan(sub).any():
            raise CoreError("distance matrix contains NaN")
        sub[cols[None, : hi - 1] >= np.arange(lo, hi)[:, None]] = np.inf
        a = np.argmin(sub, axis=1)
        m = sub[np.arange(hi - lo), a]
        mn[lo:hi] = m
        arg[lo:hi] = a
        tied[lo:hi] = np.count_nonzero(sub == m[:, None], axis=1) > 1
    return mn, arg, tied


def _roots(parent: np.ndarray) -> np.ndarray:
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _resolve_ties(d: np.ndarray, parent: np.ndarray, mn: np.ndarray, tie_rows: np.ndarray) -> np.ndarray:
    """Fixpoint of root(x) = min over tied candidates y of root(y) (see module docstring)."""
    n = d.shape[0]
    root = _roots(parent)
    step = max(1, _BLOCK_ELEMENTS // max(1, n))
    cols = np.arange(n)
    for _ in range(n + 1):
        for lo in range(0, tie_rows.size, step):
            rows = tie_rows[lo : lo + step]
            cand = (d[rows] == mn[rows, None]) & (cols[None, :] < rows[:, None])
            vals = np.where(cand, root[None, :], n)
            parent[rows] = np.argmin(vals, axis=1)
        new_root = _roots(parent)
        if np.array_equal(new_root, root):
            return root
        root = new_root
    raise CoreError("NNC tie resolution did not converge")  # unreachable: n+1 rounds always suffice


def nnc(dm: np.ndarray, threshold: float) -> np.ndarray:
    """Labels (n,) int64 of nearest-neighbour threshold clustering of the distance matrix `dm`.

    `threshold` is used as is (resolve -1 with `resolve_threshold` on the plaintext DM first).
    Works on plaintext distances or on FDH-OPE ciphertexts with an OPE-encrypted threshold.
    """
    d = _check_dm(dm)
    n = d.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    t = float(threshold)
    if np.isnan(t):
        raise CoreError("threshold is NaN")
    mn, arg, tied = _lower_min(d)
    joins = mn <= t
    parent = np.where(joins, arg, np.arange(n, dtype=np.int64))
    tie_rows = np.flatnonzero(joins & tied)
    root = _resolve_ties(d, parent, mn, tie_rows) if tie_rows.size else _roots(parent)
    is_root = parent == np.arange(n)
    rank = np.cumsum(is_root) - 1
    return rank[root].astype(np.int64)


def dbsnnc(encrypted_dm: np.ndarray, encrypted_threshold: float) -> np.ndarray:
    """DBSNNC worker step: NNC on an FDH-OPE-encrypted DM with an encrypted threshold (comparisons only)."""
    return nnc(encrypted_dm, encrypted_threshold)
