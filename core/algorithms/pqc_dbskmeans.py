"""DBSKMeans-PQC: SKMeans-PQC with an FDH-OPE-encrypted UDM (reference 3, 6.3; worker protocol 4.8).

Identical worker step 1 (:func:`encrypted_phase` is SKMeans-PQC's): labels from L1 scores over the
OPE-encrypted UDM (OPE is odd and increasing in |u|, so Σ_z |OPE(u_z)| is a distorted L1 score),
homomorphic CKKS centroids and shift. Then:

2. data owner: decrypts the CKKS shift S (k×a), tests convergence on S (exact, the stopping rule is
   not affected by OPE), re-encrypts it with the *same* FDH-OPE key (``dbskmeans.encrypt_shift``);
3. worker, :func:`plaintext_phase`: OPE(U)[:, :k] + OPE(S).

Fix of the original's step 2 (reference protocol 4.8): the original could never run step 2 (it read an
id the client never sent and a non-existent ``.value`` attribute of the downloaded array). Here step 2
takes the k×a OPE-encrypted shift as a plain array; combined with the corrected, non-transposed UDM
rule (reference 2.6) and an element-wise (antisymmetric) OPE UDM it does what the original intended.

Approximation (as the original): FDH-OPE is not additively homomorphic, OPE(U) + OPE(S) ≠ OPE(U + S),
so from iteration 2 on the scores are an approximation of SKMeans-PQC's; on well-separated clusters
the labels coincide (tests compare with ARI). Sensitivity: values closer than ``sensitivity`` may swap.

Leakage (worker): the per-attribute order of all stored differences, a monotone piecewise-linear
image of each, OPE(S) per iteration, the labels; the CKKS records stay hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.algorithms import dbskmeans, udm
from core.algorithms.pqc_skmeans import encrypted_phase, encrypted_phase_bytes
from core.crypto import fdhope
from core.errors import CoreError

__all__ = [
    "encrypt_shift",
    "encrypt_udm",
    "encrypted_phase",
    "encrypted_phase_bytes",
    "generate_udm_key",
    "plaintext_phase",
]


def generate_udm_key(plain_udm: np.ndarray, sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
                     rng: np.random.Generator | None = None) -> fdhope.FdhopeKey:
    """Data owner: FDH-OPE key derived from the plaintext UDM (as the original's FDHOPE_KEYGEN)."""
    return fdhope.generate_key(plain_udm, sensitivity, rng)


def encrypt_udm(key: fdhope.FdhopeKey, plain_udm: np.ndarray,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Data owner: element-wise OPE of the UDM (antisymmetric, required by the corrected rule)."""
    return dbskmeans.encrypt_udm(key, plain_udm, rng)


def encrypt_shift(key: fdhope.FdhopeKey, shift: np.ndarray,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Data owner: OPE(S) with the UDM's key, S = the decrypted k×a CKKS shift."""
    return dbskmeans.encrypt_shift(key, shift, rng)


def plaintext_phase(encrypted_udm: np.ndarray, shift_ope: Sequence[Sequence[float]] | np.ndarray
                    ) -> np.ndarray:
    """Worker step 2: OPE(U)[:, :k] + OPE(S) → n×k×a (not homomorphic, see the module docstring)."""
    s = np.asarray(shift_ope, dtype=np.float64)
    if s.ndim != 2:
        raise CoreError(f"the OPE shift matrix must be k×a, got shape {s.shape}")
    return udm.update_udm(encrypted_udm, s)
