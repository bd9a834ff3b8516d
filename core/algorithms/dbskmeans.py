"""DBSKMeans ("double-blind" secure k-means): SKMeans with an FDH-OPE-encrypted UDM (reference 3).

The data is Liu-encrypted exactly as for SKMeans; the UDM U[x, y, z] = D[x, z] - c_y[z] is encrypted
element by element with FDH-OPE (key derived from the plaintext UDM). Per iteration:

1. worker, `encrypted_phase`: the SKMeans step on the OPE UDM: scores sum_z |OPE(U[x, y, z])|, argmin,
   homomorphic Liu centroids and Liu shift (identical code to `core.algorithms.skmeans`);
2. data owner: decrypt the Liu shift S, test convergence on S, re-encrypt S with the same FDH-OPE key
   (`encrypt_shift`) and send OPE(S);
3. worker, `plaintext_phase`: U' = OPE(U)[:, :k] + OPE(S) -- what the original computes, with the
   corrected (non-transposed) indexing; or `cumulative_phase`: C' = C + OPE(S), the worker keeping
   OPE(U0) and the k x a sum of the OPE shifts (OPE(U0) + (OPE(S_1) + OPE(S_2)) instead of
   (OPE(U0) + OPE(S_1)) + OPE(S_2): the same sum up to rounding order, so the same drift).

How the labels compare with SKMeans (documented approximation, tested in tests/core/test_dbskmeans.py):
* FDH-OPE is not additively homomorphic: OPE(a) + OPE(b) != OPE(a + b), and sum_z |OPE(u_z)| is not
  monotone in sum_z |u_z| (each attribute is stretched by a different piece of the map). So DBSKMeans is
  an approximation of SKMeans:
  - first iteration, one attribute (a = 1): labels equal SKMeans (OPE is strictly increasing in |u|, up
    to differences below `sensitivity`);
  - a > 1 or later iterations: labels may differ; on well-separated clusters they coincide.
* Convergence is decided on the decrypted Liu shift, as for SKMeans, so the stopping rule is exact.

Requirement: encrypt the UDM element-wise (antisymmetric, OPE is odd). The original mirrored the lower
triangle (a symmetric tensor), which only works with its transposed-read rule.

Leakage (what the worker learns): sign(D[x, z] - D[y, z]) for all stored pairs, i.e. the per-attribute
ranking of the records against the first k (compact UDM) or all records (full UDM); a monotone
piecewise-linear image of every difference; OPE(S) every iteration; labels; Liu ciphertexts.
"""

from __future__ import annotations

import numpy as np

# The worker's step 1 on an OPE UDM is SKMeans' step 1 unchanged (`udm_shift`: the sum of the OPE
# shifts in the cumulative form), so the same functions serve both protocols.
from core.algorithms.skmeans import (
    EncryptedPhaseResult,
    check_shift,
    cumulative_phase,
    decrypt_shift,
    encrypted_phase,
)
from core.algorithms.udm import update_udm
from core.crypto import fdhope
from core.errors import CoreError

__all__ = [
    "EncryptedPhaseResult",
    "check_shift",
    "cumulative_phase",
    "decrypt_shift",
    "encrypt_shift",
    "encrypt_udm",
    "encrypted_phase",
    "plaintext_phase",
]


def plaintext_phase(encrypted_udm: np.ndarray, shift_ope: np.ndarray) -> np.ndarray:
    """Worker step 2: OPE(U)[:, :k] + OPE(S) (n x k x a). Not homomorphic: see the module docstring."""
    return update_udm(encrypted_udm, shift_ope)


def encrypt_udm(
    key: fdhope.FdhopeKey, udm: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Data owner: element-wise FDH-OPE encryption of a plaintext UDM (full or compact)."""
    return _seal(key, udm, 3, "UDM must be 3-D", rng)


def encrypt_shift(
    key: fdhope.FdhopeKey, shift_plain: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Data owner: re-encrypt the decrypted (k, a) shift with the UDM's FDH-OPE key."""
    return _seal(key, shift_plain, 2, "shift must be (k, a)", rng)


def _seal(
    key: fdhope.FdhopeKey, values: np.ndarray, ndim: int, expected: str, rng: np.random.Generator | None
) -> np.ndarray:
    """FDH-OPE-encrypt ``values`` after checking its rank (a wrong one would encrypt silently)."""
    v = np.asarray(values)
    if v.ndim != ndim:
        raise CoreError(f"{expected}, got shape {v.shape}")
    return fdhope.encrypt(key, v, rng)
