"""SKNN-PQC: secure 1-nearest-neighbour classification over CKKS (reference 5.2; worker protocol 4.11).

Step 1 (worker) computes encrypted squared Euclidean distances; the data owner decrypts, takes the
argmin per record and sends the index vector back; step 2 (worker) maps indices to model labels
(:func:`labels_from_indices`). Two layouts, neither needs rotations (no Galois keys; relin keys for the
squaring):

* ``rows`` (faithful): model and records row-packed; :func:`pair_distances` returns one ciphertext
  ``(x_t − y_m)⊙(x_t − y_m)`` per (record, model row) — n_t·n_m ciphertexts; the data owner sums the
  first a slots of each and takes the argmin (:func:`nearest_from_pairs`).
* ``packed`` (recommended): the model is column-packed (``ckks.encrypt_columns``, blocks of
  B = min(n_m, slots) rows) and each record is encrypted replicated per attribute
  (``ckks.encrypt_replicated(ctx, x_t, B)``); :func:`packed_distances` returns, per record and model
  block, ONE ciphertext holding the squared distances to all B model rows (slot-wise, attributes summed
  homomorphically): n_t·⌈n_m/B⌉ ciphertexts instead of n_t·n_m, and the data owner needs no slot sums
  (:func:`nearest_from_packed`). Same kernel as PQC k-means. (Swapping the roles — records
  column-packed, model rows replicated — gives n_m·⌈n_t/B⌉ outputs, better for large test batches.)

Manhattan is impossible under CKKS: |x − y| is not a polynomial, and CKKS evaluates only additions and
multiplications (a polynomial approximation of |·| would need a known value range and many levels).
The original's "Manhattan" silently computed the *signed* sum Σ(x_z − y_z), which cancels — a bug. We
refuse it with :class:`core.errors.UnsupportedOperation`.

Leakage (worker): ciphertexts, then the nearest-neighbour index of every record and the labels (as in
the original). Ties between model rows are broken by CKKS noise when distances are exactly equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from core.algorithms.knn import normalise_metric
from core.algorithms.pqc_kmeans import block_squared_distances
from core.crypto import ckks
from core.errors import CoreError, UnsupportedOperation

__all__ = [
    "check_metric",
    "labels_from_indices",
    "nearest_from_packed",
    "nearest_from_pairs",
    "packed_distances",
    "packed_distances_bytes",
    "pair_distances",
    "pair_distances_bytes",
]


def check_metric(metric: str) -> None:
    """Accept Euclidean (any spelling); refuse Manhattan with :class:`UnsupportedOperation`."""
    if normalise_metric(metric) != "euclidean":
        raise UnsupportedOperation(
            "SKNN-PQC supports only (squared) Euclidean distance: Manhattan needs |x − y|, which CKKS "
            "cannot evaluate (only + and ×); the original's Manhattan was a signed, cancelling sum"
        )


# --------------------------------------------------------------------------------------------------
# worker


def pair_distances(records: Sequence[ts.CKKSVector], model: Sequence[ts.CKKSVector],
                   metric: str = "euclidean") -> list[list[ts.CKKSVector]]:
    """Faithful layout: ``out[t][m] = (x_t − y_m)²`` slot-wise (one ciphertext per pair)."""
    check_metric(metric)
    if not records or not model:
        raise CoreError("records and model must be non-empty")
    ckks.require_relin_keys(records[0].context())
    if records[0].size() != model[0].size():
        raise CoreError(f"records have {records[0].size()} attributes, the model {model[0].size()}")
    return [[ckks.subtract(x, y).square() for y in model] for x in records]


def packed_distances(model_columns: Sequence[Sequence[ts.CKKSVector]],
                     queries: Sequence[Sequence[ts.CKKSVector]], metric: str = "euclidean"
                     ) -> list[list[ts.CKKSVector]]:
    """Packed layout: ``out[t][b]`` = squared distances of record t to the B model rows of block b."""
    check_metric(metric)
    if not model_columns or not queries:
        raise CoreError("model blocks and records must be non-empty")
    ckks.require_relin_keys(model_columns[0][0].context())
    return [[block_squared_distances(block, q) for block in model_columns] for q in queries]


def labels_from_indices(model_labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Step 2: the label of the nearest model row for every record."""
    labels = np.asarray(model_labels).reshape(-1)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= labels.size):
        raise CoreError(f"indices must lie in 0..{labels.size - 1}")
    return labels[idx]


def pair_distances_bytes(context: bytes, records: Sequence[bytes], model: Sequence[bytes],
                         metric: str = "euclidean") -> list[list[bytes]]:
    """Process-pool wrapper of :func:`pair_distances` (split ``records`` across processes)."""
    ctx = ckks.cached_public_context(context)
    out = pair_distances(ckks.deserialize(ctx, records), ckks.deserialize(ctx, model), metric)
    return [ckks.serialize(row) for row in out]


def packed_distances_bytes(context: bytes, model_columns: Sequence[Sequence[bytes]],
                           queries: Sequence[Sequence[bytes]], metric: str = "euclidean"
                           ) -> list[list[bytes]]:
    """Process-pool wrapper of :func:`packed_distances` (split ``queries`` across processes)."""
    ctx = ckks.cached_public_context(context)
    cols = [ckks.deserialize(ctx, block) for block in model_columns]
    qs = [ckks.deserialize(ctx, q) for q in queries]
    return [ckks.serialize(row) for row in packed_distances(cols, qs, metric)]


# --------------------------------------------------------------------------------------------------
# data owner


def nearest_from_pairs(ctx: ts.Context, dists: Sequence[Sequence[ts.CKKSVector]], a: int) -> np.ndarray:
    """Decrypt ``dists[t][m]``, sum the first a slots, argmin over m (first index on ties)."""
    if not dists:
        raise CoreError("no distances")
    totals = np.stack([ckks.decrypt_vectors(ctx, row, width=a).sum(axis=1) for row in dists])
    return np.argmin(totals, axis=1).astype(np.int64)


def nearest_from_packed(ctx: ts.Context, dists: Sequence[Sequence[ts.CKKSVector]], n_model: int
                        ) -> np.ndarray:
    """Decrypt ``dists[t][b]``, concatenate the blocks, keep n_model slots, argmin per record."""
    if not dists:
        raise CoreError("no distances")
    rows = [ckks.decrypt_vectors(ctx, row).reshape(-1) for row in dists]
    if rows[0].shape[0] < n_model:
        raise CoreError(f"distance blocks cover {rows[0].shape[0]} model rows, expected {n_model}")
    return np.argmin(np.stack([r[:n_model] for r in rows]), axis=1).astype(np.int64)
