"""Convergence rules for the iterative secure k-means variants.

Two rules exist in the original system (reference 2.5):

* the library rule, used by default here: the data owner decrypts the k x a shift matrix
  S = c_old - c_new and stops when max |S| <= tolerance;
* the Flask V1 worker-side rule: the mean relative error between the *ciphertext* arrays of the old
  and new centroids is <= MIN_ERROR. With Liu ciphertexts this approximates "membership unchanged".

Leakage: the decrypted-shift rule is evaluated by the data owner, so the worker learns only the
decision; the MRE rule runs on the worker over ciphertexts it already holds.
"""

from __future__ import annotations

import numpy as np

from core.errors import CoreError

__all__ = ["is_converged", "max_abs_shift", "mean_relative_error"]


def max_abs_shift(shift: np.ndarray) -> float:
    """Return max |S| over all entries of a plaintext (decrypted) shift matrix; 0.0 if it is empty."""
    s = np.asarray(shift, dtype=np.float64)
    if s.size == 0:
        return 0.0
    return float(np.max(np.abs(s)))


def is_converged(shift: np.ndarray, tolerance: float) -> bool:
    """The default rule: the decrypted shift satisfies max |S| <= tolerance."""
    return max_abs_shift(shift) <= tolerance


def mean_relative_error(old: np.ndarray, new: np.ndarray) -> float:
    """Mean of |(old - new) / old| over all entries (the original worker's MIN_ERROR rule).

    Newer-library semantics: 0/0 counts as 0, non-finite ratios (x/0) are ignored, and the result is
    +inf when no ratio is finite (including empty inputs).
    """
    o = np.asarray(old, dtype=np.float64)
    n = np.asarray(new, dtype=np.float64)
    if o.shape != n.shape:
        raise CoreError(f"shapes differ: {o.shape} vs {n.shape}")
    diff = o - n
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(diff / o)
    ratio[(o == 0) & (diff == 0)] = 0.0
    finite = ratio[np.isfinite(ratio)]
    if finite.size == 0:
        return float("inf")
    return float(finite.mean())
