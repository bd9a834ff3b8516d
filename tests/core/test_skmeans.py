"""SKMeans (Liu + UDM): reference examples, corrected rule, empty clusters, parity with l1_kmeans.

Whole jobs run the data-owner driver over the in-process worker (tests/core/inprocess_owner.py).
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import dataowner
from core.algorithms import skmeans
from core.algorithms.kmeans import l1_kmeans
from core.algorithms.udm import build_udm
from core.crypto import liu
from core.errors import CoreError
from schemas.operations import Op
from tests.core.inprocess_owner import InProcessOwner

KEY = liu.generate_key(rng=np.random.default_rng(42))
COUNTER = np.array([6, 15, 4, 13, 9, 10], dtype=float)[:, None]


def _faithful_original(d: np.ndarray, k: int, max_iter: int) -> tuple[np.ndarray, int]:
    """The original's transposed-read rule (reference 2.3/2.4), plaintext, for the counterexample only."""
    n = d.shape[0]
    u = d[:, None, :] - d[None, :, :]
    cents = d[:k].copy()
    labels = np.zeros(n, dtype=int)
    for it in range(1, max_iter + 1):
        labels = np.zeros(n, dtype=int)
        first = k if it == 1 else 0
        labels[:first] = np.arange(first)
        for x in range(first, n):
            sims = [np.abs(u[x, y] if y <= x else u[y, x]).sum() for y in range(k)]
            labels[x] = int(np.argmin(sims))
        new = np.array([d[labels == j].mean(axis=0) if np.any(labels == j) else np.zeros(d.shape[1])
                        for j in range(k)])
        s = cents - new
        cents = new
        if np.abs(s).max() <= 1e-9:
            return labels, it
        u2 = np.empty((n, k, d.shape[1]))
        for y in range(k):
            u2[y:, y] = u[y:, y] + s[y]
            if y > 0:
                u2[:y, y] = -u[y, :y] + s[y]
        u = u2
    return labels, max_iter


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessOwner]:
    yield InProcessOwner(Path(tmp_path_factory.mktemp("skmeans-owner")), liu_key=KEY)


def test_reference_counterexample(owner: InProcessOwner) -> None:
    """Reference 2.6: corrected [2,1,2,1,0,0] in 3 iterations; the original gave [0,1,2,1,0,0] in 2."""
    for compact in (True, False):
        run = owner.run(Op.SKMEANS, COUNTER, 3, max_iterations=10, tolerance=1e-9, compact=compact)
        np.testing.assert_array_equal(run.labels, [2, 1, 2, 1, 0, 0])
        assert run.n_iter == 3 and run.converged
    labels, n_iter = _faithful_original(COUNTER, 3, 10)
    np.testing.assert_array_equal(labels, [0, 1, 2, 1, 0, 0])
    assert n_iter == 2


def test_reference_first_iteration_shift(owner: InProcessOwner) -> None:
    run = owner.run(Op.SKMEANS, COUNTER, 3, max_iterations=1)
    np.testing.assert_allclose(run.shifts[0][:, 0], [-7 / 3, 1, 0], atol=1e-9)
    assert not run.converged


def test_reference_two_blobs_and_pqc_example(owner: InProcessOwner) -> None:
    d = np.array([[0, 0], [10, 10], [1, 0], [0, 1], [9, 10], [10, 9]], dtype=float)
    run = owner.run(Op.SKMEANS, d, 2)
    np.testing.assert_array_equal(run.labels, [0, 1, 0, 0, 1, 1])
    assert run.n_iter == 2
    x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    enc, u = dataowner.prepare_skmeans(x, 2, KEY)
    first = skmeans.encrypted_phase(enc, u, 2, True, None)
    np.testing.assert_array_equal(first.labels, [0, 1, 1, 1])
    np.testing.assert_allclose(liu.decrypt(KEY, first.centroids), [[1, 2], [37 / 6, 6.1]], atol=1e-9)
    ok, s = skmeans.check_shift(KEY, first.shift, 1e-6)
    assert not ok
    np.testing.assert_allclose(s, [[0, 0], [-14 / 3, -4.3]], atol=1e-9)
    second = skmeans.encrypted_phase(enc, skmeans.plaintext_phase(u, s), 2, False, first.centroids)
    np.testing.assert_array_equal(second.labels, [0, 0, 1, 1])
    np.testing.assert_allclose(liu.decrypt(KEY, second.centroids), [[1.25, 1.9], [8.5, 8.25]], atol=1e-9)
    run = owner.run(Op.SKMEANS, x, 2)
    np.testing.assert_array_equal(run.labels, [0, 0, 1, 1])
    assert run.n_iter == 3
    np.testing.assert_allclose(run.centroids, [[1.25, 1.9], [8.5, 8.25]], atol=1e-9)
    # per-round accounting: one entry per round, the owner's CPU apart, bytes both ways
    assert len(run.report.rounds) == 3 and run.report.bytes_up > 0 and run.report.bytes_down > 0


def test_empty_cluster_keeps_previous_centroid_and_does_not_leak() -> None:
    """Reference 2.7: the original turned an empty cluster into Enc(0), exposing D in the UDM column."""
    d = np.array([[0.0], [1.0], [2.0], [3.0]])
    enc = liu.encrypt(KEY, d)
    prev_plain = np.array([[1.5], [50.0]])
    prev = liu.encrypt(KEY, prev_plain)
    u = d[:, None, :] - prev_plain[None]  # U = D - c_prev: nobody is closer to 50 than to 1.5
    res = skmeans.encrypted_phase(enc, u, 2, False, prev)
    np.testing.assert_array_equal(res.labels, [0, 0, 0, 0])
    np.testing.assert_array_equal(res.centroids[1], prev[1])
    shift = skmeans.decrypt_shift(KEY, res.shift)
    np.testing.assert_allclose(shift, [[0.0], [0.0]], atol=1e-12)
    new_u = skmeans.plaintext_phase(u, shift)
    np.testing.assert_allclose(new_u[:, 1], d - 50.0)  # still D - c, not D itself


def test_encrypted_phase_validation() -> None:
    enc, u = dataowner.prepare_skmeans(COUNTER, 3, KEY)
    with pytest.raises(CoreError):
        skmeans.encrypted_phase(enc, u, 3, False, None)
    with pytest.raises(CoreError):
        skmeans.encrypted_phase(enc[:-1], u, 3, True, None)
    with pytest.raises(CoreError):
        skmeans.encrypted_phase(enc, u, 3, True, np.zeros((2, 1, 3)))
    with pytest.raises(CoreError):
        skmeans.encrypted_phase(enc, u, 7, True, None)
    with pytest.raises(CoreError):
        skmeans.decrypt_shift(KEY, np.zeros((3, 3)))
    # float32 ciphertexts (as the original stores them) are accepted
    res = skmeans.encrypted_phase(enc.astype(np.float32), u.astype(np.float32), 3, True, None)
    assert res.centroids.dtype == np.float64 and res.shift.shape == (3, 1, 3)


def _data(seed: int, n: int, a: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-5, 5, size=(k, a))
    return centres[rng.integers(0, k, size=n)] + rng.normal(0, rng.uniform(0.3, 3), size=(n, a))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), a=st.integers(1, 4), k=st.integers(1, 5),
       compact=st.booleans())
def test_labels_equal_l1_kmeans(
    owner: InProcessOwner, seed: int, n: int, a: int, k: int, compact: bool
) -> None:
    k = min(k, n)
    d = _data(seed, n, a, k)
    owner.keys.import_liu(liu.generate_key(rng=np.random.default_rng(seed)))
    ref = l1_kmeans(d, k, max_iter=8, tolerance=1e-9)
    run = owner.run(Op.SKMEANS, d, k, max_iterations=8, tolerance=1e-9, compact=compact,
                    rng=np.random.default_rng(seed + 1))
    np.testing.assert_array_equal(run.labels, ref.labels)
    assert run.n_iter == ref.n_iter and run.converged == ref.converged
    np.testing.assert_allclose(run.centroids, ref.centroids, atol=1e-8)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 30), k=st.integers(1, 4))
def test_compact_equals_full(seed: int, n: int, k: int) -> None:
    k = min(k, n)
    d = _data(seed, n, 2, k)
    enc = liu.encrypt(KEY, d, np.random.default_rng(seed))
    full, compact = build_udm(d), build_udm(d, k)
    r_full = skmeans.encrypted_phase(enc, full, k, True, None)
    r_comp = skmeans.encrypted_phase(enc, compact, k, True, None)
    np.testing.assert_array_equal(r_full.labels, r_comp.labels)
    np.testing.assert_array_equal(r_full.shift, r_comp.shift)
    s = skmeans.decrypt_shift(KEY, r_full.shift)
    np.testing.assert_array_equal(skmeans.plaintext_phase(full, s), skmeans.plaintext_phase(compact, s))
