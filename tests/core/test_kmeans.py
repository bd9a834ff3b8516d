"""Plaintext baselines: KMeans == scikit-learn (first-k init), l1_kmeans on the reference examples."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans as SkKMeans

from core.algorithms.kmeans import KMeans, l1_assign, l1_kmeans, mean_centroids
from core.errors import CoreError


def _sklearn(x: np.ndarray, k: int, **kw: object) -> SkKMeans:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SkKMeans(n_clusters=k, init=x[:k], n_init=1, algorithm="lloyd", **kw).fit(x)


def _blobs(seed: int, n: int, a: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, a))
    return centres[rng.integers(0, k, size=n)] + rng.normal(0, rng.uniform(0.5, 4), size=(n, a))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 120), a=st.integers(1, 5), k=st.integers(1, 6))
def test_matches_sklearn(seed: int, n: int, a: int, k: int) -> None:
    k = min(k, n)
    x = _blobs(seed, n, a, k)
    ours = KMeans(k).fit(x)
    ref = _sklearn(x, k)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-9, abs=1e-9)


def test_matches_sklearn_with_empty_cluster_and_max_iter() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 6.0], [9.0, 9.0], [0.5, 0.0]])
    for kw in ({}, {"max_iter": 1}, {"tol": 0.0}):
        ours = KMeans(3, **kw).fit(x)  # type: ignore[arg-type]
        ref = _sklearn(x, 3, **kw)
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-12)
        assert ours.n_iter_ == ref.n_iter_
    assert KMeans(2).fit_predict(x).shape == (6,)
    np.testing.assert_array_equal(KMeans(2).fit(x).predict(x), KMeans(2).fit(x).labels_)


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(CoreError):
        KMeans(3).fit(np.zeros((2, 2)))
    with pytest.raises(CoreError):
        KMeans(1).fit(np.array([[np.nan]]))
    with pytest.raises(CoreError):
        KMeans(2, init=np.zeros((3, 1))).fit(np.zeros((4, 1)))


def test_l1_kmeans_reference_counterexample() -> None:
    """Reference 2.6: correct L1 k-means gives [2,1,2,1,0,0] in 3 iterations (the original: [0,1,2,1,0,0])."""
    res = l1_kmeans(np.array([6, 15, 4, 13, 9, 10], dtype=float)[:, None], 3, max_iter=10, tolerance=1e-9)
    np.testing.assert_array_equal(res.labels, [2, 1, 2, 1, 0, 0])
    assert res.n_iter == 3 and res.converged
    np.testing.assert_allclose(res.centroids[:, 0], [9.5, 14, 5])


def test_l1_kmeans_reference_examples() -> None:
    d = np.array([[0, 0], [10, 10], [1, 0], [0, 1], [9, 10], [10, 9]], dtype=float)
    res = l1_kmeans(d, 2, 10, 1e-6)
    np.testing.assert_array_equal(res.labels, [0, 1, 0, 0, 1, 1])
    assert res.n_iter == 2
    x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    np.testing.assert_array_equal(l1_kmeans(x, 2, 1, 1e-6).labels, [0, 1, 1, 1])
    res = l1_kmeans(x, 2, 10, 1e-6)
    np.testing.assert_array_equal(res.labels, [0, 0, 1, 1])
    np.testing.assert_allclose(res.centroids, [[1.25, 1.9], [8.5, 8.25]])
    assert res.n_iter == 3
    assert not l1_kmeans(x, 2, 2, 1e-6).converged


def test_empty_cluster_keeps_previous_centroid() -> None:
    x = np.array([[0.0], [1.0], [2.0]])
    prev = np.array([[0.0], [100.0]])
    labels = l1_assign(x, prev)
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_allclose(mean_centroids(x, labels, 2, prev), [[1.0], [100.0]])


def test_l1_assign_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.algorithms.kmeans as km

    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(33, 3)), rng.normal(size=(4, 3))
    ref = l1_assign(x, c)
    monkeypatch.setattr(km, "_BLOCK_ELEMENTS", 5)
    np.testing.assert_array_equal(l1_assign(x, c), ref)
    np.testing.assert_array_equal(ref, np.argmin(np.abs(x[:, None] - c[None]).sum(-1), axis=1))
