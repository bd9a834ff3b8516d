"""CKKS through TenSEAL: parameter profiles, contexts without secret keys, packing and (de)serialisation.

Why this module exists: every CKKS ("PQC") algorithm and both roles (data owner, worker) need the same
handful of primitives, and the security rule of the whole system — *the worker never holds a secret key* —
has to be enforced in exactly one place. Everything here is pure (no I/O except the two key-directory
helpers, which only read/write the files they are given).

Roles
-----
* Data owner: :func:`create_context` (holds the secret key), encrypts, decrypts, serialises a public copy
  with :func:`public_context_bytes` or :func:`write_public_keys`.
* Worker: :func:`load_public_context` / :func:`read_public_context` / :func:`cached_public_context`; all
  three refuse material that carries a secret key (:class:`SecretKeyPresent`) *before* TenSEAL parses it.

Key directory layout (``KEYS_PATH``; names from the settings ``CTX_FILENAME``, ``PUBKEY_FILENAME``,
``RELINKEY_FILENAME``, ``ROTATEKEY_FILENAME``)
-------------------------------------------------------------------------------------------------------
TenSEAL serialises a context as one protobuf (``TenSEALContextProto``: 1 = encryption parameters,
2 = public part {1 public key, 2 flags, 3 scale, 4 relin keys, 5 Galois keys}, 3 = private part
{secret key}, 4 = encryption type). We split the public part over the original file names:

* ``ctx``       — the context protobuf *without any key*: parameters, flags, scale (≈100 bytes);
* ``pubkey``    — the SEAL ``PublicKey`` blob (field 2.1; ≈ 0.45 MB at N=8192);
* ``relinkey``  — the SEAL ``RelinKeys`` blob (field 2.4; ≈ 1.4 MB at N=8192);
* ``rotatekey`` — the SEAL ``GaloisKeys`` blob (field 2.5), written only when an algorithm needs rotations
  (PPLR rows layout): all power-of-two steps (33 MB at N=8192, 415 MB at N=16384) or only the steps the
  algorithm uses (``rotation_steps``; 46 MB at N=16384 for PPLR with d=2).

:func:`read_public_context` reassembles them. A complete *public* TenSEAL context stored alone in ``ctx``
is accepted too (the key files, when present, then override its keys). A ``ctx`` that carries a private
part, or a ``secretkey`` file present in the directory, is refused with :class:`SecretKeyPresent`.
The files are TenSEAL/SEAL formats, not the original system's Pyfhel files (those cannot be read by
TenSEAL anyway).

Packing
-------
* row packing (:func:`encrypt_rows`): one ciphertext per record, attributes in slots ``0..a-1``
  (SKMeans-PQC, DBSKMeans-PQC, SKNN-PQC faithful layout, PPLR);
* column packing (:func:`encrypt_columns`): ``blocks[b][z]`` = attribute ``z`` of records
  ``b*B .. b*B+B-1`` with ``B = min(n, slots)``; the last block is zero-padded so every vector has the
  same size ``B`` (TenSEAL refuses to combine vectors of different sizes without rotations);
* replicated (:func:`encrypt_replicated`): one value copied into all ``B`` slots, to be combined
  slot-wise with column blocks without any rotation (no Galois keys needed).

TenSEAL pitfall handled here: SEAL refuses to *produce* a transparent ciphertext (all-zero), so
``a - a`` — or ``x - y`` for two bit-identical results, e.g. the same centroid recomputed from the same
members — raises ``RuntimeError("result ciphertext is transparent")``. :func:`subtract` falls back to
a fresh encryption of zero; the k-means code instead adds a client-supplied encrypted zero first, which
can never cancel.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal as ts
from numpy.typing import ArrayLike

from core.errors import CoreError

__all__ = [
    "PROFILES",
    "CkksProfile",
    "MalformedMaterial",
    "MissingKeyMaterial",
    "SecretKeyPresent",
    "cached_public_context",
    "column_block_size",
    "context_digest",
    "create_context",
    "decode",
    "decrypt_vector",
    "decrypt_vectors",
    "deserialize",
    "encrypt_columns",
    "encrypt_replicated",
    "encrypt_rows",
    "encrypted_zero",
    "galois_element",
    "get_profile",
    "is_private",
    "levels_left",
    "load_public_context",
    "post_process",
    "private_context_bytes",
    "public_context_bytes",
    "read_public_context",
    "require_galois_keys",
    "require_levels",
    "require_private",
    "require_relin_keys",
    "serialize",
    "slot_count",
    "subtract",
    "sum_vectors",
    "validate_profile",
    "write_public_keys",
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


# --------------------------------------------------------------------------------------------------
# minimal protobuf reader/writer (only what is needed to split and check TenSEALContextProto)

_CTX_PARAMS, _CTX_PUBLIC, _CTX_PRIVATE, _CTX_ENC_TYPE = 1, 2, 3, 4
_PUB_KEY, _PUB_FLAGS, _PUB_SCALE, _PUB_RELIN, _PUB_GALOIS = 1, 2, 3, 4, 5


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedMaterial("truncated or invalid protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    raw: memoryview  # the whole encoded field (key + payload), for re-emission
    payload: memoryview | int


def _fields(buf: bytes | memoryview) -> list[_Field]:
    view = memoryview(buf)
    pos, out = 0, []
    while pos < len(view):
        start = pos
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedMaterial("protobuf field number 0")
        payload: memoryview | int
        if wire == 0:
            payload, pos = _varint(view, pos)
        elif wire == 1:
            payload, pos = view[pos : pos + 8], pos + 8
        elif wire == 5:
            payload, pos = view[pos : pos + 4], pos + 4
        elif wire == 2:
            length, pos = _varint(view, pos)
            payload, pos = view[pos : pos + length], pos + length
        else:
            raise MalformedMaterial(f"unsupported protobuf wire type {wire}")
        if pos > len(view):
            raise MalformedMaterial("truncated protobuf message")
        out.append(_Field(number, wire, view[start:pos], payload))
    return out


def _len_field(number: int, payload: bytes | memoryview) -> bytes:
    return _enc_varint(number << 3 | 2) + _enc_varint(len(payload)) + bytes(payload)


def _check_public_material(data: bytes | memoryview) -> list[_Field]:
    """Top-level structural check, run before TenSEAL ever parses the bytes."""
    try:
        top = _fields(data)
    except MalformedMaterial as exc:
        raise MalformedMaterial(f"not a TenSEAL context: {exc}") from None
    numbers = {f.number for f in top}
    if _CTX_PRIVATE in numbers:
        raise SecretKeyPresent(
            "refusing CKKS key material that carries a secret key: the worker must only receive the "
            "public context (data owner: use public_context_bytes / write_public_keys)"
        )
    if _CTX_PARAMS not in numbers or _CTX_PUBLIC not in numbers:
        raise MalformedMaterial("not a TenSEAL context: encryption parameters or public part missing")
    for f in top:
        if f.number == _CTX_ENC_TYPE and f.payload != 0:
            raise MalformedMaterial("symmetric-encryption contexts are not usable without the secret key")
    return top


# --------------------------------------------------------------------------------------------------
# public material: bytes


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a slot rotation by ``step`` (left if > 0): 3^(step mod N/2) mod 2N."""
    slots = poly_modulus_degree // 2
    if step == 0 or abs(step) >= slots:
        raise CoreError(f"rotation step must be in ±1..{slots - 1}, got {step}")
    return pow(3, step % slots, 2 * poly_modulus_degree)


def _galois_keys_blob(ctx: ts.Context, steps: Iterable[int]) -> bytes:
    """SEAL GaloisKeys for exactly these rotation steps (needs the secret key).

    TenSEAL only generates the full power-of-two set (≈ 400 MB at N=16384); SEAL's key generator,
    reachable through ``tenseal.sealapi``, takes a list of Galois elements. Rotations by other steps are
    decomposed by SEAL into the available ones. ``GaloisKeys.save`` only writes to a path, hence the
    temporary file.
    """
    import tempfile

    import tenseal.sealapi as sealapi

    require_private(ctx)
    n = slot_count(ctx) * 2
    elements = sorted({galois_element(int(s), n) for s in steps})
    if not elements:
        raise CoreError("no rotation steps given")
    generator = sealapi.KeyGenerator(ctx.seal_context().data, ctx.secret_key().data)
    keys = sealapi.GaloisKeys()
    generator.create_galois_keys(elements, keys)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "galois"
        keys.save(str(path))
        return path.read_bytes()


def _with_public_field(data: bytes, number: int, payload: bytes) -> bytes:
    out = bytearray()
    for f in _fields(data):
        if f.number == _CTX_PUBLIC:
            kept = b"".join(bytes(g.raw) for g in _fields(f.payload) if g.number != number)  # type: ignore[arg-type]
            out += _len_field(_CTX_PUBLIC, kept + _len_field(number, payload))
        else:
            out += f.raw
    return bytes(out)


def public_context_bytes(ctx: ts.Context, galois: bool = False,
                         rotation_steps: Iterable[int] | None = None) -> bytes:
    """Serialise ``ctx`` WITHOUT the secret key (public key + relinearisation keys [+ Galois keys]).

    Relinearisation keys are always included (ct×ct multiplications: SKNN, pqc_kmeans distances, PPLR).
    Galois keys only with ``galois=True`` (only the rows layout of PPLR rotates): all power-of-two
    rotations (generated on the data owner's context if missing, which mutates ``ctx``), or — much
    smaller — only the keys for ``rotation_steps`` (e.g. ``pplr.rotation_steps(d)``; a 63 MB instead of
    a 415 MB context at N=16384 for d=2).
    """
    if galois and rotation_steps is not None:
        data = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                             save_relin_keys=True)
        data = _with_public_field(data, _PUB_GALOIS, _galois_keys_blob(ctx, rotation_steps))
    else:
        if galois and not ctx.has_galois_keys():
            if not ctx.is_private():
                raise MissingKeyMaterial("Galois keys can only be generated with the secret key")
            ctx.generate_galois_keys()
        data = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=galois,
                             save_relin_keys=True)
    _check_public_material(data)  # belt and braces: never emit a private part
    return data


def private_context_bytes(ctx: ts.Context) -> bytes:
    """Data-owner side only: the full context including the secret key (keep it off the worker)."""
    require_private(ctx)
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=True,
                         save_relin_keys=True)


def load_public_context(data: bytes) -> ts.Context:
    """Worker side: load a public context; material carrying a secret key is refused unparsed."""
    _check_public_material(data)
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError/TypeError on bad streams
        raise MalformedMaterial(f"not a TenSEAL context: {exc}") from None
    if ctx.is_private():  # cannot happen after the structural check; keep the invariant explicit
        raise SecretKeyPresent("refusing a CKKS context that holds a secret key")
    if not ctx.has_public_key():
        raise MissingKeyMaterial("the public context has no public key")
    return ctx


def context_digest(data: bytes) -> str:
    """Stable cache key for context bytes (BLAKE2b-160, ~1 GB/s: 2 ms for an N=8192 public context)."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


_CACHE_MAX = 4
_cache: OrderedDict[str, ts.Context] = OrderedDict()
_cache_lock = threading.Lock()


def cached_public_context(data: bytes) -> ts.Context:
    """Per-process LRU of loaded public contexts keyed by :func:`context_digest`.

    Meant for pool processes that receive ``(context bytes, list[bytes])`` per task: loading a context
    costs ~15 ms at N=8192 without Galois keys and seconds with them, hashing costs ~1 ms per MB.
    """
    key = context_digest(data)
    with _cache_lock:
        ctx = _cache.get(key)
        if ctx is not None:
            _cache.move_to_end(key)
            return ctx
    ctx = load_public_context(data)
    with _cache_lock:
        _cache[key] = ctx
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)
    return ctx


# --------------------------------------------------------------------------------------------------
# public material: key directory


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_public_keys(
    ctx: ts.Context,
    directory: str | os.PathLike[str],
    ctx_filename: str = "ctx",
    pubkey_filename: str = "pubkey",
    relinkey_filename: str = "relinkey",
    *,
    galois: bool = False,
    rotation_steps: Iterable[int] | None = None,
    rotatekey_filename: str = "rotatekey",
) -> dict[str, Path]:
    """Write the worker's ``KEYS_PATH`` files (layout in the module docstring); never a secret key.

    Returns ``{"ctx": path, "pubkey": path, "relinkey": path[, "rotatekey": path]}``.
    """
    data = public_context_bytes(ctx, galois=galois, rotation_steps=rotation_steps)
    top = _fields(data)
    params = next(f for f in top if f.number == _CTX_PARAMS)
    public = next(f for f in top if f.number == _CTX_PUBLIC)
    keys: dict[int, memoryview] = {}
    kept = bytearray()
    for f in _fields(public.payload):  # type: ignore[arg-type]
        if f.number in (_PUB_KEY, _PUB_RELIN, _PUB_GALOIS):
            keys[f.number] = f.payload  # type: ignore[assignment]
        else:
            kept += f.raw
    bare = bytes(params.raw) + _len_field(_CTX_PUBLIC, kept)
    bare += b"".join(bytes(f.raw) for f in top if f.number not in (_CTX_PARAMS, _CTX_PUBLIC))
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"ctx": out_dir / ctx_filename, "pubkey": out_dir / pubkey_filename,
             "relinkey": out_dir / relinkey_filename}
    if _PUB_KEY not in keys or _PUB_RELIN not in keys:
        raise MissingKeyMaterial("context lacks a public key or relinearisation keys")
    _atomic_write(paths["ctx"], bare)
    _atomic_write(paths["pubkey"], bytes(keys[_PUB_KEY]))
    _atomic_write(paths["relinkey"], bytes(keys[_PUB_RELIN]))
    if galois:
        paths["rotatekey"] = out_dir / rotatekey_filename
        _atomic_write(paths["rotatekey"], bytes(keys[_PUB_GALOIS]))
    return paths


def read_public_context(
    directory: str | os.PathLike[str],
    ctx_filename: str = "ctx",
    pubkey_filename: str = "pubkey",
    relinkey_filename: str = "relinkey",
    *,
    rotatekey_filename: str | None = "rotatekey",
    secret_key_filename: str | None = "secretkey",
) -> ts.Context:
    """Worker side: rebuild the public context from ``KEYS_PATH``.

    Refuses (:class:`SecretKeyPresent`) a directory holding ``secret_key_filename`` (the original V1
    worker loaded it from a shared volume and could decrypt everything) and a ``ctx`` with a private
    part. ``rotatekey`` is optional (only PPLR needs it); pass ``rotatekey_filename=None`` to ignore it
    and save memory. Missing ``ctx`` or no public key at all → :class:`MissingKeyMaterial`.
    """
    d = Path(directory)
    if secret_key_filename and (d / secret_key_filename).exists():
        raise SecretKeyPresent(
            f"{d / secret_key_filename} exists: the worker's key directory must not contain a secret key"
        )
    ctx_path = d / ctx_filename
    if not ctx_path.is_file():
        raise MissingKeyMaterial(f"CKKS context file {ctx_path} not found")
    raw = ctx_path.read_bytes()
    top = _check_public_material(raw)
    public = next(f for f in top if f.number == _CTX_PUBLIC)
    parts: dict[int, bytes] = {}
    kept = bytearray()
    for f in _fields(public.payload):  # type: ignore[arg-type]
        if f.number in (_PUB_KEY, _PUB_RELIN, _PUB_GALOIS):
            parts[f.number] = bytes(f.payload)  # type: ignore[arg-type]
        else:
            kept += f.raw
    for number, name in ((_PUB_KEY, pubkey_filename), (_PUB_RELIN, relinkey_filename),
                         (_PUB_GALOIS, rotatekey_filename)):
        if name and (d / name).is_file():
            parts[number] = (d / name).read_bytes()
    if _PUB_KEY not in parts:
        raise MissingKeyMaterial(f"no public key: neither {d / pubkey_filename} nor inside {ctx_path}")
    public_payload = bytes(kept) + b"".join(_len_field(n, parts[n]) for n in sorted(parts))
    rebuilt = bytearray()
    for f in top:
        rebuilt += _len_field(_CTX_PUBLIC, public_payload) if f.number == _CTX_PUBLIC else f.raw
    return load_public_context(bytes(rebuilt))


# --------------------------------------------------------------------------------------------------
# encryption / packing


def _as_matrix(X: ArrayLike, slots: int | None = None, what: str = "X") -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CoreError(f"{what} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CoreError(f"{what} contains NaN or infinite values")
    if slots is not None and arr.shape[1] > slots:
        raise CoreError(f"{what} has {arr.shape[1]} columns but a ciphertext holds {slots} slots")
    return arr


def encrypt_rows(ctx: ts.Context, X: ArrayLike) -> list[ts.CKKSVector]:
    """Row packing: one ciphertext per record, attributes in slots 0..a-1 (vector size a)."""
    arr = _as_matrix(X, slot_count(ctx))
    return [ts.ckks_vector(ctx, row) for row in arr]


def column_block_size(n: int, slots: int) -> int:
    """Vector size used by column packing: all blocks share it (the last one is zero-padded)."""
    if n <= 0 or slots <= 0:
        raise CoreError("column packing needs n > 0 and slots > 0")
    return min(n, slots)


def _column_blocks(arr: np.ndarray, size: int) -> np.ndarray:
    """(n, a) → (blocks, a, size), zero-padded."""
    n, a = arr.shape
    blocks = -(-n // size)
    padded = np.zeros((blocks * size, a))
    padded[:n] = arr
    return padded.reshape(blocks, size, a).transpose(0, 2, 1)


def encrypt_columns(ctx: ts.Context, X: ArrayLike, slots: int | None = None
                    ) -> list[list[ts.CKKSVector]]:
    """Column packing: ``result[b][z]`` holds attribute z of records ``b*B ... b*B+B-1``.

    ``B = min(n, slots)`` with ``slots`` defaulting to (and capped at) the context's slot count; the last
    block is zero-padded to size B. Needs a·⌈n/B⌉ ciphertexts instead of n.
    """
    cap = slot_count(ctx)
    if slots is not None and not 0 < slots <= cap:
        raise CoreError(f"slots must be in 1..{cap}, got {slots}")
    arr = _as_matrix(X)
    size = column_block_size(arr.shape[0], slots or cap)
    return [[ts.ckks_vector(ctx, col) for col in block] for block in _column_blocks(arr, size)]


def encrypt_replicated(ctx: ts.Context, values: ArrayLike, size: int) -> list[ts.CKKSVector]:
    """One ciphertext per value, the value copied into ``size`` slots (for slot-wise ops, no rotations)."""
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(vals)):
        raise CoreError("values contain NaN or infinite entries")
    if not 0 < size <= slot_count(ctx):
        raise CoreError(f"size must be in 1..{slot_count(ctx)}, got {size}")
    return [ts.ckks_vector(ctx, np.full(size, v)) for v in vals]


def encrypted_zero(ctx: ts.Context, size: int) -> ts.CKKSVector:
    """Fresh Enc(0) of ``size`` slots; a public context can do this (it holds the public key)."""
    return ts.ckks_vector(ctx, np.zeros(size))


# --------------------------------------------------------------------------------------------------
# homomorphic helpers


def _is_transparent_error(exc: BaseException) -> bool:
    return "transparent" in str(exc)


def subtract(a: ts.CKKSVector, b: ts.CKKSVector, zero: ts.CKKSVector | None = None) -> ts.CKKSVector:
    """``a - b`` that survives bit-identical operands (SEAL: 'result ciphertext is transparent').

    On that error the result is ``zero`` (a copy) or a fresh Enc(0) made with ``a``'s context.
    """
    try:
        return a - b
    except (RuntimeError, ValueError) as exc:
        if not _is_transparent_error(exc):
            raise
    return zero.copy() if zero is not None else encrypted_zero(a.context(), a.size())


def sum_vectors(vectors: Iterable[ts.CKKSVector]) -> ts.CKKSVector:
    """Sequential out-of-place sum. Measured (N=8192): ``acc + v`` ≈ 0.05 ms, ``acc.add_(v)`` /
    ``acc += v`` ≈ 0.2 ms (the in-place binding copies), so the plain ``+`` chain is the fastest."""
    it = iter(vectors)
    try:
        acc = next(it)
    except StopIteration:
        raise CoreError("cannot sum an empty list of ciphertexts") from None
    for v in it:
        acc = acc + v
    return acc


# --------------------------------------------------------------------------------------------------
# (de)serialisation


def serialize(vectors: Iterable[ts.CKKSVector]) -> list[bytes]:
    return [v.serialize() for v in vectors]


def deserialize(ctx: ts.Context, blobs: Iterable[bytes]) -> list[ts.CKKSVector]:
    """Load CKKS vectors; a malformed blob or a declared size beyond the slot count → MalformedMaterial.

    (TenSEAL trusts the ``size`` field of a serialised vector when decrypting; a forged size larger than
    N/2 would read past the decoded buffer, so it is checked here.)
    """
    slots = slot_count(ctx)
    out = []
    for i, blob in enumerate(blobs):
        try:
            v = ts.ckks_vector_from(ctx, bytes(blob))
        except Exception as exc:
            raise MalformedMaterial(f"ciphertext {i}: not a CKKS vector for this context ({exc})") from None
        if not 0 < v.size() <= slots:
            raise MalformedMaterial(f"ciphertext {i}: declared size {v.size()} outside 1..{slots}")
        out.append(v)
    return out


# --------------------------------------------------------------------------------------------------
# decoding (data owner)


def decode(values: ArrayLike, round_: bool = False, decimals: int = 2) -> np.ndarray:
    """The ``CKKS_ROUND`` / ``CKKS_DECIMALS`` rule: decrypted values as float64, rounded to ``decimals``
    only when ``round_`` is set (default off, 2 decimals — the original's env defaults)."""
    arr = np.asarray(values, dtype=np.float64)
    return np.round(arr, decimals) if round_ else arr


def post_process(values: ArrayLike, threshold: float = 1e-5) -> np.ndarray:
    """Zero entries with |v| < threshold (the original's cleanup before re-encrypting PPLR weights)."""
    arr = np.array(values, dtype=np.float64)
    arr[np.abs(arr) < threshold] = 0.0
    return arr


def decrypt_vector(ctx: ts.Context, vector: ts.CKKSVector, round_: bool = False, decimals: int = 2
                   ) -> np.ndarray:
    require_private(ctx)
    return decode(vector.decrypt(ctx.secret_key()), round_, decimals)


def decrypt_vectors(ctx: ts.Context, vectors: Sequence[ts.CKKSVector], width: int | None = None,
                    round_: bool = False, decimals: int = 2) -> np.ndarray:
    """Decrypt and stack into a 2-D array; ``width`` trims (or checks) each row's length."""
    require_private(ctx)
    if not vectors:
        return np.zeros((0, width or 0))
    sk = ctx.secret_key()
    rows = [np.asarray(v.decrypt(sk), dtype=np.float64) for v in vectors]
    w = width if width is not None else rows[0].shape[0]
    if any(r.shape[0] < w for r in rows):
        raise CoreError(f"a decrypted vector is shorter than {w}")
    return decode(np.stack([r[:w] for r in rows]), round_, decimals)
