"""UDM: layouts, assignment (START convention, ties), the corrected update, blocked paths, OPE values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.algorithms import udm as udm_mod
from core.algorithms.udm import assign, assignment_scores, build_udm, update_udm
from core.crypto import fdhope
from core.errors import CoreError


def test_build_full_and_compact() -> None:
    d = np.array([[1.0, 2.0], [4.0, 0.0], [3.0, 3.0]])
    full = build_udm(d)
    assert full.shape == (3, 3, 2)
    np.testing.assert_array_equal(full[1, 0], [3.0, -2.0])
    np.testing.assert_array_equal(full, -full.transpose(1, 0, 2))
    compact = build_udm(d, 2)
    assert compact.shape == (3, 2, 2)
    np.testing.assert_array_equal(compact, full[:, :2])
    assert build_udm(d, 2, dtype=np.float32).dtype == np.float32
    with pytest.raises(CoreError):
        build_udm(d, 4)
    with pytest.raises(CoreError):
        build_udm(d[0])


def test_assign_start_and_ties() -> None:
    d = np.array([[0.0], [2.0], [1.0], [0.0], [3.0]])
    u = build_udm(d, 2)
    # record 2 is at distance 1 from both centres: first index wins; record 3 duplicates record 0
    np.testing.assert_array_equal(assign(u, 2, start=False), [0, 1, 0, 0, 1])
    # START pre-assigns records 0..k-1 even when an earlier centre is as close (duplicates)
    dup = np.array([[5.0], [5.0], [0.0]])
    np.testing.assert_array_equal(assign(build_udm(dup, 2), 2, start=False), [0, 0, 0])
    np.testing.assert_array_equal(assign(build_udm(dup, 2), 2, start=True), [0, 1, 0])
    np.testing.assert_array_equal(assign(build_udm(dup), 2, start=True), [0, 1, 0])
    assert assign(u, 2, True).dtype == np.int64


def test_update_keeps_invariant() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(7, 3))
    k = 3
    c_old = d[:k]
    c_new = rng.normal(size=(k, 3))
    for u in (build_udm(d), build_udm(d, k)):
        u2 = update_udm(u, c_old - c_new)
        assert u2.shape == (7, k, 3)
        np.testing.assert_allclose(u2, d[:, None, :] - c_new[None], atol=1e-12)
        c_newer = rng.normal(size=(k, 3))
        np.testing.assert_allclose(update_udm(u2, c_new - c_newer), d[:, None, :] - c_newer[None], atol=1e-12)
    with pytest.raises(CoreError):
        update_udm(build_udm(d, k), np.zeros((k, 2)))
    with pytest.raises(CoreError):
        update_udm(build_udm(d, 2), np.zeros((k, 3)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 25), a=st.integers(1, 4), k=st.integers(1, 5),
       start=st.booleans())
def test_full_and_compact_agree(seed: int, n: int, a: int, k: int, start: bool) -> None:
    k = min(k, n)
    d = np.random.default_rng(seed).integers(-3, 4, size=(n, a)).astype(float)  # many ties on purpose
    full, compact = build_udm(d), build_udm(d, k)
    np.testing.assert_array_equal(assign(full, k, start), assign(compact, k, start))
    s = np.random.default_rng(seed + 1).normal(size=(k, a))
    np.testing.assert_array_equal(update_udm(full, s), update_udm(compact, s))
    expected = np.argmin(np.abs(d[:, None, :] - d[None, :k, :]).sum(-1), axis=1)
    if start:
        expected[:k] = np.arange(k)
    np.testing.assert_array_equal(assign(compact, k, start), expected)


def test_blocked_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(size=(50, 3))
    ref_full, ref_scores = build_udm(d), assignment_scores(build_udm(d, 4), 4)
    monkeypatch.setattr(udm_mod, "_BLOCK_ELEMENTS", 7)
    np.testing.assert_array_equal(build_udm(d), ref_full)
    np.testing.assert_array_equal(assignment_scores(build_udm(d, 4), 4), ref_scores)
    np.testing.assert_array_equal(assignment_scores(ref_full, 4), ref_scores)


def test_ope_udm_single_attribute_assigns_like_plaintext() -> None:
    rng = np.random.default_rng(2)
    d = rng.uniform(-10, 10, size=(40, 1))
    u = build_udm(d, 4)
    key = fdhope.generate_key(u, 1e-8, rng)
    np.testing.assert_array_equal(assign(fdhope.encrypt(key, u, rng), 4, True), assign(u, 4, True))
