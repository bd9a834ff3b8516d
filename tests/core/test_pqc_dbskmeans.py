"""DBSKMeans-PQC: FDH-OPE UDM + CKKS records; the fixed step 2 runs; labels on separated data.

Whole jobs run the data-owner driver over the in-process worker (tests/core/inprocess_owner.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from sklearn.metrics import adjusted_rand_score

from core import pqc_dataowner as do
from core.algorithms import pqc_dbskmeans, udm
from core.algorithms.kmeans import l1_kmeans
from core.errors import CoreError
from schemas.operations import Op
from tests.core.inprocess_owner import InProcessOwner


def test_reference_example(inproc: InProcessOwner) -> None:
    X = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    res = inproc.run(Op.PQC_DBSKMEANS, X, 2, tolerance=1e-4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(res.labels, [0, 0, 1, 1])
    assert res.converged
    np.testing.assert_allclose(res.centroids, [[1.25, 1.9], [8.5, 8.25]], atol=1e-5)


def test_one_attribute_first_iteration_equals_skmeans(owner: ts.Context) -> None:
    # a = 1: OPE is increasing in |u|, so the first assignment equals the plaintext one
    X = np.random.default_rng(4).uniform(0, 50, size=(30, 1))
    rows = do.encrypt_dataset(owner, X)
    zeros = do.init_shift_matrix(owner, 3, 1)
    plain = udm.build_udm(X, 3)
    key = pqc_dbskmeans.generate_udm_key(plain, rng=np.random.default_rng(1))
    ope = pqc_dbskmeans.encrypt_udm(key, plain, np.random.default_rng(2))
    lab_ope, _, _ = pqc_dbskmeans.encrypted_phase(rows, ope, 3, True, None, zeros)
    lab_plain = udm.assign(plain, 3, True)
    np.testing.assert_array_equal(lab_ope, lab_plain)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separated_one_dimensional_blobs(inproc: InProcessOwner, seed: int) -> None:
    # a = 1 and one initial centroid per blob: the OPE approximation does not change the labels
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + rng.normal(scale=1.0, size=(15, 1)) for c in ([0.0], [30.0], [60.0])])
    X = np.concatenate([X[[0, 15, 30]], X[rng.permutation(np.r_[1:15, 16:30, 31:45])]])
    res = inproc.run(Op.PQC_DBSKMEANS, X, 3, tolerance=1e-4, rng=np.random.default_rng(seed + 10))
    ref = l1_kmeans(X, 3, max_iter=10, tolerance=1e-4)
    assert adjusted_rand_score(ref.labels, res.labels) == pytest.approx(1.0)
    assert res.converged


def test_ckks_part_is_exact_whatever_the_ope_key(inproc: InProcessOwner) -> None:
    # With a > 1, sum_z |OPE(u_z)| is not monotone in sum_z |u_z| and OPE(U) + OPE(S) != OPE(U + S), so the
    # labels depend on the key (the original's approximation). The CKKS side must still be exact:
    # final centroids = means of the final clusters, shifts = differences of consecutive centroids.
    rng = np.random.default_rng(5)
    X = rng.uniform(0, 20, size=(24, 3))
    res = inproc.run(Op.PQC_DBSKMEANS, X, 3, max_iterations=4, tolerance=1e-4, rng=np.random.default_rng(3))
    assert res.labels.shape == (24,) and set(res.labels) <= {0, 1, 2}
    for j in np.unique(res.labels):
        np.testing.assert_allclose(res.centroids[j], X[res.labels == j].mean(axis=0), atol=1e-4)
    assert len(res.shifts) == res.n_iter
    np.testing.assert_allclose(sum(res.shifts), X[:3] - res.centroids, atol=1e-4)


def test_plaintext_phase_adds_ope_shift() -> None:
    ope_udm = np.arange(24.0).reshape(4, 3, 2)
    out = pqc_dbskmeans.plaintext_phase(ope_udm, [[1.0, 2.0], [3.0, 4.0]])
    assert out.shape == (4, 2, 2)
    np.testing.assert_allclose(out, ope_udm[:, :2] + np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(CoreError):
        pqc_dbskmeans.plaintext_phase(ope_udm, [1.0, 2.0])
