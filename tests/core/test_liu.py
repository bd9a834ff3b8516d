"""Liu's scheme: reference worked example (1.6), homomorphic identities, key rules, serialisation."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.crypto import liu
from core.errors import CoreError

REF_KEY = liu.LiuKey(k=[0.5, 0.8, 0.3], s=[0.2, 0.1, 0.7], t=[0.4, 0.6, 0.9])


def test_reference_worked_example() -> None:
    e5 = liu.encrypt(REF_KEY, np.array([5.0]), randomness=[[0.1, 0.6, 0.3]])
    np.testing.assert_allclose(e5, [[0.81, 2.83, 0.57]], atol=1e-12)
    np.testing.assert_allclose(liu.decrypt(REF_KEY, e5), [5.0], atol=1e-12)
    np.testing.assert_allclose(REF_KEY.w, [2.0, 1.25, -0.276316], atol=1e-6)
    e2 = liu.encrypt(REF_KEY, np.array(2.0), randomness=[0.25, 0.5, 0.75])
    np.testing.assert_allclose(e2, [0.425, 1.235, 1.425], atol=1e-12)
    e5 = e5[0]
    assert liu.decrypt(REF_KEY, liu.add(e5, e2)) == pytest.approx(7.0)
    assert liu.decrypt(REF_KEY, liu.subtract(e5, e2)) == pytest.approx(3.0)
    assert liu.decrypt(REF_KEY, liu.multiply_scalar(e5, 3.0)) == pytest.approx(15.0)
    prod = liu.multiply(e5, e2)
    assert prod.shape == (9,)
    assert liu.decrypt(REF_KEY, prod) == pytest.approx(10.0)


def test_last_component_is_scaled_mask() -> None:
    key = liu.generate_key(rng=np.random.default_rng(1))
    c = liu.encrypt(key, np.linspace(-5, 5, 101))
    big_d = key.k[-1] + key.s[-1] + key.t[-1]
    ratio = c[:, -1] / big_d
    assert np.all((ratio >= 0) & (ratio < 1))


@pytest.mark.parametrize(("level", "m", "bits"), [(128, 3, 15), (192, 4, 16), (256, 6, 15)])
def test_security_levels(level: int, m: int, bits: int) -> None:
    key = liu.generate_key(security_level=level)
    assert key.m == m
    for comp in (key.k, key.s, key.t):
        assert np.all(comp >= 1) and np.all(comp < 2**bits)
        assert np.all(comp == np.round(comp))
    assert liu.generate_key(m=m + 2, security_level=level).m == m + 2


def test_key_generation_rejects_bad_parameters() -> None:
    with pytest.raises(CoreError):
        liu.generate_key(security_level=100)
    with pytest.raises(CoreError):
        liu.generate_key(m=3, security_level=192)


def test_keys_are_fresh() -> None:
    assert liu.generate_key() != liu.generate_key()
    key = liu.generate_key()
    x = np.ones(4)
    assert not np.array_equal(liu.encrypt(key, x), liu.encrypt(key, x))


@pytest.mark.parametrize(
    ("k", "s", "t"),
    [
        ([0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),  # k_1 = 0
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 1.0]),  # T = 0
        ([1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, 1.0, 1.0]),  # D = 0
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0]),  # m < 3
        ([1.0, 1.0, 1.0], [1.0, 1.0], [1.0, 1.0, 1.0]),  # lengths differ
        ([1.0, np.nan, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
    ],
)
def test_key_constraints(k: list[float], s: list[float], t: list[float]) -> None:
    with pytest.raises(CoreError):
        liu.LiuKey(k, s, t)


def test_serialisation_round_trip_is_json() -> None:
    key = liu.generate_key(security_level=192)
    raw = key.to_bytes()
    assert json.loads(raw)["format"] == "liu-key"
    back = liu.LiuKey.from_bytes(raw)
    assert back == key
    np.testing.assert_array_equal(back.w, key.w)
    for bad in (b"not json", b"{}", json.dumps({"format": "liu-key", "version": 1}).encode(),
                json.dumps({"format": "liu-key", "version": 9, "k": [1], "s": [1], "t": [1]}).encode()):
        with pytest.raises(CoreError):
            liu.LiuKey.from_bytes(bad)


def test_shapes_and_errors() -> None:
    key = liu.generate_key()
    x = np.arange(24, dtype=float).reshape(2, 3, 4)
    c = liu.encrypt(key, x)
    assert c.shape == (2, 3, 4, 3) and c.dtype == np.float64
    np.testing.assert_allclose(liu.decrypt(key, c), x, atol=1e-9)
    assert liu.decrypt(key, c.astype(np.float32)).shape == x.shape
    with pytest.raises(CoreError):
        liu.encrypt(key, x, randomness=np.zeros((2, 3)))
    with pytest.raises(CoreError):
        liu.decrypt(key, np.zeros((2, 4)))
    with pytest.raises(CoreError):
        liu.decrypt(key, np.zeros((2, 1)))
    np.testing.assert_allclose(liu.decrypt(key, c, decimals=0), x)


def _key(seed: int, style: str, level: int) -> liu.LiuKey:
    rng = np.random.default_rng(seed)
    if style == "int":
        return liu.generate_key(security_level=level, rng=rng)
    m = liu.SECURITY_LEVELS[level][0]
    return liu.LiuKey(*rng.uniform(0.05, 1.0, size=(3, m)))  # the 2023 U(0,1)-style key


keys = st.builds(
    _key, st.integers(0, 2**32 - 1), st.sampled_from(["int", "unit"]), st.sampled_from([128, 192, 256])
)
values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20).map(np.array)


@settings(max_examples=60, deadline=None)
@given(key=keys, x=values, seed=st.integers(0, 2**32 - 1))
def test_round_trip(key: liu.LiuKey, x: np.ndarray, seed: int) -> None:
    c = liu.encrypt(key, x, np.random.default_rng(seed))
    np.testing.assert_allclose(liu.decrypt(key, c), x, rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(key=keys, x=values, seed=st.integers(0, 2**32 - 1), scalar=st.floats(-100, 100))
def test_homomorphic_identities(key: liu.LiuKey, x: np.ndarray, seed: int, scalar: float) -> None:
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1e3, 1e3, size=x.shape)
    cx, cy = liu.encrypt(key, x, rng), liu.encrypt(key, y, rng)
    np.testing.assert_allclose(liu.decrypt(key, liu.add(cx, cy)), x + y, atol=1e-9)
    np.testing.assert_allclose(liu.decrypt(key, liu.subtract(cx, cy)), x - y, atol=1e-9)
    np.testing.assert_allclose(liu.decrypt(key, liu.multiply_scalar(cx, scalar)), scalar * x, atol=1e-7)
    np.testing.assert_allclose(liu.decrypt(key, cx.sum(axis=0)), x.sum(), atol=1e-8)
    np.testing.assert_allclose(liu.decrypt(key, liu.multiply(cx, cy)), x * y, rtol=1e-9, atol=1e-6)
    per_entry = rng.uniform(-2, 2, size=x.shape)
    np.testing.assert_allclose(liu.decrypt(key, liu.multiply_scalar(cx, per_entry)), per_entry * x, atol=1e-8)


def test_depth_three_product() -> None:
    key = liu.generate_key()
    a, b, c = (liu.encrypt(key, np.array([v])) for v in (2.0, -3.0, 0.5))
    prod = liu.multiply(liu.multiply(a, b), c)
    assert prod.shape == (1, 27)
    np.testing.assert_allclose(liu.decrypt(key, prod), [-3.0], rtol=1e-9)
