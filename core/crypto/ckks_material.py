"""CKKS public material: the bytes a data owner hands out and the ``KEYS_PATH`` files a worker reads.

Why here, and only here: the security rule of the whole system, *the worker never holds a secret
key*, is enforced where public material is written and read. The owner serialises a public copy with
:func:`public_context_bytes` or :func:`write_public_keys`; the worker loads it with
:func:`load_public_context` / :func:`read_public_context` / :func:`cached_public_context`, all three of
which refuse material carrying a secret key (:class:`SecretKeyPresent`) *before* TenSEAL parses it
(``core/crypto/ckks_protobuf.py`` reads the structure).

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
TenSEAL anyway). docs/ckks-keys.md is the contract of this layout.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import tenseal as ts

from core.crypto.ckks_params import (
    MalformedMaterial,
    MissingKeyMaterial,
    SecretKeyPresent,
    require_private,
    slot_count,
)
from core.crypto.ckks_protobuf import (
    CTX_PARAMS,
    CTX_PUBLIC,
    PUB_GALOIS,
    PUB_KEY,
    PUB_RELIN,
    check_public_material,
    fields,
    len_field,
)
from core.errors import CoreError

__all__ = [
    "cached_public_context",
    "context_digest",
    "galois_element",
    "load_public_context",
    "private_context_bytes",
    "public_context_bytes",
    "read_public_context",
    "write_public_keys",
]


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
    for f in fields(data):
        if f.number == CTX_PUBLIC:
            kept = b"".join(bytes(g.raw) for g in fields(f.payload) if g.number != number)  # type: ignore[arg-type]
            out += len_field(CTX_PUBLIC, kept + len_field(number, payload))
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
        data = _with_public_field(data, PUB_GALOIS, _galois_keys_blob(ctx, rotation_steps))
    else:
        if galois and not ctx.has_galois_keys():
            if not ctx.is_private():
                raise MissingKeyMaterial("Galois keys can only be generated with the secret key")
            ctx.generate_galois_keys()
        data = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=galois,
                             save_relin_keys=True)
    check_public_material(data)  # belt and braces: never emit a private part
    return data


def private_context_bytes(ctx: ts.Context) -> bytes:
    """Data-owner side only: the full context including the secret key (keep it off the worker)."""
    require_private(ctx)
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=True,
                         save_relin_keys=True)


def load_public_context(data: bytes) -> ts.Context:
    """Worker side: load a public context; material carrying a secret key is refused unparsed."""
    check_public_material(data)
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
    top = fields(data)
    params = next(f for f in top if f.number == CTX_PARAMS)
    public = next(f for f in top if f.number == CTX_PUBLIC)
    keys: dict[int, memoryview] = {}
    kept = bytearray()
    for f in fields(public.payload):  # type: ignore[arg-type]
        if f.number in (PUB_KEY, PUB_RELIN, PUB_GALOIS):
            keys[f.number] = f.payload  # type: ignore[assignment]
        else:
            kept += f.raw
    bare = bytes(params.raw) + len_field(CTX_PUBLIC, kept)
    bare += b"".join(bytes(f.raw) for f in top if f.number not in (CTX_PARAMS, CTX_PUBLIC))
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"ctx": out_dir / ctx_filename, "pubkey": out_dir / pubkey_filename,
             "relinkey": out_dir / relinkey_filename}
    if PUB_KEY not in keys or PUB_RELIN not in keys:
        raise MissingKeyMaterial("context lacks a public key or relinearisation keys")
    _atomic_write(paths["ctx"], bare)
    _atomic_write(paths["pubkey"], bytes(keys[PUB_KEY]))
    _atomic_write(paths["relinkey"], bytes(keys[PUB_RELIN]))
    if galois:
        paths["rotatekey"] = out_dir / rotatekey_filename
        _atomic_write(paths["rotatekey"], bytes(keys[PUB_GALOIS]))
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
    top = check_public_material(raw)
    public = next(f for f in top if f.number == CTX_PUBLIC)
    parts: dict[int, bytes] = {}
    kept = bytearray()
    for f in fields(public.payload):  # type: ignore[arg-type]
        if f.number in (PUB_KEY, PUB_RELIN, PUB_GALOIS):
            parts[f.number] = bytes(f.payload)  # type: ignore[arg-type]
        else:
            kept += f.raw
    for number, name in ((PUB_KEY, pubkey_filename), (PUB_RELIN, relinkey_filename),
                         (PUB_GALOIS, rotatekey_filename)):
        if name and (d / name).is_file():
            parts[number] = (d / name).read_bytes()
    if PUB_KEY not in parts:
        raise MissingKeyMaterial(f"no public key: neither {d / pubkey_filename} nor inside {ctx_path}")
    public_payload = bytes(kept) + b"".join(len_field(n, parts[n]) for n in sorted(parts))
    rebuilt = bytearray()
    for f in top:
        rebuilt += len_field(CTX_PUBLIC, public_payload) if f.number == CTX_PUBLIC else f.raw
    return load_public_context(bytes(rebuilt))
