"""Liu's symmetric "homomorphic" scheme (reference section 1), vectorised over whole arrays.

A key is m >= 3 triples (k_i, s_i, t_i). A scalar v encrypts to an m-vector
    E(v) = v * alpha + r_m * sigma + kappa (.) delta(r)
with alpha = (k_i t_i)_{i<m} ++ (0), sigma = (s_i)_{i<m} ++ (D), kappa = (k_i)_{i<m} ++ (0),
D = k_m + s_m + t_m, r ~ U(0, 1)^m and delta the cyclic differences of r_1..r_{m-1} (they sum to 0).
Decryption is one fixed linear functional: v = w . E with w_i = 1/(k_i T), w_m = -sum_i s_i/(k_i T D),
T = sum_{i<m} t_i. Hence add, subtract and scalar multiply are exact, and the outer product of two
ciphertexts (m*m components) decrypts to the product of the plaintexts (w^T P w).

Security (reference 1.7) -- read before relying on it:
* The scheme is linear: any m (ciphertext, plaintext) pairs reveal w and decrypt everything.
* With integer keys of 15/16 bits, alpha (~2^30) dominates the masks (~2^15): ciphertexts are close
  to plaintexts times a secret constant, so ratios of plaintexts leak from ciphertexts alone.
Treat it as obfuscation. A worker holding Liu ciphertexts learns, in practice, the data up to a scale
once it knows one value or the data range.

Keys are drawn from the OS CSPRNG (`secrets`) and checked (k_i != 0, T != 0, D != 0); encryption
randomness is freshly OS-seeded per call unless a generator is passed (tests), so no fixed seed is ever
shared between processes (the original's LIU_SEED=123 reused one mask stream for every chunk).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.crypto import keydoc
from core.errors import CoreError

__all__ = [
    "SECURITY_LEVELS",
    "LiuKey",
    "add",
    "decrypt",
    "encrypt",
    "generate_key",
    "multiply",
    "multiply_scalar",
    "subtract",
]

# security level -> (m, bits per key component); "level" = key entropy 3*m*bits (reference 1.1).
SECURITY_LEVELS: dict[int, tuple[int, int]] = {128: (3, 15), 192: (4, 16), 256: (6, 15)}
_FORMAT = "liu-key"
_VERSION = 1


def _component(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if arr.ndim != 1:
        raise CoreError(f"Liu key component {name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CoreError(f"Liu key component {name} must be finite")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class LiuKey(keydoc.KeyDocument):
    """Secret key: arrays k, s, t of length m (triple i = (k[i], s[i], t[i])).

    Derived vectors (alpha, sigma, kappa, w) are computed once at construction.
    """

    NAME: ClassVar[str] = "Liu"
    k: np.ndarray
    s: np.ndarray
    t: np.ndarray
    alpha: np.ndarray = field(init=False, repr=False)
    sigma: np.ndarray = field(init=False, repr=False)
    kappa: np.ndarray = field(init=False, repr=False)
    w: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k = _component(self.k, "k")
        s = _component(self.s, "s")
        t = _component(self.t, "t")
        m = k.size
        if m < 3 or s.size != m or t.size != m:
            raise CoreError(f"Liu key needs 3 arrays of one length m >= 3, got {k.size, s.size, t.size}")
        big_t = float(t[: m - 1].sum())
        big_d = float(k[m - 1] + s[m - 1] + t[m - 1])
        if np.any(k[: m - 1] == 0):
            raise CoreError("Liu key has k_i = 0 (division by zero on decryption)")
        if big_t == 0 or big_d == 0:
            raise CoreError("Liu key has T = sum t_i = 0 or D = k_m + s_m + t_m = 0")
        alpha = np.concatenate((k[: m - 1] * t[: m - 1], [0.0]))
        sigma = np.concatenate((s[: m - 1], [big_d]))
        kappa = np.concatenate((k[: m - 1], [0.0]))
        w_last = -float(np.sum(s[: m - 1] / k[: m - 1])) / (big_d * big_t)
        w = np.concatenate((1.0 / (k[: m - 1] * big_t), [w_last]))
        for name, value in (("k", k), ("s", s), ("t", t), ("alpha", alpha), ("sigma", sigma),
                            ("kappa", kappa), ("w", w)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def m(self) -> int:
        """Ciphertext length of one scalar."""
        return int(self.k.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LiuKey):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in ("k", "s", "t"))

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, "k": self.k.tolist(), "s": self.s.tolist(),
                "t": self.t.tolist()}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> LiuKey:
        obj = keydoc.check(obj, _FORMAT, _VERSION, cls.NAME)
        try:
            return cls(obj["k"], obj["s"], obj["t"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CoreError):
                raise
            raise CoreError(f"malformed Liu key: {exc}") from exc


def _default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(secrets.randbits(128))


def generate_key(
    m: int | None = None, security_level: int = 128, rng: np.random.Generator | None = None
) -> LiuKey:
    """Draw a key: every component a uniform integer in [1, 2^bits) from the OS CSPRNG.

    `security_level` (128/192/256) fixes the bit width and the default m (3/4/6); an explicit `m` must
    be at least the level's m. Components are never 0, so k_i != 0, T > 0 and D > 0 always hold.
    `rng` is for reproducible tests only.
    """
    if security_level not in SECURITY_LEVELS:
        raise CoreError(f"security_level must be one of {sorted(SECURITY_LEVELS)}, got {security_level}")
    level_m, bits = SECURITY_LEVELS[security_level]
    m_eff = level_m if m is None else int(m)
    if m_eff < level_m:
        raise CoreError(f"security level {security_level} needs m >= {level_m}, got {m_eff}")
    if rng is None:
        comps = [[secrets.randbelow((1 << bits) - 1) + 1 for _ in range(m_eff)] for _ in range(3)]
    else:
        comps = rng.integers(1, 1 << bits, size=(3, m_eff)).tolist()
    return LiuKey(*comps)


def _check_ct(key: LiuKey, c: np.ndarray, what: str = "ciphertext") -> np.ndarray:
    arr = np.asarray(c)
    if arr.ndim == 0 or arr.shape[-1] != key.m:
        raise CoreError(f"{what} must have last dimension m={key.m}, got shape {arr.shape}")
    return arr


def encrypt(
    key: LiuKey,
    x: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    randomness: np.ndarray | None = None,
) -> np.ndarray:
    """Encrypt every entry of `x` (any shape) -> float64 array of shape x.shape + (m,).

    `randomness` (shape x.shape + (m,), values in [0, 1)) replaces the random draw; for tests and the
    reference's worked example only.
    """
    v = np.asarray(x, dtype=np.float64)
    m = key.m
    if randomness is None:
        r = _default_rng(rng).random((*v.shape, m))
    else:
        r = np.array(randomness, dtype=np.float64)
        if r.shape != (*v.shape, m):
            raise CoreError(f"randomness must have shape {(*v.shape, m)}, got {r.shape}")
    out = v[..., None] * key.alpha
    out += r[..., m - 1 : m] * key.sigma
    head = r[..., : m - 1]
    # delta_1 = r_1 - r_{m-1}, delta_i = r_i - r_{i-1}: cyclic differences of the first m-1 draws.
    delta = head - np.roll(head, 1, axis=-1)
    delta *= key.kappa[: m - 1]
    out[..., : m - 1] += delta
    return out


def decrypt(key: LiuKey, c: np.ndarray, decimals: int | None = None) -> np.ndarray:
    """Decrypt ciphertexts of depth d (last dimension m**d; d = 1 for fresh ones) -> shape c.shape[:-1].

    A depth-d ciphertext is a product of d ciphertexts flattened row-major (see `multiply`), so it
    decrypts by contracting with w d times. `decimals` rounds the result (the original's LIU_DECIMALS).
    """
    arr = np.asarray(c, dtype=np.float64)
    m = key.m
    if arr.ndim == 0:
        raise CoreError("ciphertext must have at least one dimension")
    width = arr.shape[-1]
    depth = 0
    while width > 1 and width % m == 0:
        width //= m
        depth += 1
    if width != 1 or depth == 0:
        raise CoreError(f"ciphertext last dimension must be a power of m={m}, got {arr.shape[-1]}")
    lead = arr.shape[:-1]
    out = arr
    for _ in range(depth):
        out = out.reshape(*lead, -1, m) @ key.w
    out = out.reshape(lead)
    if decimals is not None:
        out = np.round(out, decimals)
    return out


def add(c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """E(a) + E(b) -> E(a + b) (component-wise; shapes broadcast)."""
    return np.add(c1, c2)


def subtract(c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """E(a) - E(b) -> E(a - b)."""
    return np.subtract(c1, c2)


def multiply_scalar(c: np.ndarray, scalar: float | np.ndarray) -> np.ndarray:
    """c * E(a) -> E(c * a) for real plaintext scalar(s); an array broadcasts over c's leading axes."""
    s = np.asarray(scalar, dtype=np.float64)
    return np.asarray(c) * s[..., None] if s.ndim else np.asarray(c) * s


def multiply(c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Ciphertext x ciphertext: row-major flattened outer product of the last axes (m1 * m2 components).

    vec(E(a) E(b)^T) decrypts to a * b with `decrypt` (group i = E(a)_i * E(b) decrypts to E(a)_i * b,
    and those m values decrypt to a * b). Leading axes broadcast.
    """
    a = np.asarray(c1, dtype=np.float64)
    b = np.asarray(c2, dtype=np.float64)
    prod = a[..., :, None] * b[..., None, :]
    return prod.reshape(*prod.shape[:-2], a.shape[-1] * b.shape[-1])
