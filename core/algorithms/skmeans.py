"""SKMeans: secure k-means over Liu-encrypted data with an Updatable Distance Matrix (reference 2).

One iteration is split in three:

1. worker, `encrypted_phase`: assign records with the UDM (L1 scores, first index on ties), compute the
   encrypted centroids homomorphically (sum of member ciphertexts times 1/|C|: one one-hot matmul) and
   the encrypted shift E(c_old) - E(c_new);
2. data owner, `decrypt_shift` / `check_shift`: decrypt the k x a shift and test convergence
   (max |S| <= tolerance);
3. worker, `plaintext_phase`: U' = U[:, :k] + S (the corrected update, `core.algorithms.udm`), or, in
   the cumulative form the worker stores, `accumulate_shift`: C' = C + S, the k x a sum of the shifts,
   with U = U0[:, :k] + C read by `encrypted_phase(..., udm_shift=C)` (same labels up to rounding order).

With the same initialisation the labels are those of `core.algorithms.kmeans.l1_kmeans` (Liu is exact
up to float rounding, ~1e-13 relative, so only near-ties at that scale could differ).

Fixes versus the original (results change):
* UDM update/read rule (reference 2.6): labels now equal L1 k-means; the original's differed on
  records 0..k-2 from iteration 2 on (counterexample D = [6,15,4,13,9,10], k=3: original
  [0,1,2,1,0,0] after 2 iterations, here [2,1,2,1,0,0] after 3).
* Empty cluster (reference 2.7): keeps its previous centroid (shift row 0). The original set it to an
  all-zero ciphertext, so the decrypted shift row was the old centroid and the updated UDM column became
  the plaintext dataset.

Leakage (what the worker learns): the plaintext UDM (the dataset up to one translation per attribute),
the labels and cluster sizes, the decrypted shift S every iteration (it receives it for the update), and
Liu ciphertexts (weak, see `core.crypto.liu`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from core.algorithms import convergence
from core.algorithms.udm import accumulate_shift, assign, update_udm
from core.crypto import liu
from core.errors import CoreError

__all__ = [
    "EncryptedPhaseResult",
    "check_shift",
    "cumulative_phase",
    "decrypt_shift",
    "encrypted_centroids",
    "encrypted_phase",
    "plaintext_phase",
]


class EncryptedPhaseResult(NamedTuple):
    """labels (n,) int64; centroids (k, a, m) = E(c_new); shift (k, a, m) = E(c_old) - E(c_new).

    A tuple so that a compute process can return it as is: the worker's pool hands the arrays of
    tuples back through shared-memory files (worker/runtime/shared.py) and pickles other objects
    through its pipe, which measured ~5 ms more per round at n = 100,000 (the labels alone are 800 KB).
    """

    labels: np.ndarray
    centroids: np.ndarray
    shift: np.ndarray


def encrypted_centroids(
    encrypted_data: np.ndarray, labels: np.ndarray, k: int, previous: np.ndarray
) -> np.ndarray:
    """Homomorphic per-cluster means: (one-hot^T E) * (1/|C_j|); an empty cluster keeps `previous[j]`.

    Works on any per-record ciphertext layout (n, ...): Liu (n, a, m) here; only additions and plaintext
    scalar multiplications are applied, which Liu supports exactly.
    """
    e = np.asarray(encrypted_data)
    n = e.shape[0]
    flat = e.reshape(n, -1)
    if flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    counts = np.bincount(labels, minlength=k)
    if counts.size != k:
        raise CoreError(f"labels must lie in [0, {k})")
    onehot = np.zeros((k, n))
    onehot[labels, np.arange(n)] = 1.0
    sums = onehot @ flat
    out = np.array(previous, dtype=np.float64, copy=True).reshape(k, -1)
    nz = counts > 0
    out[nz] = liu.multiply_scalar(sums[nz], 1.0 / counts[nz])
    return out.reshape((k, *e.shape[1:]))


def encrypted_phase(
    encrypted_data: np.ndarray,
    udm: np.ndarray,
    k: int,
    start: bool,
    previous_centroids: np.ndarray | None,
    udm_shift: np.ndarray | None = None,
) -> EncryptedPhaseResult:
    """Worker step 1 of one iteration (reference 2.3 with the fixes listed in the module docstring).

    `encrypted_data`: (n, a, m) Liu ciphertexts; `udm`: full (n, n, a) or compact (n, k, a), plaintext
    (SKMeans) or FDH-OPE (DBSKMeans); `start`: first iteration (previous centroids default to the first
    k encrypted records, records 0..k-1 are pre-assigned); otherwise `previous_centroids` (k, a, m) is
    required (the centroids returned by the previous iteration). `udm_shift`: the k x a cumulative shift
    C when `udm` is the uploaded U0 (the matrix scored is U0[:, :k] + C; None: `udm` is current).
    """
    e = np.asarray(encrypted_data)
    u = np.asarray(udm)
    if e.ndim != 3:
        raise CoreError(f"encrypted data must be (n, a, m), got shape {e.shape}")
    n, a, _ = e.shape
    if u.ndim != 3 or u.shape[0] != n or u.shape[2] != a:
        raise CoreError(f"UDM shape {u.shape} does not match encrypted data {e.shape}")
    if not 1 <= k <= n:
        raise CoreError(f"k must be in [1, n={n}], got {k}")
    if previous_centroids is None:
        if not start:
            raise CoreError("previous centroids are required after the first iteration")
        previous = np.asarray(e[:k], dtype=np.float64)
    else:
        previous = np.asarray(previous_centroids, dtype=np.float64)
        if previous.shape != (k, *e.shape[1:]):
            raise CoreError(f"previous centroids must have shape {(k, *e.shape[1:])}, got {previous.shape}")
    labels = assign(u, k, start, udm_shift)
    centroids = encrypted_centroids(e, labels, k, previous)
    shift = liu.subtract(previous, centroids)
    return EncryptedPhaseResult(labels=labels, centroids=centroids, shift=shift)


def plaintext_phase(udm: np.ndarray, shift_plain: np.ndarray) -> np.ndarray:
    """Worker step 2: the n x k x a UDM for the new centroids, U' = U[:, :k] + S (corrected rule)."""
    return update_udm(udm, shift_plain)


def cumulative_phase(udm_shift: np.ndarray | None, shift_plain: np.ndarray) -> np.ndarray:
    """Worker step 2 in the cumulative form: C' = C + S (k x a), so the UDM U0 is never rewritten.

    Equal to `plaintext_phase` on U0[:, :k] + C up to rounding order (`core.algorithms.udm`).
    """
    return accumulate_shift(udm_shift, shift_plain)


def decrypt_shift(key: liu.LiuKey, encrypted_shift: np.ndarray) -> np.ndarray:
    """Data owner: decrypt the (k, a, m) shift to the plaintext (k, a) matrix S = c_old - c_new."""
    s = np.asarray(encrypted_shift)
    if s.ndim != 3:
        raise CoreError(f"encrypted shift must be (k, a, m), got shape {s.shape}")
    return liu.decrypt(key, s)


def check_shift(key: liu.LiuKey, encrypted_shift: np.ndarray, tolerance: float) -> tuple[bool, np.ndarray]:
    """Data owner: decrypt the shift and apply the default rule max |S| <= tolerance."""
    plain = decrypt_shift(key, encrypted_shift)
    return convergence.is_converged(plain, tolerance), plain
