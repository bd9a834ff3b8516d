"""CPU-bound steps of the CKKS ("PQC") operations, run in the compute pool (``ctx.compute``).

Every function is a picklable top-level function: it receives the worker's :class:`PublicKeys`
summary, serialized ciphertexts (``bytes``), numpy arrays and plain values, and returns the same
kinds. The TenSEAL context is built once per pool process from ``KEYS_PATH``
(:func:`worker.keys.context_for`); ciphertexts are deserialized against it, handed to the pure core
(``core.algorithms.pqc_*``, ``core.algorithms.pplr``) and serialized back. No I/O besides the key
files, no asyncio, no settings.

Errors: everything here works on objects read from storage (the handler validated the parameters
first), so a core complaint means that storage disagrees with itself or with the key material:

* ``MalformedMaterial`` (not a ciphertext of this context) → ``CorruptObject`` (422);
* ``MissingKeyMaterial`` (e.g. no relinearisation keys) → ``MissingKeys`` (422);
* any other ``CoreError`` (sizes that do not fit together, too few levels left) → ``ValidationFailed`` (422).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import tenseal as ts

from core.algorithms import pplr, pqc_kmeans, pqc_skmeans, pqc_sknn
from core.crypto import ckks
from core.errors import CoreError
from worker.errors import CorruptObject, MissingKeys, ValidationFailed
from worker.keys import PublicKeys, context_for

__all__ = [
    "kmeans_distances",
    "kmeans_sums",
    "pplr_gradient_packed",
    "pplr_predict",
    "pplr_predict_packed",
    "pplr_train",
    "skmeans_step1",
    "sknn_packed",
    "sknn_pairs",
]

Blobs = Sequence[bytes]


@contextlib.contextmanager
def _core_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ckks.MalformedMaterial as error:
        raise CorruptObject(f"{what}: a stored object is not a CKKS ciphertext for the worker's public "
                            f"context ({error})") from None
    except ckks.MissingKeyMaterial as error:
        raise MissingKeys(f"{what}: {error}") from None
    except ValueError as error:  # CoreError, and TenSEAL's complaints about its inputs
        raise ValidationFailed(f"{what}: {error}") from None


def _load(keys: PublicKeys, blobs: Blobs) -> list[ts.CKKSVector]:
    return ckks.deserialize(context_for(keys), blobs)


def _grid(keys: PublicKeys, blobs: Blobs, cols: int) -> list[list[ts.CKKSVector]]:
    """A flat row-major list of ``rows*cols`` ciphertexts → ``rows`` lists of ``cols`` vectors."""
    vectors = _load(keys, blobs)
    return [vectors[i : i + cols] for i in range(0, len(vectors), cols)]


def _flat(rows: Sequence[Sequence[ts.CKKSVector]]) -> list[bytes]:
    return [v.serialize() for row in rows for v in row]


# ----------------------------------------------------------------------------- SKMeans-PQC / DBSKMeans-PQC
def skmeans_step1(
    keys: PublicKeys,
    rows: Blobs,
    udm_matrix: np.ndarray,
    k: int,
    start: bool,
    previous: Blobs | None,
    init_shift: Blobs,
    udm_shift: np.ndarray | None = None,
) -> tuple[np.ndarray, list[bytes], list[bytes]]:
    """Encrypted phase (plaintext or FDH-OPE UDM, plus the cumulative shift C when the UDM is the
    upload): ``(labels, new centroids, shift)``."""
    with _core_errors("SKMeans-PQC step 1"):
        prev = None if start or previous is None else _load(keys, previous)
        labels, centroids, shift = pqc_skmeans.encrypted_phase(
            _load(keys, rows), udm_matrix, k, start, prev, _load(keys, init_shift), udm_shift
        )
        return labels, ckks.serialize(centroids), ckks.serialize(shift)


# ----------------------------------------------------------------------------- SKNN-PQC
def sknn_pairs(keys: PublicKeys, records: Blobs, model: Blobs) -> list[bytes]:
    """Row layout: ``(x_t − y_m)²`` per pair, flat row-major ``n_rec × n_model``."""
    with _core_errors("SKNN-PQC step 1"):
        return _flat(pqc_sknn.pair_distances(_load(keys, records), _load(keys, model)))


def sknn_packed(
    keys: PublicKeys, model_columns: Blobs, blocks: int, queries: Blobs, a: int
) -> tuple[list[bytes], int]:
    """Packed layout: per record and model block one ciphertext of squared distances, flat
    row-major ``n_rec × blocks``, and the block size B. ``model_columns`` is ``blocks × a``,
    ``queries`` ``n_rec × a`` (each record's attributes replicated over B slots)."""
    with _core_errors("SKNN-PQC step 1"):
        cols = _grid(keys, model_columns, a)
        if len(cols) != blocks:
            raise CoreError(f"model has {len(cols)} blocks of {a} ciphertexts, expected {blocks}")
        return _flat(pqc_sknn.packed_distances(cols, _grid(keys, queries, a))), cols[0][0].size()


# ----------------------------------------------------------------------------- PPLR
def _check_features(weights: ts.CKKSVector, n_features: int) -> None:
    if n_features and weights.size() != n_features:
        raise CoreError(f"n_features={n_features} but the weights ciphertext holds {weights.size()} slots")


def pplr_train(
    keys: PublicKeys,
    x_rows: Blobs,
    y: Blobs,
    weights: bytes,
    bias: bytes,
    learning_rate: float,
    epochs: int,
    n_features: int = 0,
) -> tuple[bytes, bytes]:
    """``epochs`` homomorphic full-batch steps (row layout) → new (weights, bias) ciphertexts."""
    with _core_errors("PPLR train"):
        xs, ys = _load(keys, x_rows), _load(keys, y)
        w, b = _load(keys, [weights, bias])
        _check_features(w, n_features)
        for _ in range(epochs):
            w, b = pplr.fit_step(xs, ys, w, b, learning_rate)
        return w.serialize(), b.serialize()


def pplr_predict(
    keys: PublicKeys, x_rows: Blobs, weights: bytes, bias: bytes, n_features: int = 0
) -> list[bytes]:
    """Encrypted σ̃(x·w + b) per record (size-1 ciphertexts)."""
    with _core_errors("PPLR predict"):
        w, b = _load(keys, [weights, bias])
        _check_features(w, n_features)
        xs = _load(keys, x_rows)
        if any(x.size() != w.size() for x in xs):
            raise CoreError(f"records must hold {w.size()} slots, as the weights")
        return ckks.serialize(pplr.predict(xs, w, b))


def pplr_gradient_packed(
    keys: PublicKeys, columns: Blobs, d: int, y_blocks: Blobs, weights: Blobs, bias: bytes, first_block: int,
    n: int, last: bool,
) -> list[bytes]:
    """Packed layout, one part of the blocks (``columns`` flat ``blocks × d``): ``[Σ e⊙X_z for z] + [Σ e]``.

    ``n`` counts the records of the whole dataset; this part holds blocks ``first_block...``: its real
    records are the rest (the last part, which checks that they fit) or all its slots (any other part).
    """
    with _core_errors("PPLR train (packed)"):
        cols, ys = _grid(keys, columns, d), _load(keys, y_blocks)
        w, (b,) = _load(keys, weights), _load(keys, [bias])
        size = cols[0][0].size()
        n_part = n - first_block * size if last else len(cols) * size
        gw, gb = pplr.gradient_packed(cols, ys, w, b, n_part)
        return ckks.serialize([*gw, gb])


def pplr_predict_packed(
    keys: PublicKeys, columns: Blobs, d: int, weights: Blobs, bias: bytes
) -> tuple[list[bytes], int]:
    """Packed layout: one σ̃(Xw + b) ciphertext per block (``columns`` flat ``blocks × d``), and the
    block size B."""
    with _core_errors("PPLR predict (packed)"):
        w, (b,) = _load(keys, weights), _load(keys, [bias])
        cols = _grid(keys, columns, d)
        return ckks.serialize(pplr.predict_packed(cols, w, b)), cols[0][0].size()


# ----------------------------------------------------------------------------- PQC k-means
def kmeans_distances(keys: PublicKeys, columns: Blobs, a: int, centroids: Blobs) -> tuple[list[bytes], int]:
    """Step 1: flat row-major ``blocks × k`` ciphertexts of squared distances (``columns`` is
    ``blocks × a``, ``centroids`` ``k × a``, both flat row-major), and the block size B."""
    with _core_errors("PQC k-means step 1"):
        cols = _grid(keys, columns, a)
        return _flat(pqc_kmeans.distances(cols, _grid(keys, centroids, a))), cols[0][0].size()


def kmeans_sums(keys: PublicKeys, columns: Blobs, a: int, labels: np.ndarray, k: int) -> list[bytes]:
    """Step 2: flat row-major ``k × a`` ciphertexts, the masked per-cluster column sums."""
    with _core_errors("PQC k-means step 2"):
        return _flat(pqc_kmeans.masked_sums(_grid(keys, columns, a), labels, k))
