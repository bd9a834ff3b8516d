"""SKMeans-PQC: reference example, corrected-rule equivalence with L1 k-means, pitfalls, wrappers.

Whole jobs run the data-owner driver over the in-process worker (tests/core/inprocess_owner.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from core import pqc_dataowner as do
from core.algorithms import pqc_skmeans, udm
from core.algorithms.kmeans import l1_kmeans
from core.crypto import ckks
from core.errors import CoreError
from schemas.operations import Op
from tests.core.inprocess_owner import InProcessOwner

REF_X = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])


def test_reference_example_step_by_step(owner: ts.Context, worker: ts.Context) -> None:
    k, a = 2, 2
    rows = do.encrypt_dataset(worker, REF_X)  # the worker's view: vectors under the public context
    zeros = do.init_shift_matrix(worker, k, a)
    U = udm.build_udm(REF_X, k)
    labels, cent, shift = pqc_skmeans.encrypted_phase(rows, U, k, True, None, zeros)
    np.testing.assert_array_equal(labels, [0, 1, 1, 1])
    np.testing.assert_allclose(do.decrypt_centroids(owner, cent, a), [[1, 2], [37 / 6, 6.1]], atol=1e-5)
    S = do.decrypt_shift(owner, shift, a)
    np.testing.assert_allclose(S, [[0, 0], [1.5 - 37 / 6, 1.8 - 6.1]], atol=1e-5)
    U = pqc_skmeans.plaintext_phase(U, S)
    labels, cent2, shift = pqc_skmeans.encrypted_phase(rows, U, k, False, cent, zeros)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_allclose(do.decrypt_centroids(owner, cent2, a), [[1.25, 1.9], [8.5, 8.25]], atol=1e-5)
    U = pqc_skmeans.plaintext_phase(U, do.decrypt_shift(owner, shift, a))
    # iteration 3: same members -> bit-identical centroids; must not raise "transparent"
    labels, _, shift = pqc_skmeans.encrypted_phase(rows, U, k, False, cent2, zeros)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_allclose(do.decrypt_shift(owner, shift, a), 0.0, atol=1e-6)


def test_reference_example_driver(inproc: InProcessOwner) -> None:
    res = inproc.run(Op.PQC_SKMEANS, REF_X, 2, tolerance=1e-4)
    np.testing.assert_array_equal(res.labels, [0, 0, 1, 1])
    assert res.converged and res.n_iter == 3
    np.testing.assert_allclose(res.centroids, [[1.25, 1.9], [8.5, 8.25]], atol=1e-5)
    report = res.report
    assert len(report.rounds) == 3 and report.bytes_up > 0 and report.bytes_down > 0
    assert report.owner_cpu_seconds > 0 and all(r["commands"] >= 1 for r in report.rounds)


def test_udm_bug_counterexample_gives_corrected_result(inproc: InProcessOwner) -> None:
    # reference 2.6: the original converges to [0,1,2,1,0,0]; correct L1 k-means gives [2,1,2,1,0,0]
    D = np.array([[6.0], [15.0], [4.0], [13.0], [9.0], [10.0]])
    res = inproc.run(Op.PQC_SKMEANS, D, 3, tolerance=1e-4)
    np.testing.assert_array_equal(res.labels, [2, 1, 2, 1, 0, 0])
    assert res.n_iter == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_l1_kmeans(inproc: InProcessOwner, seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(3, 3))
    X = np.concatenate([c + rng.normal(scale=1.5, size=(20, 3)) for c in centres])
    X = X[rng.permutation(len(X))]
    ref = l1_kmeans(X, 3, max_iter=10, tolerance=1e-4)
    res = inproc.run(Op.PQC_SKMEANS, X, 3, max_iterations=10, tolerance=1e-4)
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert res.n_iter == ref.n_iter
    np.testing.assert_allclose(res.centroids, ref.centroids, atol=1e-4)


def test_empty_cluster_keeps_previous_centroid(owner: ts.Context, worker: ts.Context) -> None:
    rows = do.encrypt_dataset(worker, REF_X)
    prev = do.encrypt_dataset(worker, [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    labels = np.array([0, 0, 2, 2])  # cluster 1 empty
    cent = pqc_skmeans.homomorphic_centroids(rows, labels, 3, prev)
    assert cent[1] is prev[1]
    shift = pqc_skmeans.shifts(prev, cent, do.init_shift_matrix(worker, 3, 2))
    S = do.decrypt_shift(owner, shift, 2)
    np.testing.assert_allclose(S, [[-1.25, -1.9], [0, 0], [5 - 8.5, 5 - 8.25]], atol=1e-5)


def test_chunked_sums_equal_full(owner: ts.Context, worker: ts.Context) -> None:
    X = np.random.default_rng(3).normal(size=(9, 2))
    rows = do.encrypt_dataset(worker, X)
    labels = np.array([0, 1, 1, 0, 2, 2, 0, 1, 0])
    full = pqc_skmeans.cluster_sums(rows, labels, 3)
    parts = pqc_skmeans.merge_sums(pqc_skmeans.cluster_sums(rows[:4], labels[:4], 3),
                                   pqc_skmeans.cluster_sums(rows[4:], labels[4:], 3))
    for f, p, j in zip(full, parts, range(3), strict=True):
        expected = X[labels == j].sum(axis=0)
        np.testing.assert_allclose(ckks.decrypt_vector(owner, f), expected, atol=1e-5)
        np.testing.assert_allclose(ckks.decrypt_vector(owner, p), expected, atol=1e-5)
    only_first = pqc_skmeans.cluster_sums(rows[:1], labels[:1], 3)
    assert only_first[1] is None and only_first[2] is None


def test_bytes_wrapper_matches(owner: ts.Context, worker: ts.Context, public_bytes: bytes) -> None:
    rows = do.encrypt_dataset(owner, REF_X)
    zeros = do.init_shift_matrix(owner, 2, 2)
    U = udm.build_udm(REF_X, 2)
    labels, cent, shift = pqc_skmeans.encrypted_phase_bytes(
        public_bytes, ckks.serialize(rows), U, 2, True, None, ckks.serialize(zeros))
    np.testing.assert_array_equal(labels, [0, 1, 1, 1])
    assert all(isinstance(b, bytes) for b in cent + shift)
    S = do.decrypt_shift(owner, ckks.deserialize(owner, shift), 2)
    np.testing.assert_allclose(S[1], [1.5 - 37 / 6, 1.8 - 6.1], atol=1e-5)
    with pytest.raises(ckks.SecretKeyPresent):
        pqc_skmeans.encrypted_phase_bytes(ckks.private_context_bytes(owner), ckks.serialize(rows), U, 2, True,
                                          None, ckks.serialize(zeros))


def test_input_errors(worker: ts.Context) -> None:
    rows = do.encrypt_dataset(worker, REF_X)
    zeros = do.init_shift_matrix(worker, 2, 2)
    U = udm.build_udm(REF_X, 2)
    with pytest.raises(CoreError):
        pqc_skmeans.encrypted_phase(rows[:3], U, 2, True, None, zeros)
    with pytest.raises(CoreError, match="previous centroids"):
        pqc_skmeans.encrypted_phase(rows, U, 2, False, None, zeros)
    with pytest.raises(CoreError, match="init shift"):
        pqc_skmeans.encrypted_phase(rows, U, 2, True, None, zeros[:1])
    with pytest.raises(CoreError):
        pqc_skmeans.cluster_sums(rows, np.array([0, 1, 5, 0]), 2)
