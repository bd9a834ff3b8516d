"""Data-owner side of the CKKS ("PQC") protocols, plus in-process drivers that play both roles.

The data owner holds the private TenSEAL context; the worker only ever receives
``ckks.public_context_bytes(ctx)`` and serialised vectors. The drivers run the worker's part through
the same *bytes in, bytes out* wrappers a process pool would use, so a driver run exercises the real
wire path (serialisation, secret-key refusal, per-process context cache) and can count the bytes moved.

Drivers: :func:`run_pqc_sknn`, :func:`run_pplr` (+ :func:`run_pplr_predict`), :func:`run_pqc_kmeans`.
Each returns the result and a :class:`RunStats` (iterations, seconds spent in worker code vs
data-owner code, bytes each way). SKMeans-PQC and DBSKMeans-PQC have no loop here: their rounds are
driven once, for every secure k-means, by ``dataowner/drivers/secure_kmeans.py`` (the helpers below,
``init_shift_matrix``, ``decrypt_shift``, ``decrypt_centroids``, are its per-party steps).

Byte accounting (what would cross the network per run): "to worker" counts everything the worker must
read for each call (including stored datasets it re-reads every round from storage, plaintext UDMs and
label vectors as raw array bytes); "from worker" everything it writes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import tenseal as ts
from numpy.typing import ArrayLike

from core.algorithms import pplr, pqc_kmeans, pqc_sknn
from core.crypto import ckks
from core.errors import CoreError
from core.payload import payload_bytes

__all__ = [
    "PqcKMeansResult",
    "RunStats",
    "decrypt_centroids",
    "decrypt_model",
    "decrypt_predictions",
    "decrypt_shift",
    "encrypt_dataset",
    "encrypt_dataset_columns",
    "encrypt_labels",
    "encrypt_labels_packed",
    "encrypt_model",
    "encrypt_model_packed",
    "init_shift_matrix",
    "run_pplr",
    "run_pplr_predict",
    "run_pqc_kmeans",
    "run_pqc_sknn",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# helpers (data owner)


def encrypt_dataset(ctx: ts.Context, X: ArrayLike) -> list[ts.CKKSVector]:
    """Row packing (SKMeans-PQC, DBSKMeans-PQC, SKNN rows layout, PPLR rows)."""
    return ckks.encrypt_rows(ctx, X)


def encrypt_dataset_columns(ctx: ts.Context, X: ArrayLike, slots: int | None = None
                            ) -> list[list[ts.CKKSVector]]:
    """Column packing ``[block][attribute]`` (PQC k-means, SKNN packed model, packed PPLR)."""
    return ckks.encrypt_columns(ctx, X, slots)


def init_shift_matrix(ctx: ts.Context, k: int, a: int) -> list[ts.CKKSVector]:
    """``initsm``: k fresh encryptions of the zero vector of size a."""
    if k < 1 or a < 1:
        raise CoreError(f"k and a must be >= 1, got k={k}, a={a}")
    return [ckks.encrypted_zero(ctx, a) for _ in range(k)]


def decrypt_shift(ctx: ts.Context, shift: Sequence[ts.CKKSVector], a: int, round_: bool = False,
                  decimals: int = 2) -> np.ndarray:
    """k shift ciphertexts → k×a plaintext shift (CKKS_ROUND / CKKS_DECIMALS rule)."""
    return ckks.decrypt_vectors(ctx, shift, width=a, round_=round_, decimals=decimals)


def decrypt_centroids(ctx: ts.Context, centroids: Sequence[ts.CKKSVector], a: int, round_: bool = False,
                      decimals: int = 2) -> np.ndarray:
    return ckks.decrypt_vectors(ctx, centroids, width=a, round_=round_, decimals=decimals)


def encrypt_labels(ctx: ts.Context, y: ArrayLike) -> list[ts.CKKSVector]:
    """PPLR rows layout: one size-1 ciphertext per label."""
    return [ts.ckks_vector(ctx, [float(v)]) for v in np.asarray(y, dtype=np.float64).reshape(-1)]


def encrypt_labels_packed(ctx: ts.Context, y: ArrayLike, slots: int | None = None) -> list[ts.CKKSVector]:
    """PPLR packed layout: the label vector in column blocks (one ciphertext per block)."""
    col = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    return [block[0] for block in ckks.encrypt_columns(ctx, col, slots)]


def encrypt_model(ctx: ts.Context, weights: ArrayLike, bias: float) -> tuple[ts.CKKSVector, ts.CKKSVector]:
    """PPLR rows layout: w (d slots) and b (1 slot)."""
    w = ts.ckks_vector(ctx, np.asarray(weights, dtype=np.float64).reshape(-1))
    return w, ts.ckks_vector(ctx, [float(bias)])


def encrypt_model_packed(ctx: ts.Context, weights: ArrayLike, bias: float, size: int
                         ) -> tuple[list[ts.CKKSVector], ts.CKKSVector]:
    """PPLR packed layout: each w_z and b replicated over ``size`` slots."""
    w = ckks.encrypt_replicated(ctx, np.asarray(weights, dtype=np.float64).reshape(-1), size)
    return w, ckks.encrypt_replicated(ctx, [bias], size)[0]


def decrypt_model(ctx: ts.Context, weights: ts.CKKSVector, bias: ts.CKKSVector, threshold: float = 1e-5
                  ) -> tuple[np.ndarray, float]:
    """PPLR refresh: decrypt w and b and zero |v| < threshold (the original's post-processing)."""
    w = ckks.post_process(ckks.decrypt_vector(ctx, weights), threshold)
    b = ckks.post_process(ckks.decrypt_vector(ctx, bias)[:1], threshold)
    return w, float(b[0])


def decrypt_predictions(ctx: ts.Context, predictions: Sequence[ts.CKKSVector], n: int | None = None
                        ) -> np.ndarray:
    """σ̃ values: rows layout (size-1 each) or packed layout (one vector per block; pass n to trim)."""
    vals = np.concatenate([ckks.decrypt_vector(ctx, p) for p in predictions])
    return vals if n is None else vals[:n]


# --------------------------------------------------------------------------------------------------
# run statistics and the simulated wire


@dataclass
class RunStats:
    """What a driver run cost: worker vs data-owner CPU seconds, bytes in each direction, per round."""

    iterations: int = 0
    worker_seconds: float = 0.0
    owner_seconds: float = 0.0
    bytes_to_worker: int = 0
    bytes_from_worker: int = 0
    rounds: list[dict[str, float]] = field(default_factory=list)

    @contextmanager
    def owner(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.owner_seconds += time.perf_counter() - t0

    def worker(self, fn: Callable[..., T], *args: object, sent: int = 0) -> T:
        """Run a bytes-in/bytes-out worker call, timing it and counting its input and output bytes."""
        t0 = time.perf_counter()
        out = fn(*args)
        self.worker_seconds += time.perf_counter() - t0
        self.bytes_to_worker += sent
        self.bytes_from_worker += payload_bytes(out)
        return out

    def mark_round(self) -> None:
        """Close a round: append its worker/owner seconds and bytes (differences since the last mark)."""
        now = (self.worker_seconds, self.owner_seconds, self.bytes_to_worker, self.bytes_from_worker)
        last = self._last or (0.0, 0.0, 0, 0)
        self.rounds.append(dict(zip(("worker_s", "owner_s", "to_worker", "from_worker"),
                                    (c - p for c, p in zip(now, last, strict=True)), strict=True)))
        self._last = now

    _last: tuple[float, float, int, int] | None = field(default=None, repr=False)


def _public(ctx: ts.Context | None, profile: str, rotation_steps: list[int] | None = None
            ) -> tuple[ts.Context, bytes]:
    """Owner context (given or new) and the public bytes the worker gets (Galois keys only for the
    given rotation steps)."""
    owner = ctx if ctx is not None else ckks.create_context(profile)
    ckks.require_private(owner)
    galois = rotation_steps is not None
    return owner, ckks.public_context_bytes(owner, galois=galois, rotation_steps=rotation_steps)


def _matrix(X: ArrayLike, what: str = "X") -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CoreError(f"{what} must be a non-empty 2-D array, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------------
# SKNN-PQC


def run_pqc_sknn(model: ArrayLike, model_labels: ArrayLike, records: ArrayLike, *,
                 layout: Literal["packed", "rows"] = "packed", metric: str = "euclidean",
                 ctx: ts.Context | None = None, profile: str = "default-128") -> tuple[np.ndarray, RunStats]:
    """SKNN-PQC end to end → (predicted labels, stats). Manhattan raises UnsupportedOperation."""
    pqc_sknn.check_metric(metric)
    m, r = _matrix(model, "model"), _matrix(records, "records")
    labels_m = np.asarray(model_labels).reshape(-1)
    if labels_m.shape[0] != m.shape[0] or m.shape[1] != r.shape[1]:
        raise CoreError("model, model labels and records disagree in shape")
    owner, pub = _public(ctx, profile)
    stats = RunStats()
    if layout == "rows":
        with stats.owner():
            mb, rb = ckks.serialize(encrypt_dataset(owner, m)), ckks.serialize(encrypt_dataset(owner, r))
        dist = stats.worker(pqc_sknn.pair_distances_bytes, pub, rb, mb, metric,
                            sent=len(pub) + payload_bytes(mb) + payload_bytes(rb))
        with stats.owner():
            enc = [ckks.deserialize(owner, row) for row in dist]
            idx = pqc_sknn.nearest_from_pairs(owner, enc, m.shape[1])
    elif layout == "packed":
        with stats.owner():
            cols = [ckks.serialize(block) for block in encrypt_dataset_columns(owner, m)]
            size = ckks.column_block_size(m.shape[0], ckks.slot_count(owner))
            queries = [ckks.serialize(ckks.encrypt_replicated(owner, row, size)) for row in r]
        dist = stats.worker(pqc_sknn.packed_distances_bytes, pub, cols, queries, metric,
                            sent=len(pub) + payload_bytes(cols) + payload_bytes(queries))
        with stats.owner():
            enc = [ckks.deserialize(owner, row) for row in dist]
            idx = pqc_sknn.nearest_from_packed(owner, enc, m.shape[0])
    else:
        raise CoreError(f"unknown SKNN layout {layout!r}; use 'packed' or 'rows'")
    out = stats.worker(pqc_sknn.labels_from_indices, labels_m, idx, sent=idx.nbytes + labels_m.nbytes)
    stats.iterations = 1
    stats.mark_round()
    return out, stats


# --------------------------------------------------------------------------------------------------
# PPLR


def run_pplr(X: ArrayLike, y: ArrayLike, *, epochs: int = 1, learning_rate: float = 0.01,
             layout: Literal["rows", "packed"] = "rows", ctx: ts.Context | None = None,
             profile: str = "ml-128",
             weights: ArrayLike | None = None, bias: float = 0.0, refresh_threshold: float = 1e-5
             ) -> tuple[np.ndarray, float, RunStats]:
    """PPLR training → (weights, bias, stats). Defaults = the worker's request defaults (1 epoch, 0.01).

    Per epoch the worker runs one pass; the data owner decrypts, zeroes |v| < ``refresh_threshold`` and
    re-encrypts (rows layout: the worker updates w and b itself; packed: it returns gradients). The rows
    layout needs Galois keys: the public context carries only those of ``pplr.rotation_steps(d)``.
    """
    x = _matrix(X)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise CoreError(f"{t.shape[0]} labels for {x.shape[0]} samples")
    if epochs < 1:
        raise CoreError("epochs must be >= 1")
    n, d = x.shape
    w = np.zeros(d) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    b = float(bias)
    owner, pub = _public(ctx, profile, pplr.rotation_steps(d) if layout == "rows" else None)
    stats = RunStats()
    if layout == "rows":
        with stats.owner():
            xb = ckks.serialize(encrypt_dataset(owner, x))
            yb = ckks.serialize(encrypt_labels(owner, t))
        for epoch in range(epochs):
            with stats.owner():
                wv, bv = encrypt_model(owner, w, b)
                wb, bb = wv.serialize(), bv.serialize()
            sent = len(pub) * (epoch == 0) + payload_bytes(xb) + payload_bytes(yb) + len(wb) + len(bb)
            nw, nb = stats.worker(pplr.fit_step_bytes, pub, xb, yb, wb, bb, learning_rate, sent=sent)
            with stats.owner():
                w, b = decrypt_model(owner, *ckks.deserialize(owner, [nw, nb]), threshold=refresh_threshold)
            stats.iterations = epoch + 1
            stats.mark_round()
    elif layout == "packed":
        with stats.owner():
            cols = [ckks.serialize(block) for block in encrypt_dataset_columns(owner, x)]
            yb = ckks.serialize(encrypt_labels_packed(owner, t))
            size = ckks.column_block_size(n, ckks.slot_count(owner))
        for epoch in range(epochs):
            with stats.owner():
                wv, bv = encrypt_model_packed(owner, w, b, size)
                wb, bb = ckks.serialize(wv), bv.serialize()
            sent = len(pub) * (epoch == 0) + payload_bytes((cols, yb, wb)) + len(bb)
            gw, gb = stats.worker(pplr.gradient_packed_bytes, pub, cols, yb, wb, bb, n, sent=sent)
            with stats.owner():
                w, b = pplr.apply_packed_gradients(owner, ckks.deserialize(owner, gw),
                                                   ckks.deserialize(owner, [gb])[0], w, b, learning_rate, n)
                w = ckks.post_process(w, refresh_threshold)
                b = float(ckks.post_process([b], refresh_threshold)[0])
            stats.iterations = epoch + 1
            stats.mark_round()
    else:
        raise CoreError(f"unknown PPLR layout {layout!r}; use 'rows' or 'packed'")
    return w, b, stats


def run_pplr_predict(X: ArrayLike, weights: ArrayLike, bias: float, *,
                     layout: Literal["rows", "packed"] = "rows",
                     ctx: ts.Context | None = None, profile: str = "ml-128") -> np.ndarray:
    """Encrypted prediction round trip → σ̃(Xw + b) probabilities (threshold them at 0.5)."""
    x = _matrix(X)
    owner, pub = _public(ctx, profile, pplr.rotation_steps(x.shape[1]) if layout == "rows" else None)
    if layout == "rows":
        wv, bv = encrypt_model(owner, weights, bias)
        xb = ckks.serialize(encrypt_dataset(owner, x))
        out = pplr.predict_bytes(pub, xb, wv.serialize(), bv.serialize())
        return decrypt_predictions(owner, ckks.deserialize(owner, out))
    if layout == "packed":
        size = ckks.column_block_size(x.shape[0], ckks.slot_count(owner))
        wv, bv = encrypt_model_packed(owner, weights, bias, size)
        cols = [ckks.serialize(block) for block in encrypt_dataset_columns(owner, x)]
        out = pplr.predict_packed_bytes(pub, cols, ckks.serialize(wv), bv.serialize())
        return decrypt_predictions(owner, ckks.deserialize(owner, out), x.shape[0])
    raise CoreError(f"unknown PPLR layout {layout!r}; use 'rows' or 'packed'")


# --------------------------------------------------------------------------------------------------
# PQC k-means (labels-only protocol)


@dataclass(frozen=True)
class PqcKMeansResult:
    labels: np.ndarray
    centroids: np.ndarray
    converged: bool
    stats: RunStats


def run_pqc_kmeans(X: ArrayLike, k: int, *, ctx: ts.Context | None = None, profile: str = "default-128",
                   max_iterations: int = 300, tol: float = 1e-4, slots: int | None = None) -> PqcKMeansResult:
    """PQC k-means end to end (first-k initialisation), stopping like scikit-learn's Lloyd:

    labels unchanged → stop; centre shift Σ‖ΔC‖² ≤ tol·mean(var(X)) → one more assignment, stop;
    after ``max_iterations`` updates → one more assignment. ``slots`` limits the block size (tests).
    """
    x = _matrix(X)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise CoreError(f"k must be in [1, n={n}], got {k}")
    owner, pub = _public(ctx, profile)
    stats = RunStats()
    with stats.owner():
        cols = [ckks.serialize(block) for block in encrypt_dataset_columns(owner, x, slots)]
        size = ckks.column_block_size(n, slots or ckks.slot_count(owner))
    tol_abs = float(np.mean(np.var(x, axis=0)) * tol)
    centroids = x[:k].copy()
    previous: np.ndarray | None = None
    labels = np.zeros(n, dtype=np.int64)
    converged, final_pass, first = False, False, True
    for it in range(max_iterations + 1):
        with stats.owner():
            cent = [ckks.serialize(row) for row in pqc_kmeans.encrypt_centroids(owner, centroids, size)]
        sent = len(pub) * first + payload_bytes(cols) + payload_bytes(cent)
        first = False
        dist = stats.worker(pqc_kmeans.distances_bytes, pub, cols, cent, sent=sent)
        with stats.owner():
            labels = pqc_kmeans.labels_from_distances(owner, [ckks.deserialize(owner, r) for r in dist], n)
        stats.iterations = it + 1
        if previous is not None and np.array_equal(labels, previous):
            converged = True
        if converged or final_pass or it == max_iterations:
            converged = converged or final_pass
            stats.mark_round()
            break
        sums = stats.worker(pqc_kmeans.masked_sums_bytes, pub, cols, labels, k,
                            sent=payload_bytes(cols) + labels.nbytes)
        with stats.owner():
            new, _ = pqc_kmeans.centroids_from_sums(owner, [ckks.deserialize(owner, r) for r in sums], labels,
                                                    centroids)
        final_pass = float(((new - centroids) ** 2).sum()) <= tol_abs
        centroids, previous = new, labels
        stats.mark_round()
    return PqcKMeansResult(labels=labels, centroids=centroids, converged=converged, stats=stats)
