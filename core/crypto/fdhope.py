"""FDH-OPE: the "frequency and distribution hiding" order-preserving encryption used by DBSKMeans/DBSNNC.

A key is a piecewise-linear, strictly increasing map f on [0, inf) with 3..8 pieces: message intervals
[b_i, b_{i+1}) are mapped onto cipher intervals whose lengths are proportional to how many entries of
the key's dataset fall in each message interval (dense ranges are stretched, sparse ones squeezed).
Encryption of x is sign(x) * f(|x| + u * sensitivity) with u ~ U(0, 1): odd, randomised only at the
`sensitivity` scale, no decryption.

Order guarantee (proved by the construction): if x' - x > sensitivity then E(x) < E(x') strictly, for
any draws, in exact arithmetic. Values closer than `sensitivity` may swap. In float64 the map is
monotone (never reverses an order), but two images closer than one ulp of the ciphertext collapse to
the same value; this only happens when sensitivity * slope is below ~1e-16 of the ciphertext, e.g. in
an interval that holds no data (slope EMPTY_RANGE_LENGTH / width) with sensitivity 1e-8.
Within one interval the noise term equals the reference's delta ~ U(0, sensitivity * slope); at
interval boundaries it follows f, which is what makes the guarantee hold when adjacent slopes differ
(the reference's delta could exceed the gap there).

Correction versus the original (reference 3.4): the original normalised the cipher lengths by
n*n (first two dimensions) while counting all n*n*a entries of a 3-D UDM, then forced the last cipher
interval to end at C+1, which gave the last piece a negative slope and reversed the order of the
largest differences. Here lengths are normalised by the number of entries (data.size) and the last
cipher bound is max(C + 1, cumulative end), so every slope is positive.

Leakage (what a worker holding ciphertexts learns): the exact order of all encrypted values, the sign
of each, and a monotone piecewise-linear image of every value, i.e. approximate magnitudes given any
side knowledge; interval densities are visible as clustering of ciphertexts. It is NOT additively
homomorphic: E(a) + E(b) != E(a + b) in general.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.crypto import keydoc
from core.errors import CoreError

__all__ = [
    "FdhopeKey",
    "encrypt",
    "encrypt_scalar",
    "encrypt_threshold",
    "generate_key",
    "key_from_breakpoints",
]

DEFAULT_SENSITIVITY = 1e-8
DEFAULT_PROPORTION = 15.0
DEFAULT_RANGE_LIMIT = 2.0
DEFAULT_MAX_RANGES = 8
MIN_RANGES = 3
EMPTY_RANGE_LENGTH = 0.001
_FIRST_BREAKPOINT_LOW = 0.2
_CHUNK = 1 << 20
_FORMAT = "fdhope-key"
_VERSION = 1


def _default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(secrets.randbits(128))


def _frozen(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise CoreError(f"{name} must be a 1-D array with at least 2 bounds, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CoreError(f"{name} must be finite")
    if not np.all(np.diff(arr) > 0):
        raise CoreError(f"{name} must be strictly increasing")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class FdhopeKey(keydoc.KeyDocument):
    """An FDH-OPE key: n_r message intervals [m_i, m_{i+1}) mapped linearly onto [c_i, c_{i+1}).

    `message_bounds[0]` is the lowest magnitude (0), `message_bounds[-1]` the end of the last interval
    (M + 1); magnitudes beyond it are extrapolated with the last slope (still strictly increasing).
    `sensitivity` is the width of the encryption noise in message units.
    """

    NAME: ClassVar[str] = "FDH-OPE"
    message_bounds: np.ndarray
    cipher_bounds: np.ndarray
    sensitivity: float = DEFAULT_SENSITIVITY
    slopes: np.ndarray = field(init=False, repr=False)
    _upper: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mb = _frozen(self.message_bounds, "message_bounds")
        cb = _frozen(self.cipher_bounds, "cipher_bounds")
        if mb.shape != cb.shape:
            raise CoreError(f"message and cipher bounds differ in length: {mb.size} vs {cb.size}")
        sens = float(self.sensitivity)
        if not (np.isfinite(sens) and sens >= 0):
            raise CoreError(f"sensitivity must be a finite value >= 0, got {self.sensitivity}")
        slopes = np.diff(cb) / np.diff(mb)
        slopes.setflags(write=False)
        upper = np.concatenate((cb[1:-1], [np.inf]))  # clamp against rounding past the next bound
        upper.setflags(write=False)
        object.__setattr__(self, "_upper", upper)
        object.__setattr__(self, "message_bounds", mb)
        object.__setattr__(self, "cipher_bounds", cb)
        object.__setattr__(self, "sensitivity", sens)
        object.__setattr__(self, "slopes", slopes)

    @property
    def n_ranges(self) -> int:
        return int(self.message_bounds.size - 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FdhopeKey):
            return NotImplemented
        return (
            np.array_equal(self.message_bounds, other.message_bounds)
            and np.array_equal(self.cipher_bounds, other.cipher_bounds)
            and self.sensitivity == other.sensitivity
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "message_bounds": self.message_bounds.tolist(),
            "cipher_bounds": self.cipher_bounds.tolist(),
            "sensitivity": self.sensitivity,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> FdhopeKey:
        obj = keydoc.check(obj, _FORMAT, _VERSION, cls.NAME, article="an")
        try:
            return cls(obj["message_bounds"], obj["cipher_bounds"], obj["sensitivity"])
        except (KeyError, TypeError) as exc:
            raise CoreError(f"malformed FDH-OPE key: {exc}") from exc


def _abs_max_and_check(x: np.ndarray) -> float:
    flat = x.reshape(-1)
    best = 0.0
    for lo in range(0, flat.size, _CHUNK):
        part = flat[lo : lo + _CHUNK]
        if not np.all(np.isfinite(part)):
            raise CoreError("FDH-OPE input contains NaN or infinity")
        best = max(best, float(np.max(np.abs(part))))
    return best


def _range_counts(x: np.ndarray, message_bounds: np.ndarray) -> np.ndarray:
    """How many entries have |x| in each message interval (last interval open-ended)."""
    n_r = message_bounds.size - 1
    counts = np.zeros(n_r, dtype=np.int64)
    flat = x.reshape(-1)
    for lo in range(0, flat.size, _CHUNK):
        idx = np.searchsorted(message_bounds, np.abs(flat[lo : lo + _CHUNK]), side="right") - 1
        np.clip(idx, 0, n_r - 1, out=idx)
        counts += np.bincount(idx, minlength=n_r)
    return counts


def key_from_breakpoints(
    data: np.ndarray,
    breakpoints: Any,
    sensitivity: float = DEFAULT_SENSITIVITY,
    *,
    proportion: float = DEFAULT_PROPORTION,
    range_limit: float = DEFAULT_RANGE_LIMIT,
) -> FdhopeKey:
    """Build the key for `data` given the inner message breakpoints b_1 < ... < b_{n_r-1}.

    M = round(max|data|) + range_limit, C = M * proportion; message intervals [0, b_1), ...,
    [b_{n_r-1}, M + 1); cipher length of interval i = C * count_i / data.size (EMPTY_RANGE_LENGTH if
    empty); the last cipher bound is max(C + 1, cumulative end) (fixed normalisation, reference 3.4).
    """
    x = np.asarray(data, dtype=np.float64)
    if x.size == 0:
        raise CoreError("cannot derive an FDH-OPE key from empty data")
    big_m = float(np.round(_abs_max_and_check(x))) + float(range_limit)
    inner = np.asarray(breakpoints, dtype=np.float64).reshape(-1)
    if inner.size and not (inner[0] > 0 and inner[-1] < big_m + 1):
        raise CoreError(f"breakpoints must lie in (0, M + 1) with M = {big_m}")
    message_bounds = np.concatenate(([0.0], inner, [big_m + 1.0]))
    if not np.all(np.diff(message_bounds) > 0):
        raise CoreError("breakpoints must be strictly increasing")
    counts = _range_counts(x, message_bounds)
    total = big_m * float(proportion)
    lengths = np.where(counts > 0, total * counts / x.size, EMPTY_RANGE_LENGTH)
    cipher_bounds = np.concatenate(([0.0], np.cumsum(lengths)))
    cipher_bounds[-1] = max(total + 1.0, cipher_bounds[-1])
    return FdhopeKey(message_bounds, cipher_bounds, sensitivity)


def generate_key(
    data: np.ndarray,
    sensitivity: float = DEFAULT_SENSITIVITY,
    rng: np.random.Generator | None = None,
    *,
    max_ranges: int = DEFAULT_MAX_RANGES,
    proportion: float = DEFAULT_PROPORTION,
    range_limit: float = DEFAULT_RANGE_LIMIT,
) -> FdhopeKey:
    """Draw an FDH-OPE key for `data` (the UDM or distance matrix the key will encrypt).

    n_r ~ uniform integer in [3, max_ranges]; the n_r - 1 inner breakpoints ~ sorted U(0.2, M).
    Randomness comes from a fresh OS-seeded generator unless `rng` is given (tests only).
    """
    if max_ranges < MIN_RANGES:
        raise CoreError(f"max_ranges must be >= {MIN_RANGES}, got {max_ranges}")
    gen = _default_rng(rng)
    x = np.asarray(data, dtype=np.float64)
    if x.size == 0:
        raise CoreError("cannot derive an FDH-OPE key from empty data")
    big_m = float(np.round(_abs_max_and_check(x))) + float(range_limit)
    n_r = int(gen.integers(MIN_RANGES, max_ranges + 1))
    while True:
        inner = np.sort(gen.uniform(_FIRST_BREAKPOINT_LOW, big_m, size=n_r - 1))
        if np.all(np.diff(inner) > 0):
            break
    return key_from_breakpoints(x, inner, sensitivity, proportion=proportion, range_limit=range_limit)


def _map(key: FdhopeKey, magnitude: np.ndarray) -> np.ndarray:
    """f(magnitude) for magnitudes >= 0: searchsorted + one affine map (in place on a float64 array)."""
    idx = np.searchsorted(key.message_bounds, magnitude, side="right") - 1
    np.clip(idx, 0, key.n_ranges - 1, out=idx)
    magnitude -= key.message_bounds[idx]
    magnitude *= key.slopes[idx]
    magnitude += key.cipher_bounds[idx]
    np.minimum(magnitude, key._upper[idx], out=magnitude)
    return magnitude


def encrypt(key: FdhopeKey, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Encrypt every entry of `x` (any shape): sign(x) * f(|x| + u * sensitivity), u ~ U(0, 1)."""
    arr = np.asarray(x, dtype=np.float64)
    out = np.empty(arr.shape, dtype=np.float64)
    if arr.size == 0:
        return out
    gen = _default_rng(rng) if key.sensitivity > 0 else None
    src = arr.reshape(-1)
    dst = out.reshape(-1)
    for lo in range(0, src.size, _CHUNK):
        part = src[lo : lo + _CHUNK]
        if not np.all(np.isfinite(part)):
            raise CoreError("FDH-OPE input contains NaN or infinity")
        mag = np.abs(part)
        if gen is not None:
            mag += gen.random(part.size) * key.sensitivity
        c = _map(key, mag)
        np.negative(c, out=c, where=part < 0)
        dst[lo : lo + part.size] = c
    return out


def encrypt_scalar(key: FdhopeKey, x: float, rng: np.random.Generator | None = None) -> float:
    """Encrypt one value."""
    return float(encrypt(key, np.array([x], dtype=np.float64), rng)[0])


def encrypt_threshold(key: FdhopeKey, threshold: float) -> float:
    """Deterministic upper-bound encryption of a threshold for "value <= threshold" tests on ciphertexts.

    Returns the supremum of all encryptions of `threshold`, so E(v) <= result for every v <= threshold
    and E(v) > result for every v > threshold + sensitivity, whatever the noise. (Encrypting the threshold
    like any value, as the original does, makes d == threshold compare randomly.)
    """
    t = float(threshold)
    if not np.isfinite(t):
        raise CoreError("threshold must be finite")
    if t >= 0:
        return float(_map(key, np.array([t + key.sensitivity]))[0])
    return -float(_map(key, np.array([-t]))[0])
