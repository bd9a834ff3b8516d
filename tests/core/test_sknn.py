"""SKNN over Liu: reference labels, exact decrypted squared distances, approximate Manhattan flag."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import dataowner
from core.algorithms import sknn
from core.algorithms.knn import knn_predict, pairwise_distances
from core.crypto import liu
from core.errors import CoreError

MODEL = np.array([[0.0, 0.0], [5.0, 5.0]])
RECORDS = np.array([[1.0, 0.0], [4.0, 6.0]])


@pytest.mark.parametrize("level", [128, 192, 256])
def test_reference_example(level: int) -> None:
    key = liu.generate_key(security_level=level, rng=np.random.default_rng(level))  # fixed: see approx check
    for metric in ("euclidean", "manhattan", "MANHATHAN"):
        np.testing.assert_array_equal(dataowner.run_sknn(MODEL, [[7, 9]], RECORDS, key, metric), [7, 9])
    enc_m, enc_r = liu.encrypt(key, MODEL), liu.encrypt(key, RECORDS)
    exact = sknn.encrypted_distances(enc_r, enc_m, "euclidean")
    assert exact.exact and exact.metric == "euclidean" and exact.values.shape == (2, 2, key.m**2)
    np.testing.assert_allclose(dataowner.decrypt_distances(key, exact), [[1, 41], [52, 2]], atol=1e-6)
    approx = sknn.encrypted_distances(enc_r, enc_m, "manhattan")
    assert not approx.exact and approx.values.shape == (2, 2, key.m)
    # L1 = [[1, 9], [10, 2]] (the reference lists t1 -> 8, but |4| + |6| = 10); the decrypted values are
    # only close to it because integer-key ciphertexts are nearly scaled plaintexts
    l1 = [[1, 9], [10, 2]]
    np.testing.assert_allclose(dataowner.decrypt_distances(key, approx), l1, rtol=0.05, atol=0.05)
    np.testing.assert_array_equal(sknn.nearest_from_distances(key, exact), [0, 1])
    np.testing.assert_array_equal(sknn.nearest_from_distances(key, approx.values), [0, 1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_r=st.integers(1, 15), n_m=st.integers(1, 15), a=st.integers(1, 4))
def test_euclidean_is_exact(seed: int, n_r: int, n_m: int, a: int) -> None:
    rng = np.random.default_rng(seed)
    key = liu.generate_key(security_level=[128, 192, 256][seed % 3], rng=rng)
    model, records = rng.normal(0, 10, size=(n_m, a)), rng.normal(0, 10, size=(n_r, a))
    dist = sknn.encrypted_distances(liu.encrypt(key, records, rng), liu.encrypt(key, model, rng))
    truth = pairwise_distances(records, model, "euclidean")
    np.testing.assert_allclose(dataowner.decrypt_distances(key, dist), truth, rtol=1e-9, atol=1e-7)
    labels = np.arange(n_m) * 10
    got = sknn.labels_from_indices(sknn.nearest_from_distances(key, dist), labels)
    srt = np.sort(truth, axis=1)
    clear = n_m == 1 or np.all(srt[:, 1] - srt[:, 0] > 1e-6)  # skip float near-ties
    if clear:
        np.testing.assert_array_equal(got, knn_predict(model, labels, records, "euclidean"))


def test_blocked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    key = liu.generate_key()
    rng = np.random.default_rng(1)
    enc_r, enc_m = liu.encrypt(key, rng.normal(size=(9, 2))), liu.encrypt(key, rng.normal(size=(5, 2)))
    ref_e = sknn.encrypted_distances(enc_r, enc_m, "euclidean").values
    ref_m = sknn.encrypted_distances(enc_r, enc_m, "manhattan").values
    monkeypatch.setattr(sknn, "_BLOCK_ELEMENTS", 4)
    np.testing.assert_array_equal(sknn.encrypted_distances(enc_r, enc_m, "euclidean").values, ref_e)
    np.testing.assert_array_equal(sknn.encrypted_distances(enc_r, enc_m, "manhattan").values, ref_m)


def test_labels_from_indices() -> None:
    np.testing.assert_array_equal(sknn.labels_from_indices(np.array([[1], [0]]), [[7, 9]]), [9, 7])
    np.testing.assert_array_equal(sknn.labels_from_indices(np.array([1.0, 0.0]), [7, 9]), [9, 7])
    for bad in (np.array([2]), np.array([-1]), np.array([0.5]), np.array(["a"])):
        with pytest.raises(CoreError):
            sknn.labels_from_indices(bad, [7, 9])
    with pytest.raises(CoreError):
        sknn.encrypted_distances(np.zeros((2, 2, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(CoreError):
        sknn.nearest_from_distances(liu.generate_key(), np.zeros((2, 3)))
