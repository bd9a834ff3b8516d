"""SKNN-PQC: reference example, both layouts, distances vs plaintext, Manhattan refused."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from core import pqc_dataowner as do
from core.algorithms import pqc_sknn
from core.algorithms.knn import knn_predict, nearest_indices, pairwise_distances
from core.crypto import ckks
from core.errors import CoreError, UnsupportedOperation

M = np.array([[0.0, 0.0], [5.0, 5.0]])
M_LABELS = np.array([7, 9])
T = np.array([[1.0, 0.0], [4.0, 6.0]])


@pytest.mark.parametrize("layout", ["packed", "rows"])
def test_reference_example(owner: ts.Context, layout: str) -> None:
    labels, stats = do.run_pqc_sknn(M, M_LABELS, T, layout=layout, ctx=owner)
    np.testing.assert_array_equal(labels, [7, 9])
    assert stats.bytes_to_worker > 0 and stats.bytes_from_worker > 0


@pytest.mark.parametrize("metric", ["manhattan", "MANHATHAN", "l1", "cityblock"])
def test_manhattan_is_unsupported(owner: ts.Context, metric: str) -> None:
    with pytest.raises(UnsupportedOperation, match="Manhattan"):
        do.run_pqc_sknn(M, M_LABELS, T, metric=metric, ctx=owner)
    rows = ckks.encrypt_rows(owner, T)
    with pytest.raises(UnsupportedOperation):
        pqc_sknn.pair_distances(rows, rows, metric)


def test_pair_distances_match_plaintext(owner: ts.Context) -> None:
    d = pqc_sknn.pair_distances(ckks.encrypt_rows(owner, T), ckks.encrypt_rows(owner, M), "EUCLIDEAN")
    got = np.array([[ckks.decrypt_vector(owner, v).sum() for v in row] for row in d])
    np.testing.assert_allclose(got, [[1, 41], [52, 2]], atol=1e-4)


def test_packed_distances_match_plaintext_with_blocks(owner: ts.Context) -> None:
    rng = np.random.default_rng(0)
    model = rng.uniform(-10, 10, size=(13, 4))
    records = rng.uniform(-10, 10, size=(5, 4))
    cols = ckks.encrypt_columns(owner, model, slots=4)  # 4 blocks, last one padded
    queries = [ckks.encrypt_replicated(owner, r, 4) for r in records]
    dists = pqc_sknn.packed_distances(cols, queries)
    assert len(dists) == 5 and all(len(row) == 4 for row in dists)
    got = np.stack([np.concatenate([ckks.decrypt_vector(owner, v) for v in row])[:13] for row in dists])
    np.testing.assert_allclose(got, pairwise_distances(records, model, "euclidean"), rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(pqc_sknn.nearest_from_packed(owner, dists, 13),
                                  nearest_indices(model, records, "euclidean"))


@pytest.mark.parametrize("layout", ["packed", "rows"])
def test_random_data_equals_plaintext_knn(owner: ts.Context, layout: str) -> None:
    rng = np.random.default_rng(1)
    model = rng.normal(size=(12, 3))
    labels = rng.integers(0, 3, size=12)
    records = rng.normal(size=(4, 3))
    got, _ = do.run_pqc_sknn(model, labels, records, layout=layout, ctx=owner)
    np.testing.assert_array_equal(got, knn_predict(model, labels, records, "euclidean"))


def test_bytes_wrappers(owner: ts.Context) -> None:
    pub = ckks.public_context_bytes(owner)
    out = pqc_sknn.pair_distances_bytes(pub, ckks.serialize(ckks.encrypt_rows(owner, T)),
                                        ckks.serialize(ckks.encrypt_rows(owner, M)))
    idx = pqc_sknn.nearest_from_pairs(owner, [ckks.deserialize(owner, r) for r in out], 2)
    np.testing.assert_array_equal(idx, [0, 1])
    cols = [ckks.serialize(b) for b in ckks.encrypt_columns(owner, M)]
    qs = [ckks.serialize(ckks.encrypt_replicated(owner, r, 2)) for r in T]
    out = pqc_sknn.packed_distances_bytes(pub, cols, qs)
    idx = pqc_sknn.nearest_from_packed(owner, [ckks.deserialize(owner, r) for r in out], 2)
    np.testing.assert_array_equal(idx, [0, 1])


def test_labels_from_indices() -> None:
    np.testing.assert_array_equal(pqc_sknn.labels_from_indices(M_LABELS, [1, 0, 1]), [9, 7, 9])
    with pytest.raises(CoreError):
        pqc_sknn.labels_from_indices(M_LABELS, [2])


def test_shape_errors(owner: ts.Context) -> None:
    with pytest.raises(CoreError):
        do.run_pqc_sknn(M, [1, 2, 3], T, ctx=owner)
    with pytest.raises(CoreError):
        pqc_sknn.pair_distances(ckks.encrypt_rows(owner, T), ckks.encrypt_rows(owner, np.zeros((2, 3))))
    with pytest.raises(CoreError):
        do.run_pqc_sknn(M, M_LABELS, T, layout="diagonal", ctx=owner)
