"""SKNN over Liu's scheme: secure 1-nearest-neighbour classification (reference 5.1).

Protocol:
1. worker, `encrypted_distances`: for every (record i, model row j) an encrypted distance;
2. data owner, `nearest_from_distances`: decrypt the n_rec x n_model matrix, argmin per record;
3. worker, `labels_from_indices`: index -> model label.

Metrics:
* "euclidean" (exact, the default here): d_ij = sum_z E(x_iz - y_jz) (x) E(x_iz - y_jz), Liu's
  ciphertext multiplication (outer product, m*m components) of the homomorphic difference with itself,
  summed over attributes. It decrypts to the TRUE squared Euclidean distance. The stored matrix is
  n_rec x n_model x m^2 (the original stored n_rec x n_model x m).
* "manhattan" (APPROXIMATE, the original's default): sum_z |E(x_iz) - E(y_jz)| with |.| applied to the
  ciphertext components. This is not a homomorphic operation; it decrypts to roughly the L1 distance only
  because Liu ciphertexts with integer keys are close to a scaled plaintext (the scheme's ciphertext-only
  weakness). The result carries `exact=False`.

Leakage (what the worker learns): Liu ciphertexts of records and model (weak, see `core.crypto.liu`),
the nearest-model index of every record (step 3) and hence the predicted labels; the model labels are
stored in plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.algorithms.knn import Metric, normalise_metric
from core.crypto import liu
from core.errors import CoreError

__all__ = ["EncryptedDistances", "encrypted_distances", "labels_from_indices", "nearest_from_distances"]

_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class EncryptedDistances:
    """values: (n_rec, n_model, m^2) for "euclidean" (exact) or (n_rec, n_model, m) for "manhattan"
    (approximate, `exact` is False)."""

    values: np.ndarray
    metric: Metric
    exact: bool


def encrypted_distances(
    encrypted_records: np.ndarray, encrypted_model: np.ndarray, metric: str = "euclidean"
) -> EncryptedDistances:
    """Worker step 1: encrypted distances between every record and every model row (blocked over records)."""
    r = np.asarray(encrypted_records, dtype=np.float64)
    mdl = np.asarray(encrypted_model, dtype=np.float64)
    if r.ndim != 3 or mdl.ndim != 3 or r.shape[1:] != mdl.shape[1:]:
        raise CoreError(f"records {r.shape} and model {mdl.shape} must be (n, a, m) with equal a and m")
    met = normalise_metric(metric)
    n_r, a, m = r.shape
    n_m = mdl.shape[0]
    width = m * m if met == "euclidean" else m
    out = np.empty((n_r, n_m, width))
    step = max(1, _BLOCK_ELEMENTS // max(1, n_m * a * m))
    for lo in range(0, n_r, step):
        hi = min(n_r, lo + step)
        diff = liu.subtract(r[lo:hi, None, :, :], mdl[None, :, :, :])  # (b, n_m, a, m) = E(x - y)
        if met == "euclidean":
            # sum_z vec(E(d_z) E(d_z)^T): the Liu product of the difference with itself, summed over z.
            out[lo:hi] = np.einsum("tnai,tnaj->tnij", diff, diff).reshape(hi - lo, n_m, width)
        else:
            np.abs(diff, out=diff)
            out[lo:hi] = diff.sum(axis=2)
    return EncryptedDistances(values=out, metric=met, exact=met == "euclidean")


def nearest_from_distances(key: liu.LiuKey, distances: EncryptedDistances | np.ndarray) -> np.ndarray:
    """Data owner step 2: decrypt the distance matrix and return the argmin model index per record."""
    values = distances.values if isinstance(distances, EncryptedDistances) else np.asarray(distances)
    if values.ndim != 3:
        raise CoreError(f"encrypted distances must be (n_rec, n_model, m or m^2), got shape {values.shape}")
    plain = liu.decrypt(key, values)
    return np.argmin(plain, axis=1).astype(np.int64)


def labels_from_indices(indices: np.ndarray, model_labels: np.ndarray) -> np.ndarray:
    """Worker step 3: map nearest-model indices to model labels."""
    raw = np.asarray(indices).reshape(-1)
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise CoreError("nearest-model indices must be integers")
    if raw.dtype.kind not in "iuf":
        raise CoreError(f"nearest-model indices must be numeric, got dtype {raw.dtype}")
    idx = raw.astype(np.int64)
    labels = np.asarray(model_labels).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= labels.size):
        raise CoreError(f"index out of range for {labels.size} model labels")
    return labels[idx]
