"""FDH-OPE: reference worked example (3.3), the fixed normalisation (3.4), strict order, thresholds."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.crypto import fdhope
from core.errors import CoreError

REF_DM = np.array([[0, 3, 7], [3, 0, 4], [7, 4, 0]], dtype=float)


def test_reference_key_and_values() -> None:
    key = fdhope.key_from_breakpoints(REF_DM, [2.5, 5.5], sensitivity=0.0)
    np.testing.assert_allclose(key.message_bounds, [0, 2.5, 5.5, 10])
    np.testing.assert_allclose(key.cipher_bounds, [0, 45, 105, 136])
    np.testing.assert_allclose(key.slopes, [18, 20, 31 / 4.5])
    got = fdhope.encrypt(key, np.array([0, 1, 3, 3.5, 4, 7, -4.0]))
    np.testing.assert_allclose(got, [0, 18, 55, 65, 75, 115 + 1 / 3, -75])


def test_reference_values_with_noise() -> None:
    key = fdhope.key_from_breakpoints(REF_DM, [2.5, 5.5], sensitivity=1e-3)
    x = np.array([1.0, 3.0, 4.0, 7.0])
    c = fdhope.encrypt(key, x, np.random.default_rng(0))
    base = np.array([18, 55, 75, 115 + 1 / 3])
    assert np.all(c >= base) and np.all(c < base + key.slopes[[0, 1, 1, 2]] * 1e-3 + 1e-12)
    assert fdhope.encrypt_scalar(key, -4.0) < -75 + 1e-9


def _is_ordered(x: np.ndarray, c: np.ndarray, sens: float, strict: bool) -> bool:
    """Every pair with x' - x > sens has c < c' (strict) or c <= c'; the running max suffices."""
    order = np.argsort(x, kind="stable")
    xs, cs = x[order], c[order]
    for i in range(1, xs.size):
        j = np.searchsorted(xs, xs[i] - sens, side="left")  # indices < j have xs < xs[i] - sens
        if j > 0 and (cs[:j].max() >= cs[i] if strict else cs[:j].max() > cs[i]):
            return False
    return True


@pytest.mark.parametrize("a", [2, 4])
def test_3d_udm_key_has_positive_slopes_and_keeps_order(a: int) -> None:
    """Reference 3.4: the original reversed the largest differences for 3-D UDMs in ~half the keys."""
    rng = np.random.default_rng(a)
    for _ in range(50):
        d = rng.uniform(0, 10, size=(30, a))
        udm = d[:, None, :] - d[None, :, :]
        key = fdhope.generate_key(udm, 1e-8, rng)
        assert 3 <= key.n_ranges <= 8
        assert np.all(key.slopes > 0)
        assert key.cipher_bounds[-1] >= 30 * 30 * a / udm.size * key.message_bounds[-1]  # sanity
        flat = udm.reshape(-1)
        c = fdhope.encrypt(key, flat, rng)
        order = np.argsort(flat, kind="stable")
        xs, cs = flat[order], c[order]
        gap = np.diff(xs) > 1e-8
        assert np.all(np.diff(cs)[gap] > 0)


datasets = st.tuples(st.integers(0, 2**32 - 1), st.floats(0.01, 1e4), st.integers(1, 200))


@settings(max_examples=80, deadline=None)
@given(spec=datasets, sens=st.sampled_from([0.0, 1e-8, 1e-3, 0.5]))
def test_order_is_preserved(spec: tuple[int, float, int], sens: float) -> None:
    seed, scale, size = spec
    rng = np.random.default_rng(seed)
    data = rng.normal(0, scale, size=size)
    key = fdhope.generate_key(data, sens, rng)
    # probe points: the data, the breakpoints and their neighbours, and values beyond the key's range
    probes = np.concatenate([
        data, key.message_bounds, key.message_bounds + sens * 1.01, key.message_bounds - sens * 1.01,
        -key.message_bounds, [3 * key.message_bounds[-1], -3 * key.message_bounds[-1], 0.0],
    ])
    c = fdhope.encrypt(key, probes, rng)
    # never reversed; strict whenever sens * slope is far above the float64 resolution of the images
    assert _is_ordered(probes, c, sens, strict=False)
    if sens * key.slopes.min() > 1e-12 * abs(c).max():
        assert _is_ordered(probes, c, sens, strict=True)


@settings(max_examples=40, deadline=None)
@given(spec=datasets)
def test_odd_up_to_noise(spec: tuple[int, float, int]) -> None:
    seed, scale, size = spec
    rng = np.random.default_rng(seed)
    data = rng.normal(0, scale, size=size)
    key = fdhope.generate_key(data, 1e-8, rng)
    c_pos = fdhope.encrypt(key, np.abs(data), rng)
    c_neg = fdhope.encrypt(key, -np.abs(data), rng)
    np.testing.assert_allclose(c_neg, -c_pos, rtol=0, atol=1e-8 * float(key.slopes.max()) * 1.01)


def test_threshold_encryption_is_an_upper_bound() -> None:
    rng = np.random.default_rng(3)
    dm = np.abs(rng.normal(size=(20, 20)))
    key = fdhope.generate_key(dm, 1e-6, rng)
    for theta in (0.0, 0.3, 1.7, float(dm.max()) * 2, -0.5):
        t = fdhope.encrypt_threshold(key, theta)
        below = np.array([theta, theta - 1e-5, theta - 1.0])
        above = np.array([theta + 2e-6, theta + 1.0])
        for _ in range(20):
            assert np.all(fdhope.encrypt(key, below, rng) <= t)
            assert np.all(fdhope.encrypt(key, above, rng) > t)


def test_no_match_values_and_shapes() -> None:
    key = fdhope.key_from_breakpoints(REF_DM, [2.5, 5.5])
    x = np.arange(12, dtype=float).reshape(3, 4) - 6
    c = fdhope.encrypt(key, x)
    assert c.shape == x.shape
    assert fdhope.encrypt(key, np.zeros((0, 3))).shape == (0, 3)
    with pytest.raises(CoreError):
        fdhope.encrypt(key, np.array([1.0, np.nan]))
    with pytest.raises(CoreError):
        fdhope.generate_key(np.zeros(0))
    with pytest.raises(CoreError):
        fdhope.key_from_breakpoints(REF_DM, [5.5, 2.5])
    with pytest.raises(CoreError):
        fdhope.FdhopeKey([0, 2, 1], [0, 1, 2])
    with pytest.raises(CoreError):
        fdhope.FdhopeKey([0, 1, 2], [0, 1])
    with pytest.raises(CoreError):
        fdhope.FdhopeKey([0, 1, 2], [0, 1, 2], sensitivity=-1)


def test_serialisation_round_trip_is_json() -> None:
    key = fdhope.generate_key(np.random.default_rng(5).normal(size=(10, 10, 3)))
    raw = key.to_bytes()
    assert json.loads(raw)["format"] == "fdhope-key"
    back = fdhope.FdhopeKey.from_bytes(raw)
    assert back == key
    x = np.linspace(-5, 5, 11)
    np.testing.assert_array_equal(
        fdhope.encrypt(back, x, np.random.default_rng(1)), fdhope.encrypt(key, x, np.random.default_rng(1))
    )
    for bad in (b"\x80\x81", b"[]", json.dumps({"format": "fdhope-key", "version": 1}).encode()):
        with pytest.raises(CoreError):
            fdhope.FdhopeKey.from_bytes(bad)


def test_density_shapes_cipher_lengths() -> None:
    data = np.concatenate([np.full(90, 1.0), np.full(10, 6.0)])
    key = fdhope.key_from_breakpoints(data, [2.0, 4.0])
    lengths = np.diff(key.cipher_bounds)
    total = (6 + 2) * 15.0
    np.testing.assert_allclose(lengths[:2], [total * 0.9, fdhope.EMPTY_RANGE_LENGTH])
    assert key.cipher_bounds[-1] == pytest.approx(max(total + 1, total * 1.0 + 0.001))
