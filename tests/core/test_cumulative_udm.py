"""The cumulative UDM form: U = U0[:, :k] + C with C the sum of the shifts (core/algorithms/udm.py).

The worker keeps the uploaded U0 and the k x a sum C instead of rewriting U every round
(worker/handlers/secure_kmeans.py); these tests pin that both forms give the same matrix up to
rounding order and the same labels, rounds on end, for SKMeans and DBSKMeans.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import dataowner
from core.algorithms import dbskmeans, skmeans
from core.algorithms.kmeans import l1_kmeans
from core.algorithms.udm import accumulate_shift, assign, assignment_scores, build_udm, update_udm
from core.crypto import liu
from core.errors import CoreError


def _blobs(seed: int, n: int, a: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, a))
    return centres[rng.integers(0, k, size=n)] + rng.normal(0, 1.5, size=(n, a))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 40),
    a=st.integers(1, 4),
    k=st.integers(1, 3),
    rounds=st.integers(1, 4),
    compact=st.booleans(),
)
def test_offset_scores_equal_the_updated_matrix(
    seed: int, n: int, a: int, k: int, rounds: int, compact: bool
) -> None:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, a))
    u0 = build_udm(d, k if compact else None)
    current, total = u0, None
    for _ in range(rounds):
        s = rng.normal(size=(k, a))
        current = update_udm(current, s)
        total = accumulate_shift(total, s)
    assert total is not None
    np.testing.assert_allclose(update_udm(u0, total), current, rtol=0, atol=1e-12)
    np.testing.assert_allclose(assignment_scores(u0, k, total), assignment_scores(current, k), atol=1e-11)
    for start in (False, True):
        # Random scores have no exact ties, so rounding order cannot change the argmin here.
        np.testing.assert_array_equal(assign(u0, k, start, total), assign(current, k, start))


def test_offset_blocked_path_and_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.algorithms.udm as udm_mod

    rng = np.random.default_rng(3)
    d = rng.normal(size=(50, 3))
    c = rng.normal(size=(4, 3))
    expected = assignment_scores(update_udm(build_udm(d, 4), c), 4)
    monkeypatch.setattr(udm_mod, "_BLOCK_ELEMENTS", 12)  # one record per block
    np.testing.assert_allclose(assignment_scores(build_udm(d, 4), 4, c), expected, atol=1e-12)
    # A float32 UDM with a float64 shift is scored in float64 (as the in-place update stored it).
    u32 = build_udm(d, 4, dtype=np.float32)
    np.testing.assert_allclose(
        assignment_scores(u32, 4, c), assignment_scores(update_udm(u32, c), 4), rtol=0, atol=1e-12
    )


def test_accumulate_shift_contract() -> None:
    s = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = accumulate_shift(None, s)
    assert first.dtype == np.float64 and first is not s
    np.testing.assert_array_equal(first, s)
    np.testing.assert_array_equal(accumulate_shift(first, s), 2 * s)
    with pytest.raises(CoreError):
        accumulate_shift(None, s.ravel())
    with pytest.raises(CoreError):
        accumulate_shift(np.zeros((3, 3)), s)
    with pytest.raises(CoreError):
        assign(build_udm(np.zeros((4, 3)), 2), 2, False, np.zeros((2, 2)))


@pytest.mark.parametrize("double_blind", [False, True])
def test_rounds_in_cumulative_form_match_the_in_place_update(double_blind: bool) -> None:
    """Whole jobs both ways from the same inputs: identical labels every round, and (SKMeans) the
    labels of L1 k-means. DBSKMeans sums OPE shifts in either form: the same (drifting) matrix."""
    rng = np.random.default_rng(11)
    d = _blobs(5, 300, 4, 3)
    key = liu.generate_key(rng=rng)
    if double_blind:
        encrypted, u0, fkey = dataowner.prepare_dbskmeans(d, 3, key, rng=rng)
        core = dbskmeans
    else:
        encrypted, u0 = dataowner.prepare_skmeans(d, 3, key, rng=rng)
        core = skmeans
    in_place, total, previous = u0, None, None
    for i in range(8):
        a = core.encrypted_phase(encrypted, in_place, 3, i == 0, previous)
        labels, centj, shift = core.encrypted_phase(encrypted, u0, 3, i == 0, previous, total)
        np.testing.assert_array_equal(labels, a.labels)
        np.testing.assert_allclose(centj, a.centroids, rtol=1e-12)
        np.testing.assert_allclose(shift, a.shift, rtol=1e-9, atol=1e-9)
        plain = skmeans.decrypt_shift(key, a.shift)
        if double_blind:
            plain = dbskmeans.encrypt_shift(fkey, plain, np.random.default_rng(i))
        in_place = core.plaintext_phase(in_place, plain)
        total = core.cumulative_phase(total, plain)
        previous = a.centroids
    np.testing.assert_allclose(update_udm(u0, total), in_place, rtol=1e-12, atol=1e-9)
    if not double_blind:
        assert labels.tolist() == l1_kmeans(d, 3, max_iter=8).labels.tolist()
