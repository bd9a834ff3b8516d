"""Updatable Distance Matrix (UDM) for secure k-means (SKMeans, DBSKMeans and their CKKS variants).

The UDM lets an untrusted worker assign records to clusters without seeing the records: it holds,
per record x, cluster y and attribute z, the difference U[x, y, z] = D[x, z] - c_y[z] between the record
and the current centroid. Initially the centroids are the first k records, so U[x, y] = D[x] - D[y].

Two layouts are accepted everywhere:

* full, n x n x a (the original's layout: U[x, y] = D[x] - D[y] for every pair), and
* compact, n x k x a (only the k columns the algorithm ever reads: O(n k a) memory).

Both give identical labels and identical updated matrices.

The worker may also keep the UDM as uploaded, U0, and the k x a cumulative shift C = S_1 + ... + S_t
(the sum of every shift applied so far): the current matrix is U0[:, :k] + C (`update_udm(U0, C)`),
and `assign(U0, k, start, offset=C)` scores it without building it. That is the same matrix as
t successive `update_udm` calls up to floating-point rounding order (U0 + (S_1 + S_2) instead of
(U0 + S_1) + S_2), and a round then writes k x a numbers instead of n x k x a
(worker/handlers/secure_kmeans.py, "cumulative UDM").

Correction versus the original (reference section 2.6): after the first update the original kept
reading the transposed entry U[y][x] for x < y, which is only valid while U is antisymmetric, so the
records 0..k-2 were compared with wrong distances from iteration 2 on. Here the matrix always satisfies
U[x, y] = D[x] - c_y and is updated by broadcasting: U' = U[:, :k] + S with S = c_old - c_new.

The same functions work when the UDM holds FDH-OPE ciphertexts (DBSKMeans): the assignment only uses
|.| (OPE is odd, so |OPE(u)| = OPE(|u|) up to its noise) and sums of them; the update adds an
OPE-encrypted shift, which is what the original computes but is NOT homomorphic for OPE (see
`core.algorithms.dbskmeans`). An FDH-OPE UDM must be encrypted element by element (antisymmetric),
not with the original's mirrored lower triangle, for the corrected update to be right.

Leakage: a plaintext UDM reveals the dataset up to one translation per attribute (reference 2.8); an
OPE UDM reveals every per-attribute ordering of records (reference 3.5). The worker also learns labels.
"""

from __future__ import annotations

import numpy as np

from core.errors import CoreError

__all__ = ["accumulate_shift", "assign", "assignment_scores", "build_udm", "update_udm"]

# Upper bound on the number of float64 elements of a temporary built by one block (about 64 MB).
_BLOCK_ELEMENTS = 1 << 23


def _rows_per_block(row_elements: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, row_elements))


def build_udm(data: np.ndarray, k: int | None = None, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Return the UDM of `data` (n x a): full n x n x a when k is None, compact n x k x a otherwise.

    U[x, y, z] = data[x, z] - data[y, z]. The compact form keeps only y < k, which is all the
    algorithm reads when the initial centroids are the first k records.
    """
    d = np.asarray(data)
    if d.ndim != 2:
        raise CoreError(f"data must be 2-D (n x a), got shape {d.shape}")
    n = d.shape[0]
    cols = n if k is None else int(k)
    if not 1 <= cols <= n:
        raise CoreError(f"k must be in [1, n={n}], got {k}")
    d = d.astype(dtype, copy=False)
    out = np.empty((n, cols, d.shape[1]), dtype=dtype)
    step = _rows_per_block(cols * d.shape[1])
    centres = d[None, :cols, :]
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        np.subtract(d[lo:hi, None, :], centres, out=out[lo:hi])
    return out


def _check_udm(udm: np.ndarray, k: int) -> None:
    if udm.ndim != 3:
        raise CoreError(f"UDM must be 3-D (n x n x a or n x k x a), got shape {udm.shape}")
    n, cols, _ = udm.shape
    if not 1 <= k <= n:
        raise CoreError(f"k must be in [1, n={n}], got {k}")
    if cols < k:
        raise CoreError(f"UDM has {cols} cluster columns, fewer than k={k}")


def _check_offset(offset: np.ndarray | None, k: int, a: int) -> np.ndarray | None:
    if offset is None:
        return None
    c = np.asarray(offset)
    if c.shape != (k, a):
        raise CoreError(f"cumulative shift must have shape {(k, a)}, got {c.shape}")
    return c


def assignment_scores(udm: np.ndarray, k: int, offset: np.ndarray | None = None) -> np.ndarray:
    """Return the n x k matrix of scores sum_z |U[x, y, z] + C[y, z]| for y < k (float64, blocked).

    `offset` is the k x a cumulative shift C of the module docstring (None: zero), added block by block
    so that U0[:, :k] + C is never materialised (the blocks bound the temporary to ~64 MB).
    """
    u = np.asarray(udm)
    _check_udm(u, k)
    n, _, a = u.shape
    c = _check_offset(offset, k, a)
    scores = np.empty((n, k), dtype=np.float64)
    step = _rows_per_block(k * a)
    dtype = np.result_type(u.dtype, np.float32) if c is None else np.result_type(u.dtype, c.dtype, np.float32)
    buf = np.empty((min(step, n), k, a), dtype=dtype)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        b = buf[: hi - lo]
        if c is None:
            np.abs(u[lo:hi, :k, :], out=b)
        else:
            np.add(u[lo:hi, :k, :], c[None, :, :], out=b)
            np.abs(b, out=b)
        np.sum(b, axis=2, out=scores[lo:hi], dtype=np.float64)
    return scores


def assign(udm: np.ndarray, k: int, start: bool, offset: np.ndarray | None = None) -> np.ndarray:
    """Assign each record to the cluster with the smallest L1 score (first index on ties).

    With `start` (the first iteration, centroids = first k records) records 0..k-1 are pre-assigned to
    clusters 0..k-1, as the original's START step does; the others take the argmin.
    Accepts the full (n x n x a) and the compact (n x k x a) layouts; `offset` (k x a) scores
    U + offset instead of U (the cumulative form, see the module docstring).
    """
    scores = assignment_scores(udm, k, offset)
    labels = np.argmin(scores, axis=1).astype(np.int64, copy=False)
    if start:
        labels[:k] = np.arange(k, dtype=np.int64)
    return labels


def update_udm(udm: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Return the n x k x a UDM for the new centroids: U'[x, y] = U[x, y] + S[y] with S = c_old - c_new.

    This is the corrected rule (reference 2.6): it keeps U[x, y] = D[x] - c_y for every x, whatever the
    input layout (full or compact). `shift` is the plaintext (SKMeans) or FDH-OPE-encrypted (DBSKMeans)
    k x a shift matrix.
    """
    u = np.asarray(udm)
    s = np.asarray(shift)
    if s.ndim != 2:
        raise CoreError(f"shift must be 2-D (k x a), got shape {s.shape}")
    k, a = s.shape
    _check_udm(u, k)
    if u.shape[2] != a:
        raise CoreError(f"shift has {a} attributes, UDM has {u.shape[2]}")
    dtype = np.result_type(u.dtype, s.dtype, np.float32)
    out = np.empty((u.shape[0], k, a), dtype=dtype)
    np.add(u[:, :k, :], s[None, :, :], out=out)
    return out


def accumulate_shift(cumulative: np.ndarray | None, shift: np.ndarray) -> np.ndarray:
    """Return C + S, the k x a cumulative shift after one more update (C None: the first update).

    Step 2 in the cumulative form: instead of rewriting the n x k x a matrix it adds the k x a shift to
    the running sum, so `update_udm(U0, accumulate_shift(C, S)) == update_udm(update_udm(U0, C), S)` up
    to rounding order. The result is float64 at least (a float32 sum would drift over many rounds).
    """
    s = np.asarray(shift)
    if s.ndim != 2:
        raise CoreError(f"shift must be 2-D (k x a), got shape {s.shape}")
    dtype = np.result_type(s.dtype, np.float64)
    if cumulative is None:
        return np.array(s, dtype=dtype, copy=True)
    c = _check_offset(cumulative, *s.shape)
    assert c is not None
    return np.add(c, s, dtype=np.result_type(c.dtype, dtype))
