"""NNC / DBSNNC: reference labels, equality with the sequential definition (ties included), OPE parity."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import dataowner
from core.algorithms import nnc as nnc_mod
from core.algorithms.nnc import dbsnnc, default_threshold, nnc, resolve_threshold
from core.crypto import fdhope
from core.errors import CoreError

REF_DM = np.array([[0, 3, 7], [3, 0, 4], [7, 4, 0]], dtype=float)


def _sequential(dm: np.ndarray, threshold: float) -> np.ndarray:
    """The original's single pass, written literally (per-cluster minima, first cluster on ties)."""
    n = dm.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    clusters: list[list[int]] = [[0]]
    for x in range(1, n):
        deltas = [min(dm[x, y] for y in c) for c in clusters]
        best = int(np.argmin(deltas))
        if deltas[best] <= threshold:
            clusters[best].append(x)
        else:
            clusters.append([x])
    labels = np.empty(n, dtype=np.int64)
    for i, c in enumerate(clusters):
        labels[c] = i
    return labels


def test_reference_example() -> None:
    assert default_threshold(REF_DM) == 3.0
    np.testing.assert_array_equal(nnc(REF_DM, 3.5), [0, 0, 1])
    np.testing.assert_array_equal(nnc(REF_DM, resolve_threshold(REF_DM, -1)), [0, 0, 1])
    key = fdhope.key_from_breakpoints(REF_DM, [2.5, 5.5])
    enc = fdhope.encrypt(key, REF_DM)
    for theta in (3.5, 3.0):
        np.testing.assert_array_equal(dbsnnc(enc, fdhope.encrypt_threshold(key, theta)), [0, 0, 1])


def test_small_cases_and_errors() -> None:
    assert nnc(np.zeros((0, 0)), 1.0).shape == (0,)
    np.testing.assert_array_equal(nnc(np.zeros((1, 1)), 1.0), [0])
    np.testing.assert_array_equal(nnc(np.zeros((3, 3)), -5.0), [0, 1, 2])
    assert default_threshold(np.zeros((3, 3))) == 0.0
    assert resolve_threshold(REF_DM, 2.0) == 2.0
    with pytest.raises(CoreError):
        nnc(np.zeros((2, 3)), 1.0)
    with pytest.raises(CoreError):
        nnc(np.array([[0.0, np.nan], [np.nan, 0.0]]), 1.0)


def test_tie_goes_to_the_first_cluster_even_through_chains() -> None:
    # record 3 is at distance 1 from record 1 (cluster 1) and from record 2, which joined cluster 0 only
    # through record 0; the original picks cluster 0.
    dm = np.array([
        [0, 9, 1, 9],
        [9, 0, 9, 1],
        [1, 9, 0, 1],
        [9, 1, 1, 0],
    ], dtype=float)
    np.testing.assert_array_equal(nnc(dm, 1.0), _sequential(dm, 1.0))
    np.testing.assert_array_equal(nnc(dm, 1.0), [0, 1, 0, 0])


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), a=st.integers(1, 3), span=st.integers(1, 5),
       theta=st.integers(-1, 6), symmetric=st.booleans())
def test_equals_sequential_definition(
    seed: int, n: int, a: int, span: int, theta: int, symmetric: bool
) -> None:
    rng = np.random.default_rng(seed)
    if symmetric:
        d = rng.integers(0, span, size=(n, a))
        dm = dataowner.distance_matrix(d.astype(float))  # integer distances: many ties
    else:
        dm = rng.integers(0, span + 1, size=(n, n)).astype(float)
    t = resolve_threshold(dm, theta)
    np.testing.assert_array_equal(nnc(dm, t), _sequential(dm, t))


def test_blocked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    dm = rng.integers(0, 4, size=(40, 40)).astype(float)
    ref = _sequential(dm, 1.0)
    monkeypatch.setattr(nnc_mod, "_BLOCK_ELEMENTS", 3)
    np.testing.assert_array_equal(nnc(dm, 1.0), ref)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), a=st.integers(1, 3), quantile=st.floats(0, 0.5))
def test_dbsnnc_equals_nnc(seed: int, n: int, a: int, quantile: float) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(0, rng.uniform(0.1, 50), size=(n, a))
    dm = dataowner.distance_matrix(data)
    for theta in (-1.0, float(np.quantile(dm, quantile))):
        prep = dataowner.prepare_dbsnnc(data, None, theta, 1e-8, rng)
        assert prep.threshold == resolve_threshold(dm, theta)
        np.testing.assert_array_equal(dbsnnc(prep.encrypted_dm, prep.encrypted_threshold),
                                      nnc(dm, prep.threshold))
    np.testing.assert_array_equal(dataowner.run_dbsnnc(data, -1, rng=rng), nnc(dm, default_threshold(dm)))
