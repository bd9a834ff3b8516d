"""PPLR: privacy-preserving logistic regression over CKKS (reference 7; worker protocol 4.12, 5.7).

Model and step are those of ``core.algorithms.lr`` with the polynomial sigmoid
σ̃(z) = 0.5 + 0.25 z − 0.02083 z³ (TenSEAL ``polyval``), so one encrypted step equals one plaintext
``lr.gradient_step`` up to CKKS noise (reference check: w = [0.08217, −0.13797], b = 0.06759).
Training is interactive per epoch: the worker runs one pass, the data owner decrypts, cleans
(``ckks.post_process``) and re-encrypts the weights — a refresh instead of bootstrapping.

Two layouts:

* rows (faithful, :func:`fit_step` / :func:`predict`): x_i one ciphertext (d slots), y_i a size-1
  ciphertext, w one ciphertext (d slots), b a size-1 ciphertext. The worker computes the whole step
  homomorphically: z_i = x_i·w + b (dot product = rotate-and-sum), e_i = σ̃(z_i) − y_i, then
  w ← w − (lr/n) Σ e_i x_i (e_i replicated by rotations), b ← b − (lr/n) Σ e_i. Needs **Galois keys**
  and 6 levels: use the ``ml-*`` profiles (7 levels). TenSEAL's full key set makes a 415 MB public
  context at N=16384; only the steps of :func:`rotation_steps` are needed (63 MB for d=2, 124 MB for
  d=8, 170 MB for d=30): ``ckks.public_context_bytes(ctx, galois=True, rotation_steps=rotation_steps(d))``.
* packed (rotation-free, :func:`gradient_packed` / :func:`predict_packed`): X column-packed
  (``ckks.encrypt_columns``), y packed the same way (one vector per block), w_z and b encrypted
  replicated over the block. The worker computes per slot z = Σ_z X_z ⊙ w_z + b, e = σ̃(z) − y and
  returns the per-slot gradient vectors e ⊙ X_z (a of them) and e (summed over blocks); the data owner
  sums the slots, applies w ← w − (lr/n)·g_w, b ← b − (lr/n)·g_b in plaintext (it decrypts and
  re-encrypts the weights every epoch anyway) — no Galois keys (the context stays a few MB), 4 levels,
  n/slots ciphertexts per quantity instead of n. Predictions: one ciphertext per block of records.
  Four levels fit N=8192 at 128-bit security (the ``pplr-*`` profiles of ``core/crypto/ckks.py``):
  an epoch costs 2d + 3 ciphertext multiplications per block of ≤ 4096 records, where the rows layout
  costs ~n·(d + log d) rotations and multiplications at N=16384 (``benchmarks/bench_pplr.py``).
  Owner side: :func:`encrypt_training_packed`, :func:`packed_model_blobs`, :func:`update_from_packed`.

Leakage (worker): nothing but sizes (n, d) and the number of epochs; predictions stay encrypted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from core.algorithms.lr import SIGMOID_COEFFICIENTS
from core.crypto import ckks
from core.errors import CoreError

__all__ = [
    "PACKED_DEPTH",
    "ROW_DEPTH",
    "apply_packed_gradients",
    "encrypt_training_packed",
    "fit_step",
    "fit_step_bytes",
    "gradient_packed",
    "gradient_packed_bytes",
    "packed_model_blobs",
    "predict",
    "predict_bytes",
    "predict_packed",
    "predict_packed_bytes",
    "rotation_steps",
    "update_from_packed",
]

#: Multiplicative levels one step consumes: dot 1, σ̃ 2 (TenSEAL polyval), replicate e 1, e·x 1, lr/n 1.
ROW_DEPTH = 6
#: Packed gradient: x⊙w 1, σ̃ 2, e⊙x (or padding mask) 1.
PACKED_DEPTH = 4
_COEFFS = list(SIGMOID_COEFFICIENTS)


def rotation_steps(d: int) -> list[int]:
    """Rotation steps the rows layout uses for d features (for ``ckks.public_context_bytes(...,
    rotation_steps=...)``): TenSEAL's rotate-and-sum over d slots rotates left by powers of two ≤ d,
    replicating the size-1 error over d slots rotates right by powers of two < d."""
    if d < 1:
        raise CoreError(f"d must be >= 1, got {d}")
    powers = [1 << i for i in range(d.bit_length())]
    return [p for p in powers if p <= d] + [-p for p in powers if p < d]


def _sigma(z: ts.CKKSVector) -> ts.CKKSVector:
    return z.polyval(_COEFFS)


# --------------------------------------------------------------------------------------------------
# row layout (faithful; rotations)


def fit_step(x_rows: Sequence[ts.CKKSVector], y: Sequence[ts.CKKSVector], weights: ts.CKKSVector,
             bias: ts.CKKSVector, learning_rate: float) -> tuple[ts.CKKSVector, ts.CKKSVector]:
    """One homomorphic full-batch gradient step → (new weights, new bias), both still encrypted."""
    n = len(x_rows)
    if n == 0 or len(y) != n:
        raise CoreError(f"{len(y)} labels for {n} samples")
    d = weights.size()
    if any(x.size() != d for x in x_rows) or bias.size() != 1 or any(t.size() != 1 for t in y):
        raise CoreError(f"x rows must hold {d} slots (as the weights), y and the bias 1 slot")
    if not learning_rate > 0:
        raise CoreError(f"learning rate must be > 0, got {learning_rate}")
    ckks.require_galois_keys(weights.context())
    ckks.require_relin_keys(weights.context())
    for what, v in (("weights", weights), ("bias", bias), ("x", x_rows[0])):
        ckks.require_levels(v, ROW_DEPTH, f"a PPLR step ({what})")
    grad_w: ts.CKKSVector | None = None
    grad_b: ts.CKKSVector | None = None
    for x, t in zip(x_rows, y, strict=True):
        e = ckks.subtract(_sigma(x.dot(weights) + bias), t)
        gx = x * e  # size d × size 1: TenSEAL replicates e (rotations)
        grad_w = gx if grad_w is None else grad_w + gx
        grad_b = e if grad_b is None else grad_b + e
    scale = learning_rate / n
    return ckks.subtract(weights, grad_w * scale), ckks.subtract(bias, grad_b * scale)  # type: ignore[operator]


def predict(x_rows: Sequence[ts.CKKSVector], weights: ts.CKKSVector, bias: ts.CKKSVector
            ) -> list[ts.CKKSVector]:
    """Encrypted σ̃(x·w + b) per record (size-1 ciphertexts; the data owner thresholds at 0.5)."""
    if not x_rows:
        raise CoreError("no records")
    ckks.require_galois_keys(weights.context())
    return [_sigma(x.dot(weights) + bias) for x in x_rows]


def fit_step_bytes(context: bytes, x_rows: Sequence[bytes], y: Sequence[bytes], weights: bytes, bias: bytes,
                   learning_rate: float) -> tuple[bytes, bytes]:
    """Process-pool wrapper of :func:`fit_step` (bytes in, (weights, bias) bytes out)."""
    ctx = ckks.cached_public_context(context)
    w, b = ckks.deserialize(ctx, [weights, bias])
    nw, nb = fit_step(ckks.deserialize(ctx, x_rows), ckks.deserialize(ctx, y), w, b, learning_rate)
    return nw.serialize(), nb.serialize()


def predict_bytes(context: bytes, x_rows: Sequence[bytes], weights: bytes, bias: bytes) -> list[bytes]:
    """Process-pool wrapper of :func:`predict`."""
    ctx = ckks.cached_public_context(context)
    w, b = ckks.deserialize(ctx, [weights, bias])
    return ckks.serialize(predict(ckks.deserialize(ctx, x_rows), w, b))


# --------------------------------------------------------------------------------------------------
# packed layout (rotation-free)


def _logits(block: Sequence[ts.CKKSVector], weights: Sequence[ts.CKKSVector], bias: ts.CKKSVector
            ) -> ts.CKKSVector:
    if len(block) != len(weights):
        raise CoreError(f"block has {len(block)} attributes, {len(weights)} weights")
    size = block[0].size()
    if any(v.size() != size for v in (*block, *weights, bias)):
        raise CoreError(f"the block's columns, the weights and the bias must all hold {size} slots "
                        "(weights and bias replicated over the block size)")
    return ckks.sum_vectors(x * w for x, w in zip(block, weights, strict=True)) + bias


def gradient_packed(columns: Sequence[Sequence[ts.CKKSVector]], y_blocks: Sequence[ts.CKKSVector],
                    weights: Sequence[ts.CKKSVector], bias: ts.CKKSVector, n: int
                    ) -> tuple[list[ts.CKKSVector], ts.CKKSVector]:
    """Per-slot gradients summed over blocks: ``([Σ_b e_b ⊙ X_bz for z], Σ_b e_b)`` (padding masked).

    ``weights[z]`` and ``bias`` are replicated over the block size; ``n`` = number of real records (the
    padding slots of the last block are masked out of the bias gradient; X is zero there). TenSEAL
    mod-switches operands in place (``e * x`` leaves x one level from the bottom), so the inputs are
    spent: pass freshly deserialized ciphertexts every call, as the worker does.
    """
    if not columns or len(y_blocks) != len(columns):
        raise CoreError(f"{len(y_blocks)} label blocks for {len(columns)} data blocks")
    size = columns[0][0].size()
    if not (len(columns) - 1) * size < n <= len(columns) * size:
        raise CoreError(f"n={n} does not fit {len(columns)} blocks of {size} slots")
    ckks.require_relin_keys(bias.context())
    ckks.require_levels(bias, PACKED_DEPTH, "a packed PPLR step")
    grad_w: list[ts.CKKSVector] | None = None
    grad_b: ts.CKKSVector | None = None
    for b, (block, t) in enumerate(zip(columns, y_blocks, strict=True)):
        e = ckks.subtract(_sigma(_logits(block, weights, bias)), t)
        gw = [e * x for x in block]
        valid = n - b * size
        eb = e * np.r_[np.ones(valid), np.zeros(size - valid)].tolist() if valid < size else e
        grad_w = gw if grad_w is None else [g + h for g, h in zip(grad_w, gw, strict=True)]
        grad_b = eb if grad_b is None else grad_b + eb
    assert grad_w is not None and grad_b is not None
    return grad_w, grad_b


def predict_packed(columns: Sequence[Sequence[ts.CKKSVector]], weights: Sequence[ts.CKKSVector],
                   bias: ts.CKKSVector) -> list[ts.CKKSVector]:
    """Encrypted σ̃(Xw + b) per block of records (one ciphertext per block, no rotations)."""
    if not columns:
        raise CoreError("no record blocks")
    return [_sigma(_logits(block, weights, bias)) for block in columns]


def apply_packed_gradients(ctx: ts.Context, grad_w: Sequence[ts.CKKSVector], grad_b: ts.CKKSVector,
                           weights: np.ndarray, bias: float, learning_rate: float, n: int
                           ) -> tuple[np.ndarray, float]:
    """Data owner: decrypt, sum the slots, plaintext update (w − (lr/n)·g_w, b − (lr/n)·g_b)."""
    g_w = ckks.decrypt_vectors(ctx, grad_w).sum(axis=1)
    g_b = float(ckks.decrypt_vector(ctx, grad_b).sum())
    scale = learning_rate / n
    return np.asarray(weights, dtype=np.float64) - scale * g_w, float(bias) - scale * g_b


def gradient_packed_bytes(context: bytes, columns: Sequence[Sequence[bytes]], y_blocks: Sequence[bytes],
                          weights: Sequence[bytes], bias: bytes, n: int) -> tuple[list[bytes], bytes]:
    """Process-pool wrapper of :func:`gradient_packed`."""
    ctx = ckks.cached_public_context(context)
    cols = [ckks.deserialize(ctx, block) for block in columns]
    (b,) = ckks.deserialize(ctx, [bias])
    gw, gb = gradient_packed(cols, ckks.deserialize(ctx, y_blocks), ckks.deserialize(ctx, weights), b, n)
    return ckks.serialize(gw), gb.serialize()


def predict_packed_bytes(context: bytes, columns: Sequence[Sequence[bytes]], weights: Sequence[bytes],
                         bias: bytes) -> list[bytes]:
    """Process-pool wrapper of :func:`predict_packed`."""
    ctx = ckks.cached_public_context(context)
    cols = [ckks.deserialize(ctx, block) for block in columns]
    (b,) = ckks.deserialize(ctx, [bias])
    return ckks.serialize(predict_packed(cols, ckks.deserialize(ctx, weights), b))


# --------------------------------------------------------------------------------------------------
# packed layout, data-owner side (the client's ``pplr_train`` / ``pplr_predict`` call these)


def encrypt_training_packed(ctx: ts.Context, X: np.ndarray, y: np.ndarray | None = None
                            ) -> tuple[list[bytes], list[int], list[bytes], int]:
    """Column-pack and encrypt X (and y) → (X blobs flat ``[blocks, d]`` row-major, that shape, y blobs
    ``[blocks]`` (empty without y), block size B — the size the model must be replicated over)."""
    x = np.asarray(X, dtype=np.float64)
    blocks = ckks.encrypt_columns(ctx, x)
    ys: list[bytes] = []
    if y is not None:
        t = np.asarray(y, dtype=np.float64).reshape(-1, 1)
        if t.shape[0] != x.shape[0]:
            raise CoreError(f"{t.shape[0]} labels for {x.shape[0]} samples")
        ys = [block[0].serialize() for block in ckks.encrypt_columns(ctx, t)]
    flat = [v.serialize() for block in blocks for v in block]
    return flat, [len(blocks), x.shape[1]], ys, blocks[0][0].size()


def packed_model_blobs(ctx: ts.Context, weights: np.ndarray, bias: float, size: int
                       ) -> tuple[list[bytes], bytes]:
    """Fresh ciphertexts of each w_z and of b, replicated over ``size`` slots (the refresh of every epoch)."""
    w = ckks.encrypt_replicated(ctx, np.asarray(weights, dtype=np.float64).reshape(-1), size)
    return ckks.serialize(w), ckks.encrypt_replicated(ctx, [float(bias)], size)[0].serialize()


def update_from_packed(ctx: ts.Context, gradients: Sequence[ts.CKKSVector], weights: np.ndarray, bias: float,
                       learning_rate: float, n: int, threshold: float = 1e-5) -> tuple[np.ndarray, float]:
    """Data owner: one plaintext step from the worker's packed gradients.

    ``gradients`` is flat ``[parts, d + 1]`` row-major, each row ``(Σ e⊙X_0, ..., Σ e⊙X_{d-1}, Σ e)`` over
    one part of the blocks; every slot is summed, then w − (lr/n)·g_w, b − (lr/n)·g_b and |v| < threshold
    → 0 (``ckks.post_process``, as the rows layout's refresh).
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    d = w.size
    if not gradients or len(gradients) % (d + 1):
        raise CoreError(f"{len(gradients)} gradient ciphertexts is not a multiple of d + 1 = {d + 1}")
    if n < 1:
        raise CoreError(f"n must be >= 1, got {n}")
    g = ckks.decrypt_vectors(ctx, gradients).sum(axis=1).reshape(-1, d + 1).sum(axis=0)
    scale = learning_rate / n
    new_w = ckks.post_process(w - scale * g[:d], threshold)
    new_b = ckks.post_process([float(bias) - scale * g[d]], threshold)
    return new_w, float(new_b[0])
