"""PQC k-means: Euclidean k-means over column-packed CKKS data where the worker learns only labels.

New protocol (reference 10.4), no UDM and no Galois keys:

* data owner: packs the dataset by columns, ``columns[b][z]`` = attribute z of the records of block b
  (``ckks.encrypt_columns``: blocks of B = min(n, slots) records, last block zero-padded).
* round, part A — worker :func:`distances`: for each block b and cluster j one ciphertext
  ``D[b][j] = Σ_z (columns[b][z] − C[j][z])²`` of the squared Euclidean distances of all B records to
  centroid j; the centroids arrive encrypted and replicated over B slots (``C[j][z]``), so everything is
  slot-wise: a subtractions, a squarings (relin keys, one level), a−1 additions per (b, j).
* data owner :func:`labels_from_distances`: decrypts k vectors per block, argmin over clusters (first
  index on ties) → labels, sent to the worker in plaintext.
* round, part B — worker :func:`masked_sums`: for each cluster j and attribute z,
  ``T[j][z] = Σ_b columns[b][z] ⊙ mask_bj`` with the plaintext one-hot mask of block b (one plaintext
  multiplication per block; blocks without members are skipped). Summing the slots would need
  rotations, so the worker returns the k·a masked vectors (summed over blocks) and
* data owner :func:`centroids_from_sums` decrypts them, sums the slots itself, divides by the counts it
  derives from the labels (empty cluster keeps its centroid), tests convergence and re-encrypts the
  centroids replicated (:func:`encrypt_centroids`) for the next round.

Cost per round (N=8192, B=4096): worker k·a·⌈n/B⌉ squarings + as many plaintext multiplications;
data owner k·a encryptions and k·⌈n/B⌉ + k·a decryptions; wire: k·a fresh ciphertexts in, k·⌈n/B⌉ +
k·a one-level-down ciphertexts out, plus n labels. Independent of the UDM's n×k×a and of n row
ciphertexts per round.

Leakage: the worker sees ciphertexts, the labels (as in every Rory k-means) and nothing else — no UDM,
no shift, no centroid. The data owner learns what it owns anyway.

Equivalence: labels equal plaintext Euclidean Lloyd k-means (``core.algorithms.kmeans.KMeans``,
first-k initialisation) as long as no record is (within CKKS noise, ~1e-7 relative) equidistant from
two centroids — exact ties are broken by noise, not by the first index; the driver stops like
scikit-learn (labels unchanged, or centre shift ≤ tol × mean variance followed by a final assignment).
Empty clusters keep their centroid here, whereas scikit-learn relocates them (rare; documented).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from core.crypto import ckks
from core.errors import CoreError

__all__ = [
    "block_squared_distances",
    "centroids_from_sums",
    "distances",
    "distances_bytes",
    "encrypt_centroids",
    "label_masks",
    "labels_from_distances",
    "masked_sums",
    "masked_sums_bytes",
]

Blocks = Sequence[Sequence[ts.CKKSVector]]


# --------------------------------------------------------------------------------------------------
# worker


def block_squared_distances(block: Sequence[ts.CKKSVector], point: Sequence[ts.CKKSVector]) -> ts.CKKSVector:
    """Σ_z (block[z] − point[z])² slot-wise: squared distances of the block's records to one point.

    ``point[z]`` is the point's attribute z replicated over the block size. Shared with SKNN-PQC.
    """
    if len(block) != len(point) or not block:
        raise CoreError(f"block has {len(block)} attributes, the point {len(point)}")
    for col, c in zip(block, point, strict=True):
        if col.size() != c.size():
            raise CoreError(f"vector sizes differ ({col.size()} vs {c.size()}): replicate the point to the "
                            "block size")
    return ckks.sum_vectors(ckks.subtract(col, c).square() for col, c in zip(block, point, strict=True))


def distances(columns: Blocks, centroids: Blocks) -> list[list[ts.CKKSVector]]:
    """Worker part A: ``out[b][j]`` = encrypted squared distances of block b's records to centroid j."""
    if not columns or not centroids:
        raise CoreError("need at least one block and one centroid")
    ctx = columns[0][0].context()
    ckks.require_relin_keys(ctx)
    ckks.require_levels(columns[0][0], 1, "squared distances")
    return [[block_squared_distances(block, c) for c in centroids] for block in columns]


def label_masks(labels: np.ndarray, k: int, block_size: int, blocks: int) -> np.ndarray:
    """(blocks, k, block_size) 0/1 masks; padding slots (beyond n) belong to no cluster."""
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = lab.shape[0]
    if not (blocks - 1) * block_size < n <= blocks * block_size:
        raise CoreError(f"{n} labels do not fit {blocks} blocks of {block_size} slots")
    if lab.min() < 0 or lab.max() >= k:
        raise CoreError(f"labels must lie in 0..{k - 1}")
    padded = np.full(blocks * block_size, -1, dtype=np.int64)
    padded[:n] = lab
    per_block = padded.reshape(blocks, block_size)
    return (per_block[:, None, :] == np.arange(k)[None, :, None]).astype(np.float64)


def masked_sums(columns: Blocks, labels: np.ndarray, k: int) -> list[list[ts.CKKSVector]]:
    """Worker part B: ``out[j][z] = Σ_b columns[b][z] ⊙ mask_bj`` (data owner sums the slots).

    A cluster with no member anywhere gets a fresh Enc(0) (made with the public key), so the shape is
    always k×a.
    """
    if not columns:
        raise CoreError("no column blocks")
    size, a = columns[0][0].size(), len(columns[0])
    masks = label_masks(labels, k, size, len(columns))
    ctx = columns[0][0].context()
    out: list[list[ts.CKKSVector]] = []
    for j in range(k):
        active = [b for b in range(len(columns)) if masks[b, j].any()]
        row = []
        for z in range(a):
            terms = (columns[b][z] * masks[b, j].tolist() for b in active)
            row.append(ckks.sum_vectors(terms) if active else ckks.encrypted_zero(ctx, size))
        out.append(row)
    return out


def distances_bytes(context: bytes, columns: Sequence[Sequence[bytes]], centroids: Sequence[Sequence[bytes]]
                    ) -> list[list[bytes]]:
    """Process-pool wrapper of :func:`distances` (bytes in, ``out[b][j]`` bytes out).

    A pool may also split the work by blocks: pass a subset of ``columns``.
    """
    ctx = ckks.cached_public_context(context)
    cols = [ckks.deserialize(ctx, block) for block in columns]
    cents = [ckks.deserialize(ctx, c) for c in centroids]
    return [ckks.serialize(row) for row in distances(cols, cents)]


def masked_sums_bytes(context: bytes, columns: Sequence[Sequence[bytes]], labels: np.ndarray, k: int
                      ) -> list[list[bytes]]:
    """Process-pool wrapper of :func:`masked_sums` (bytes in, ``out[j][z]`` bytes out).

    ``labels`` must cover exactly the records of the given blocks (slice them when splitting the blocks
    over processes, then add the partial results homomorphically).
    """
    ctx = ckks.cached_public_context(context)
    cols = [ckks.deserialize(ctx, block) for block in columns]
    return [ckks.serialize(row) for row in masked_sums(cols, labels, k)]


# --------------------------------------------------------------------------------------------------
# data owner


def encrypt_centroids(ctx: ts.Context, centroids: np.ndarray, block_size: int) -> list[list[ts.CKKSVector]]:
    """``out[j][z]`` = Enc(C[j, z] replicated over ``block_size`` slots) (k·a fresh ciphertexts)."""
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2:
        raise CoreError(f"centroids must be k×a, got shape {c.shape}")
    return [ckks.encrypt_replicated(ctx, row, block_size) for row in c]


def labels_from_distances(ctx: ts.Context, dists: Sequence[Sequence[ts.CKKSVector]], n: int) -> np.ndarray:
    """Decrypt ``dists[b][j]``, argmin over clusters for the first n slots (first index on ties)."""
    if not dists:
        raise CoreError("no distance blocks")
    per_block = [ckks.decrypt_vectors(ctx, row) for row in dists]  # each (k, B)
    full = np.concatenate(per_block, axis=1)
    if full.shape[1] < n:
        raise CoreError(f"distance blocks cover {full.shape[1]} records, expected {n}")
    return np.argmin(full[:, :n], axis=0).astype(np.int64)


def centroids_from_sums(ctx: ts.Context, sums: Sequence[Sequence[ts.CKKSVector]], labels: np.ndarray,
                        previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decrypt ``sums[j][z]``, sum the slots, divide by the label counts → (centroids k×a, counts)."""
    prev = np.asarray(previous, dtype=np.float64)
    k, a = prev.shape
    if len(sums) != k or any(len(row) != a for row in sums):
        raise CoreError(f"expected {k}×{a} masked-sum ciphertexts")
    totals = np.stack([ckks.decrypt_vectors(ctx, row).sum(axis=1) for row in sums])  # (k, a)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)
    out = prev.copy()
    nz = counts > 0
    out[nz] = totals[nz] / counts[nz, None]
    return out, counts
