"""CKKS vectors: packing data into ciphertexts, the homomorphic helpers the algorithms share,
(de)serialisation and decoding.

Why apart from the key material (``core/crypto/ckks_material.py``): these are the everyday
primitives of every CKKS ("PQC") algorithm in ``core/algorithms`` on both roles; they take a context
and never decide what key material may travel.

Packing
-------
* row packing (:func:`encrypt_rows`): one ciphertext per record, attributes in slots ``0..a-1``
  (SKMeans-PQC, DBSKMeans-PQC, SKNN-PQC faithful layout, PPLR);
* column packing (:func:`encrypt_columns`): ``blocks[b][z]`` = attribute ``z`` of records
  ``b*B .. b*B+B-1`` with ``B = min(n, slots)``; the last block is zero-padded so every vector has the
  same size ``B`` (TenSEAL refuses to combine vectors of different sizes without rotations);
* replicated (:func:`encrypt_replicated`): one value copied into all ``B`` slots, to be combined
  slot-wise with column blocks without any rotation (no Galois keys needed).

TenSEAL pitfall handled here: SEAL refuses to *produce* a transparent ciphertext (all-zero), so
``a - a`` — or ``x - y`` for two bit-identical results, e.g. the same centroid recomputed from the same
members — raises ``RuntimeError("result ciphertext is transparent")``. :func:`subtract` falls back to
a fresh encryption of zero; the k-means code instead adds a client-supplied encrypted zero first, which
can never cancel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import tenseal as ts
from numpy.typing import ArrayLike

from core.crypto.ckks_params import MalformedMaterial, require_private, slot_count
from core.errors import CoreError

__all__ = [
    "column_block_size",
    "decode",
    "decrypt_vector",
    "decrypt_vectors",
    "deserialize",
    "encrypt_columns",
    "encrypt_replicated",
    "encrypt_rows",
    "encrypted_zero",
    "post_process",
    "serialize",
    "subtract",
    "sum_vectors",
]


# --------------------------------------------------------------------------------------------------
# encryption / packing


def _as_matrix(X: ArrayLike, slots: int | None = None, what: str = "X") -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CoreError(f"{what} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CoreError(f"{what} contains NaN or infinite values")
    if slots is not None and arr.shape[1] > slots:
        raise CoreError(f"{what} has {arr.shape[1]} columns but a ciphertext holds {slots} slots")
    return arr


def encrypt_rows(ctx: ts.Context, X: ArrayLike) -> list[ts.CKKSVector]:
    """Row packing: one ciphertext per record, attributes in slots 0..a-1 (vector size a)."""
    arr = _as_matrix(X, slot_count(ctx))
    return [ts.ckks_vector(ctx, row) for row in arr]


def column_block_size(n: int, slots: int) -> int:
    """Vector size used by column packing: all blocks share it (the last one is zero-padded)."""
    if n <= 0 or slots <= 0:
        raise CoreError("column packing needs n > 0 and slots > 0")
    return min(n, slots)


def _column_blocks(arr: np.ndarray, size: int) -> np.ndarray:
    """(n, a) → (blocks, a, size), zero-padded."""
    n, a = arr.shape
    blocks = -(-n // size)
    padded = np.zeros((blocks * size, a))
    padded[:n] = arr
    return padded.reshape(blocks, size, a).transpose(0, 2, 1)


def encrypt_columns(ctx: ts.Context, X: ArrayLike, slots: int | None = None
                    ) -> list[list[ts.CKKSVector]]:
    """Column packing: ``result[b][z]`` holds attribute z of records ``b*B ... b*B+B-1``.

    ``B = min(n, slots)`` with ``slots`` defaulting to (and capped at) the context's slot count; the last
    block is zero-padded to size B. Needs a·⌈n/B⌉ ciphertexts instead of n.
    """
    cap = slot_count(ctx)
    if slots is not None and not 0 < slots <= cap:
        raise CoreError(f"slots must be in 1..{cap}, got {slots}")
    arr = _as_matrix(X)
    size = column_block_size(arr.shape[0], slots or cap)
    return [[ts.ckks_vector(ctx, col) for col in block] for block in _column_blocks(arr, size)]


def encrypt_replicated(ctx: ts.Context, values: ArrayLike, size: int) -> list[ts.CKKSVector]:
    """One ciphertext per value, the value copied into ``size`` slots (for slot-wise ops, no rotations)."""
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(vals)):
        raise CoreError("values contain NaN or infinite entries")
    if not 0 < size <= slot_count(ctx):
        raise CoreError(f"size must be in 1..{slot_count(ctx)}, got {size}")
    return [ts.ckks_vector(ctx, np.full(size, v)) for v in vals]


def encrypted_zero(ctx: ts.Context, size: int) -> ts.CKKSVector:
    """Fresh Enc(0) of ``size`` slots; a public context can do this (it holds the public key)."""
    return ts.ckks_vector(ctx, np.zeros(size))


# --------------------------------------------------------------------------------------------------
# homomorphic helpers


def _is_transparent_error(exc: BaseException) -> bool:
    return "transparent" in str(exc)


def subtract(a: ts.CKKSVector, b: ts.CKKSVector, zero: ts.CKKSVector | None = None) -> ts.CKKSVector:
    """``a - b`` that survives bit-identical operands (SEAL: 'result ciphertext is transparent').

    On that error the result is ``zero`` (a copy) or a fresh Enc(0) made with ``a``'s context.
    """
    try:
        return a - b
    except (RuntimeError, ValueError) as exc:
        if not _is_transparent_error(exc):
            raise
    return zero.copy() if zero is not None else encrypted_zero(a.context(), a.size())


def sum_vectors(vectors: Iterable[ts.CKKSVector]) -> ts.CKKSVector:
    """Sequential out-of-place sum. Measured (N=8192): ``acc + v`` ≈ 0.05 ms, ``acc.add_(v)`` /
    ``acc += v`` ≈ 0.2 ms (the in-place binding copies), so the plain ``+`` chain is the fastest."""
    it = iter(vectors)
    try:
        acc = next(it)
    except StopIteration:
        raise CoreError("cannot sum an empty list of ciphertexts") from None
    for v in it:
        acc = acc + v
    return acc


# --------------------------------------------------------------------------------------------------
# (de)serialisation


def serialize(vectors: Iterable[ts.CKKSVector]) -> list[bytes]:
    return [v.serialize() for v in vectors]


def deserialize(ctx: ts.Context, blobs: Iterable[bytes]) -> list[ts.CKKSVector]:
    """Load CKKS vectors; a malformed blob or a declared size beyond the slot count → MalformedMaterial.

    (TenSEAL trusts the ``size`` field of a serialised vector when decrypting; a forged size larger than
    N/2 would read past the decoded buffer, so it is checked here.)
    """
    slots = slot_count(ctx)
    out = []
    for i, blob in enumerate(blobs):
        try:
            v = ts.ckks_vector_from(ctx, bytes(blob))
        except Exception as exc:
            raise MalformedMaterial(f"ciphertext {i}: not a CKKS vector for this context ({exc})") from None
        if not 0 < v.size() <= slots:
            raise MalformedMaterial(f"ciphertext {i}: declared size {v.size()} outside 1..{slots}")
        out.append(v)
    return out


# --------------------------------------------------------------------------------------------------
# decoding (data owner)


def decode(values: ArrayLike, round_: bool = False, decimals: int = 2) -> np.ndarray:
    """The ``CKKS_ROUND`` / ``CKKS_DECIMALS`` rule: decrypted values as float64, rounded to ``decimals``
    only when ``round_`` is set (default off, 2 decimals — the original's env defaults)."""
    arr = np.asarray(values, dtype=np.float64)
    return np.round(arr, decimals) if round_ else arr


def post_process(values: ArrayLike, threshold: float = 1e-5) -> np.ndarray:
    """Zero entries with |v| < threshold (the original's cleanup before re-encrypting PPLR weights)."""
    arr = np.array(values, dtype=np.float64)
    arr[np.abs(arr) < threshold] = 0.0
    return arr


def decrypt_vector(ctx: ts.Context, vector: ts.CKKSVector, round_: bool = False, decimals: int = 2
                   ) -> np.ndarray:
    require_private(ctx)
    return decode(vector.decrypt(ctx.secret_key()), round_, decimals)


def decrypt_vectors(ctx: ts.Context, vectors: Sequence[ts.CKKSVector], width: int | None = None,
                    round_: bool = False, decimals: int = 2) -> np.ndarray:
    """Decrypt and stack into a 2-D array; ``width`` trims (or checks) each row's length."""
    require_private(ctx)
    if not vectors:
        return np.zeros((0, width or 0))
    sk = ctx.secret_key()
    rows = [np.asarray(v.decrypt(sk), dtype=np.float64) for v in vectors]
    w = width if width is not None else rows[0].shape[0]
    if any(r.shape[0] < w for r in rows):
        raise CoreError(f"a decrypted vector is shorter than {w}")
    return decode(np.stack([r[:w] for r in rows]), round_, decimals)
