"""Plaintext 1-NN: reference labels, distances vs brute force, blocked path, metric names."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.algorithms import knn
from core.algorithms.knn import knn_predict, nearest_indices, normalise_metric, pairwise_distances
from core.errors import CoreError

MODEL = np.array([[0.0, 0.0], [5.0, 5.0]])
RECORDS = np.array([[1.0, 0.0], [4.0, 6.0]])


def test_reference_example() -> None:
    np.testing.assert_array_equal(pairwise_distances(RECORDS, MODEL, "manhattan"), [[1, 9], [10, 2]])
    np.testing.assert_array_equal(pairwise_distances(RECORDS, MODEL, "euclidean"), [[1, 41], [52, 2]])
    for metric in ("MANHATHAN", "manhattan", "EUCLIDEAN"):
        np.testing.assert_array_equal(knn_predict(MODEL, np.array([[7, 9]]), RECORDS, metric), [7, 9])


def test_metric_names() -> None:
    assert normalise_metric(" Manhathan ") == "manhattan"
    assert normalise_metric("l2") == "euclidean"
    with pytest.raises(CoreError):
        normalise_metric("cosine")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_r=st.integers(0, 20), n_m=st.integers(1, 20), a=st.integers(1, 4),
       metric=st.sampled_from(["manhattan", "euclidean"]))
def test_matches_brute_force(seed: int, n_r: int, n_m: int, a: int, metric: str) -> None:
    rng = np.random.default_rng(seed)
    model, records = rng.integers(-3, 4, size=(n_m, a)).astype(float), rng.integers(-3, 4, size=(n_r, a))
    diff = records[:, None, :] - model[None, :, :]
    brute = np.abs(diff).sum(-1) if metric == "manhattan" else (diff**2).sum(-1)
    np.testing.assert_array_equal(pairwise_distances(records, model, metric), brute)
    np.testing.assert_array_equal(nearest_indices(model, records, metric), np.argmin(brute, axis=1))


def test_blocked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    model, records = rng.normal(size=(13, 3)), rng.normal(size=(31, 3))
    ref_d, ref_i = pairwise_distances(records, model), nearest_indices(model, records, "euclidean")
    monkeypatch.setattr(knn, "_BLOCK_ELEMENTS", 5)
    np.testing.assert_array_equal(pairwise_distances(records, model), ref_d)
    np.testing.assert_array_equal(nearest_indices(model, records, "euclidean"), ref_i)


def test_errors() -> None:
    with pytest.raises(CoreError):
        nearest_indices(np.zeros((0, 2)), RECORDS)
    with pytest.raises(CoreError):
        nearest_indices(MODEL, np.zeros((2, 3)))
    with pytest.raises(CoreError):
        knn_predict(MODEL, [1, 2, 3], RECORDS)
    with pytest.raises(CoreError):
        pairwise_distances(MODEL, np.zeros((1, 3)))
