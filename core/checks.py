"""Input checks shared by the plaintext algorithms and the data owner's Liu / FDH-OPE steps."""

from __future__ import annotations

import numpy as np

from core.errors import CoreError

__all__ = ["data_matrix"]


def data_matrix(x: np.ndarray) -> np.ndarray:
    """``x`` as a float64 n x a dataset, rejected when empty or not finite (NaN would only surface
    later as meaningless labels or ciphertexts)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise CoreError(f"data must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CoreError("data contains NaN or infinity")
    return arr
