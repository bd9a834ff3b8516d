"""CKKS parameter profiles and the context's own facts (slots, keys held, levels left).

Why apart: both roles resolve profiles and ask a context what it can do before any ciphertext is
touched; these checks turn TenSEAL's late, vague failures ('scale out of bounds', a missing key deep
inside an operation) into early, named errors. The errors of the whole CKKS layer live here too, so
every other ``core/crypto/ckks_*.py`` module imports them from one place. Public names are
re-exported by ``core/crypto/ckks.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tenseal as ts

from core.errors import CoreError

__all__ = [
    "PROFILES",
    "CkksProfile",
    "MalformedMaterial",
    "MissingKeyMaterial",
    "SecretKeyPresent",
    "create_context",
    "get_profile",
    "is_private",
    "levels_left",
    "require_galois_keys",
    "require_levels",
    "require_private",
    "require_relin_keys",
    "slot_count",
    "validate_profile",
]


# --------------------------------------------------------------------------------------------------
# errors


class SecretKeyPresent(CoreError):
    """Key material handed to the worker carries a secret key; the worker must never hold one."""


class MissingKeyMaterial(CoreError):
    """A required key (public, relinearisation, Galois) or key file is absent."""


class MalformedMaterial(CoreError):
    """Bytes that are not a TenSEAL context / CKKS vector of the expected parameters."""


# --------------------------------------------------------------------------------------------------
# parameter profiles

# HomomorphicEncryption.org standard, ternary secret: maximal log2(q) per (N, security level).
_HE_STANDARD_MAX_BITS: dict[int, dict[int, int]] = {
    128: {4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {4096: 58, 8192: 118, 16384: 237, 32768: 476},
}


@dataclass(frozen=True)
class CkksProfile:
    """CKKS parameters: ``coeff_mod_bit_sizes`` = [q0, rescaling primes..., special prime].

    ``depth`` = number of rescaling primes = multiplications (ct×ct or ×plaintext) a fresh ciphertext
    survives. ``headroom_bits`` = q0 − scale bits: at the last level only |v| < 2**(headroom_bits-1)
    decodes; at every earlier level the bound is far larger.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    security_level: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def headroom_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0] - self.scale_bits

    @property
    def global_scale(self) -> float:
        return float(2**self.scale_bits)


def validate_profile(profile: CkksProfile) -> CkksProfile:
    """Refuse inconsistent parameters (the original's default/256 row had scale 2^60 over 50-bit primes).

    Rules: N a power of two in 4096..32768; at least q0 + special prime; every prime ≤ 60 bits; every
    rescaling prime equal to the scale (otherwise each rescale drifts the scale and TenSEAL's forced
    ``scale = init_scale`` corrupts values); q0 at least 10 bits above the scale; special prime ≥ the
    largest other prime; total bits within the HE standard for the claimed security level.
    """
    n, q, s = profile.poly_modulus_degree, profile.coeff_mod_bit_sizes, profile.scale_bits
    if n not in (4096, 8192, 16384, 32768):
        raise CoreError(f"{profile.name}: poly_modulus_degree {n} not in 4096..32768")
    if len(q) < 2 or any(b > 60 or b < 20 for b in q):
        raise CoreError(f"{profile.name}: need >= 2 primes of 20..60 bits, got {list(q)}")
    if any(b != s for b in q[1:-1]):
        raise CoreError(f"{profile.name}: rescaling primes {list(q[1:-1])} must equal the scale (2^{s})")
    if q[0] - s < 10:
        raise CoreError(f"{profile.name}: q0={q[0]} bits leaves < 10 integer bits above scale 2^{s}")
    if q[-1] < max(q[:-1]):
        raise CoreError(f"{profile.name}: special prime {q[-1]} bits smaller than another prime")
    bound = _HE_STANDARD_MAX_BITS.get(profile.security_level, {}).get(n)
    if bound is None or profile.total_bits > bound:
        raise CoreError(
            f"{profile.name}: {profile.total_bits} coefficient bits exceed the HE standard bound {bound} "
            f"for N={n} at {profile.security_level}-bit security"
        )
    return profile


def _p(name: str, n: int, q: Sequence[int], scale_bits: int, level: int) -> CkksProfile:
    return validate_profile(CkksProfile(name, n, tuple(q), scale_bits, level))


#: The reference's table (mode "default" for data mining, "ml" for PPLR). ``default-256`` is corrected:
#: the original asked for scale 2^60 with 50-bit rescaling primes and a 60-bit q0, which leaves |v| < 0.5
#: decodable; a 60-bit scale cannot be rescaled at all (SEAL primes are ≤ 60 bits). We keep the primes and
#: use the scale they imply, 2^50 (≈ 15 decimal digits of fraction, |v| < 2^9 at the very last level,
#: < 2^59 one level above). ``ml-*``: depth 7 = one PPLR epoch (dot, 3 for σ̃, replicate, e·x, lr/n).
#: ``pplr-*``: depth 4 = one epoch of PPLR's packed, rotation-free layout (``core/algorithms/pplr.py``:
#: x⊙w, σ̃ 2, e⊙x). 128 bits fit N=8192 exactly (45+4·32+45 = 218 = the HE bound): a 2^32 scale keeps
#: ~1e-6 absolute error and 13 bits of headroom (|v| < 4096 at the last level) for the per-slot gradients.
PROFILES: dict[str, CkksProfile] = {
    p.name: p
    for p in (
        _p("default-128", 8192, (60, 40, 40, 60), 40, 128),
        _p("default-192", 16384, (60, 40, 40, 40, 60), 40, 192),
        _p("default-256", 32768, (60, 50, 50, 50, 60), 50, 256),
        _p("ml-128", 16384, (60, *([40] * 7), 60), 40, 128),
        _p("ml-192", 32768, (60, *([40] * 7), 60), 40, 192),
        _p("ml-256", 32768, (60, *([40] * 7), 60), 40, 256),
        _p("pplr-128", 8192, (45, *([32] * 4), 45), 32, 128),
        _p("pplr-192", 16384, (60, *([40] * 4), 60), 40, 192),
        _p("pplr-256", 16384, (48, *([35] * 4), 48), 35, 256),
    )
}


def get_profile(profile: str | CkksProfile = "default-128") -> CkksProfile:
    """Resolve a profile name ("default-128", "ml-192", or "default"/"ml" meaning level 128)."""
    if isinstance(profile, CkksProfile):
        return validate_profile(profile)
    name = profile if "-" in profile else f"{profile}-128"
    try:
        return PROFILES[name]
    except KeyError:
        raise CoreError(f"unknown CKKS profile {profile!r}; known: {sorted(PROFILES)}") from None


def create_context(profile: str | CkksProfile = "default-128", *, galois: bool = False) -> ts.Context:
    """Data-owner context (secret key, public key, relinearisation keys; Galois keys only on request)."""
    p = get_profile(profile)
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes)
    )
    ctx.global_scale = p.global_scale
    if galois:
        ctx.generate_galois_keys()
    return ctx


# --------------------------------------------------------------------------------------------------
# context introspection


def slot_count(ctx: ts.Context) -> int:
    """Number of CKKS slots (N/2), read from the context itself (never a hard-coded 8192)."""
    return int(ctx.seal_context().data.key_context_data().parms().poly_modulus_degree()) // 2


def is_private(ctx: ts.Context) -> bool:
    return bool(ctx.is_private())


def require_private(ctx: ts.Context) -> None:
    if not ctx.is_private():
        raise MissingKeyMaterial("decryption needs the data owner's private context (secret key)")


def require_relin_keys(ctx: ts.Context) -> None:
    if not ctx.has_relin_keys():
        raise MissingKeyMaterial("ciphertext multiplication needs relinearisation keys in the context")


def require_galois_keys(ctx: ts.Context) -> None:
    if not ctx.has_galois_keys():
        raise MissingKeyMaterial(
            "this algorithm rotates ciphertexts: the public context must carry Galois keys "
            "(public_context_bytes(ctx, galois=True) / rotatekey file)"
        )


def levels_left(vector: ts.CKKSVector) -> int:
    """Rescales a ciphertext can still take (0 = at q0 only)."""
    ct = vector.ciphertext()
    ct = ct[0] if isinstance(ct, list) else ct
    seal_ctx = vector.context().seal_context().data
    return int(seal_ctx.get_context_data(ct.parms_id()).chain_index())


def require_levels(vector: ts.CKKSVector, needed: int, what: str) -> None:
    """Fail early with a clear message instead of TenSEAL's 'scale out of bounds' mid-computation."""
    have = levels_left(vector)
    if have < needed:
        raise CoreError(f"{what} needs {needed} multiplicative levels, the ciphertext has {have}: use a "
                        f"deeper CKKS profile (e.g. 'ml-128') or refresh the ciphertext")

