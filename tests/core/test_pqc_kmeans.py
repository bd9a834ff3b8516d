"""PQC k-means (labels-only protocol): equals plaintext Euclidean k-means on iris, wine, breast cancer."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.metrics import adjusted_rand_score

from core import pqc_dataowner as do
from core.algorithms import pqc_kmeans
from core.algorithms.kmeans import KMeans
from core.crypto import ckks
from core.errors import CoreError


@pytest.mark.parametrize(("loader", "k"), [(load_iris, 3), (load_wine, 3), (load_breast_cancer, 2)])
def test_equals_plaintext_kmeans(owner: ts.Context, loader, k: int) -> None:
    X = loader().data
    res = do.run_pqc_kmeans(X, k, ctx=owner)
    ref = KMeans(k).fit(X)
    sk = SkKMeans(n_clusters=k, init=X[:k], n_init=1).fit(X)
    assert adjusted_rand_score(ref.labels_, res.labels) == 1.0
    assert adjusted_rand_score(sk.labels_, res.labels) == 1.0
    np.testing.assert_array_equal(res.labels, ref.labels_)  # same ids too: first-k initialisation
    np.testing.assert_allclose(res.centroids, ref.cluster_centers_, rtol=1e-6, atol=1e-3)
    assert res.converged and res.stats.iterations == ref.n_iter_
    assert res.stats.worker_seconds > 0 and res.stats.owner_seconds > 0


def test_several_blocks(owner: ts.Context) -> None:
    X = load_iris().data
    res = do.run_pqc_kmeans(X, 4, ctx=owner, slots=64)  # 3 blocks of 64, the last one padded
    np.testing.assert_array_equal(res.labels, KMeans(4).fit(X).labels_)


def test_distances_match_plaintext(owner: ts.Context) -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-5, 5, size=(10, 3))
    C = rng.uniform(-5, 5, size=(2, 3))
    cols = ckks.encrypt_columns(owner, X, slots=4)
    d = pqc_kmeans.distances(cols, pqc_kmeans.encrypt_centroids(owner, C, 4))
    assert len(d) == 3 and all(len(row) == 2 for row in d)
    got = np.concatenate([ckks.decrypt_vectors(owner, row) for row in d], axis=1)[:, :10]
    np.testing.assert_allclose(got, ((X[None] - C[:, None]) ** 2).sum(axis=2), atol=1e-4)
    np.testing.assert_array_equal(pqc_kmeans.labels_from_distances(owner, d, 10),
                                  np.argmin(((X[None] - C[:, None]) ** 2).sum(axis=2), axis=0))


def test_masked_sums_and_empty_clusters(owner: ts.Context) -> None:
    X = np.arange(18.0).reshape(6, 3)
    cols = ckks.encrypt_columns(owner, X, slots=4)  # blocks: records 0-3, 4-5 (+2 padding)
    labels = np.array([0, 0, 2, 0, 0, 0])  # cluster 1 empty; cluster 2 absent from block 1
    sums = pqc_kmeans.masked_sums(cols, labels, 3)
    assert len(sums) == 3 and all(len(row) == 3 for row in sums)
    totals = np.stack([ckks.decrypt_vectors(owner, row).sum(axis=1) for row in sums])
    np.testing.assert_allclose(totals, [X[labels == 0].sum(0), [0, 0, 0], X[2]], atol=1e-4)
    prev = np.full((3, 3), -1.0)
    cent, counts = pqc_kmeans.centroids_from_sums(owner, sums, labels, prev)
    np.testing.assert_array_equal(counts, [5, 0, 1])
    np.testing.assert_allclose(cent, [X[labels == 0].mean(0), [-1, -1, -1], X[2]], atol=1e-5)


def test_label_masks() -> None:
    m = pqc_kmeans.label_masks(np.array([1, 0, 1]), 2, 2, 2)
    np.testing.assert_array_equal(m, [[[0, 1], [1, 0]], [[0, 0], [1, 0]]])
    with pytest.raises(CoreError):
        pqc_kmeans.label_masks(np.array([0, 1, 0, 1, 0]), 2, 2, 2)
    with pytest.raises(CoreError):
        pqc_kmeans.label_masks(np.array([0, 3]), 2, 2, 1)


def test_bytes_wrappers(owner: ts.Context) -> None:
    pub = ckks.public_context_bytes(owner)
    X = np.array([[0.0, 0.0], [0.5, 0.2], [9.0, 9.0], [9.5, 8.0]])
    cols = [ckks.serialize(b) for b in ckks.encrypt_columns(owner, X)]
    cent = [ckks.serialize(r) for r in pqc_kmeans.encrypt_centroids(owner, [[0.0, 0.0], [9.5, 9.2]], 4)]
    dist = pqc_kmeans.distances_bytes(pub, cols, cent)
    labels = pqc_kmeans.labels_from_distances(owner, [ckks.deserialize(owner, r) for r in dist], 4)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    sums = pqc_kmeans.masked_sums_bytes(pub, cols, labels, 2)
    cent_new, _ = pqc_kmeans.centroids_from_sums(owner, [ckks.deserialize(owner, r) for r in sums], labels,
                                                 np.zeros((2, 2)))
    np.testing.assert_allclose(cent_new, [[0.25, 0.1], [9.25, 8.5]], atol=1e-5)


def test_needs_relin_keys(owner: ts.Context) -> None:
    pub = owner.serialize(save_secret_key=False, save_relin_keys=False, save_galois_keys=False)
    worker = ckks.load_public_context(pub)
    cols = ckks.encrypt_columns(worker, np.zeros((3, 2)))
    with pytest.raises(ckks.MissingKeyMaterial):
        pqc_kmeans.distances(cols, pqc_kmeans.encrypt_centroids(worker, np.zeros((1, 2)), 3))


def test_errors(owner: ts.Context) -> None:
    with pytest.raises(CoreError):
        do.run_pqc_kmeans(np.zeros((3, 2)), 4, ctx=owner)
    cols = ckks.encrypt_columns(owner, np.zeros((3, 2)))
    with pytest.raises(CoreError, match="sizes differ"):
        pqc_kmeans.distances(cols, pqc_kmeans.encrypt_centroids(owner, np.zeros((1, 2)), 5))


def test_bytes_wrapper_runs_in_a_process_pool(owner: ts.Context) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    X = np.array([[0.0, 0.0], [0.5, 0.2], [9.0, 9.0], [9.5, 8.0]])
    pub = ckks.public_context_bytes(owner)
    cols = [ckks.serialize(b) for b in ckks.encrypt_columns(owner, X)]
    cent = [ckks.serialize(r) for r in pqc_kmeans.encrypt_centroids(owner, [[0.0, 0.0], [9.5, 9.2]], 4)]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        first = pool.submit(pqc_kmeans.distances_bytes, pub, cols, cent)
        second = pool.submit(pqc_kmeans.distances_bytes, pub, cols, cent)  # served from the context cache
        results = [first.result(timeout=120), second.result(timeout=120)]
    for dist in results:
        labels = pqc_kmeans.labels_from_distances(owner, [ckks.deserialize(owner, r) for r in dist], 4)
        np.testing.assert_array_equal(labels, [0, 0, 1, 1])
