"""The worker's CKKS public key material: loaded lazily, once, only when a CKKS operation needs it.

Why this shape:

* The original V1 worker read ``ctx``, ``pubkey``, **``secretkey``** and ``relinkey`` from ``KEYS_PATH``
  on every PQC request, so "the cloud" could decrypt everything; the V2 worker refused to start
  without key files even for Liu-only work. Here a worker starts without keys, a non-CKKS operation
  never touches them, and the first CKKS operation loads them. Missing, malformed or secret-bearing
  material fails *that operation* with ``MissingKeys`` (422) and nothing else; the next CKKS command
  tries again, so an operator can add the files without restarting the worker.
* The layout (docs/ckks-keys.md, contract section 6): ``ctx`` is a TenSEAL context without its secret
  key, enough on its own when it carries the public and relinearisation keys; ``pubkey``, ``relinkey``
  and ``rotatekey``, when present, add or replace those keys, each holding either the raw SEAL key or a
  whole public context that carries it (told apart structurally: a raw SEAL key never parses as the
  context's protobuf). TenSEAL has no call that adds a key to a loaded context, so the keys are put
  into ``ctx``'s protobuf and the result is parsed once; only when that fails is each file parsed alone
  with ``ctx``, to name the one at fault and what it should hold.
* ``SECRET_KEY_FILENAME`` is never opened: its mere presence in ``KEYS_PATH`` refuses the directory, as
  does a ``ctx`` (or key file) that carries a private part (checked structurally before TenSEAL parses
  anything).
* TenSEAL holds the GIL and a context cannot be shared between processes, so the context is parsed
  in the compute pool, never on the event loop. The event loop keeps a small, picklable
  :class:`PublicKeys` summary (``ctx.resource``), loaded once per worker by running
  :func:`inspect_keys` in the pool; every pool process then loads its own TenSEAL context once
  (:func:`context_for`) and checks that the files still have the digest the worker validated.
  Passing the context bytes with every job instead would pickle 2 MB (N=8192) to 400 MB (N=16384
  with Galois keys) per call.
* Galois (rotation) keys are large and only the row-layout PPLR needs them: they are loaded only
  for operations that ask (``galois=True``), as a separate resource.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from worker.errors import MissingKeys

if TYPE_CHECKING:
    import tenseal as ts

    from worker.runtime.context import JobContext
    from worker.settings import Settings

__all__ = [
    "RESOURCE_GALOIS",
    "RESOURCE_PUBLIC",
    "KeySource",
    "KeysChanged",
    "PublicKeys",
    "compute_with_keys",
    "context_for",
    "fingerprint",
    "forget",
    "inspect_keys",
    "load_context",
    "public_keys",
]

T = TypeVar("T")

RESOURCE_PUBLIC = "ckks.public"
RESOURCE_GALOIS = "ckks.public+galois"
_HASH_BLOCK = 1 << 20


class KeysChanged(MissingKeys):
    """The key files changed after the worker validated them; the next command reloads them."""


@dataclass(frozen=True)
class KeySource:
    """Where the public material lives (``KEYS_PATH`` and the ``*_FILENAME`` settings).

    ``rotatekey_filename`` is None unless the operation needs Galois keys. ``secret_key_filename`` is
    only ever tested for existence (its presence refuses the directory), never opened.
    """

    directory: str
    ctx_filename: str = "ctx"
    pubkey_filename: str = "pubkey"
    relinkey_filename: str = "relinkey"
    rotatekey_filename: str | None = None
    secret_key_filename: str = "secretkey"

    @classmethod
    def from_settings(cls, settings: Settings, *, galois: bool = False) -> KeySource:
        return cls(
            directory=str(settings.keys_path),
            ctx_filename=settings.ctx_filename,
            pubkey_filename=settings.pubkey_filename,
            relinkey_filename=settings.relinkey_filename,
            rotatekey_filename=settings.rotatekey_filename if galois else None,
            secret_key_filename=settings.secret_key_filename,
        )

    def public_files(self) -> list[str]:
        """The file names that make up the public material (in a fixed order)."""
        names = [self.ctx_filename, self.pubkey_filename, self.relinkey_filename]
        if self.rotatekey_filename:
            names.append(self.rotatekey_filename)
        return names


@dataclass(frozen=True)
class PublicKeys:
    """What the event loop knows about the loaded public context (small and picklable).

    Handlers pass it to the pool functions of ``worker.handlers.pqc_jobs``, which turn it into a
    TenSEAL context with :func:`context_for`.
    """

    source: KeySource
    digest: str
    poly_modulus_degree: int
    slots: int
    has_relin_keys: bool
    has_galois_keys: bool

    def require_relin_keys(self, operation: str) -> None:
        if not self.has_relin_keys:
            raise MissingKeys(
                f"{operation} multiplies ciphertexts and needs relinearisation keys: add "
                f"{Path(self.source.directory) / self.source.relinkey_filename} "
                "(data owner: write_public_keys)"
            )

    def require_galois_keys(self, operation: str) -> None:
        if not self.has_galois_keys:
            name = self.source.rotatekey_filename or "rotatekey"
            raise MissingKeys(
                f"{operation} rotates ciphertexts and needs Galois keys: add "
                f"{Path(self.source.directory) / name} (data owner: write_public_keys(..., galois=True))"
            )


# ----------------------------------------------------------------------------- any process
def fingerprint(source: KeySource) -> str:
    """BLAKE2b over the names and contents of the public files present (absent ones count as absent)."""
    digest = hashlib.blake2b(digest_size=20)
    directory = Path(source.directory)
    for name in source.public_files():
        path = directory / name
        digest.update(name.encode() + b"\0")
        if not path.is_file():
            digest.update(b"-\0")
            continue
        digest.update(b"+\0")
        with path.open("rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Slot:
    """One key of ``TenSEALPublicProto`` (field number inside the context's public part)."""

    field: int
    what: str
    seal_class: str
    producer: str


_PUBLIC_KEY = _Slot(1, "the public key", "PublicKey", "context.public_key().data.save(path)")
_RELIN_KEYS = _Slot(4, "the relinearisation keys", "RelinKeys", "context.relin_keys().data.save(path)")
_GALOIS_KEYS = _Slot(5, "the Galois keys", "GaloisKeys", "context.galois_keys().data.save(path)")
_SLOTS = (_PUBLIC_KEY, _RELIN_KEYS, _GALOIS_KEYS)
_CTX_PARAMS, _CTX_PUBLIC = 1, 2  # TenSEALContextProto fields (tenseal/proto/tensealcontext.proto)
_PUBLIC_CONTEXT_CALL = "context.serialize(save_secret_key=False)"


@dataclass(frozen=True)
class _Part:
    """A key to put into the context, and where it came from (for the error message)."""

    slot: _Slot
    payload: bytes
    path: Path
    origin: str
    params: bytes | None = None  # encryption parameters of the context it was taken from, if any


@dataclass(frozen=True)
class _Frame:
    """``ctx`` without its keys: the fields the keys are put back into."""

    path: Path
    params: bytes
    head: bytes  # the encoded fields before the public part
    public_rest: bytes  # the public part's non-key fields (flags, scale)
    tail: bytes  # the encoded fields after the public part

    def assemble(self, parts: Iterable[_Part]) -> bytes:
        from core.crypto.ckks import _len_field

        ordered = sorted(parts, key=lambda part: part.slot.field)
        keys = b"".join(_len_field(part.slot.field, part.payload) for part in ordered)
        return self.head + _len_field(_CTX_PUBLIC, self.public_rest + keys) + self.tail


def _expected(slot: _Slot, name: str) -> str:
    return (
        f"expected {name} to hold {slot.what}: the raw SEAL {slot.seal_class} (TenSEAL: {slot.producer}) "
        f"or a public TenSEAL context that carries it ({_PUBLIC_CONTEXT_CALL})"
    )


def _split(data: bytes, path: Path) -> tuple[_Frame, dict[int, bytes]]:
    """A TenSEAL context's frame and embedded keys, checked structurally before TenSEAL parses it.

    Raises ``SecretKeyPresent`` for a context with a private part and ``MalformedMaterial`` (with the
    reason) for anything that is not a public TenSEAL context, e.g. a raw SEAL key: those start with
    SEAL's header (magic 0xA15E, first byte 0x5E, an invalid protobuf wire type), so they never parse.
    """
    from core.crypto import ckks
    from core.crypto.ckks import _check_public_material, _fields

    def payload(field: ckks._Field) -> bytes:
        if not isinstance(field.payload, memoryview):
            raise ckks.MalformedMaterial(f"not a TenSEAL context: field {field.number} is not a message")
        return bytes(field.payload)

    top = _check_public_material(data)
    head = bytearray()
    tail = bytearray()
    params = b""
    public_rest = bytearray()
    keys: dict[int, bytes] = {}
    seen_public = False
    for f in top:
        if f.number == _CTX_PUBLIC:
            seen_public = True
            for g in _fields(payload(f)):
                if g.number in (s.field for s in _SLOTS):
                    keys[g.number] = payload(g)
                else:
                    public_rest += g.raw
            continue
        if f.number == _CTX_PARAMS:
            params = payload(f)
        (tail if seen_public else head).extend(f.raw)
    return _Frame(path, params, bytes(head), bytes(public_rest), bytes(tail)), keys


def _key_part(path: Path, slot: _Slot) -> _Part:
    """Read a key file holding either the raw SEAL key or a whole public context carrying it."""
    from core.crypto import ckks

    data = path.read_bytes()
    try:
        frame, keys = _split(data, path)
    except ckks.SecretKeyPresent:
        raise MissingKeys(
            f"refusing the CKKS key material: {path} holds a TenSEAL context with a secret key; "
            f"{_expected(slot, path.name)}"
        ) from None
    except ckks.MalformedMaterial:  # not a context: the raw key, which TenSEAL checks when it loads it
        return _Part(slot, data, path, f"{path} (read as a raw SEAL {slot.seal_class})")
    if slot.field not in keys:
        raise MissingKeys(
            f"CKKS public key material incomplete: {path} holds a TenSEAL context without {slot.what}; "
            f"{_expected(slot, path.name)}"
        )
    return _Part(slot, keys[slot.field], path, f"{path} (read as a TenSEAL context)", frame.params)


def _parse(data: bytes) -> ts.Context:
    import tenseal as ts

    return ts.context_from(data)


def _diagnose(frame: _Frame, parts: list[_Part], error: Exception) -> MissingKeys:
    """The combined context did not load: find the file to blame by loading ``ctx`` with one key at a time.

    Runs only on failure, so the usual load parses (possibly hundreds of MB of Galois keys) once.
    """
    try:
        _parse(frame.assemble([]))
    except Exception as exc:  # TenSEAL raises RuntimeError/ValueError/TypeError on bad streams
        return MissingKeys(
            f"unusable CKKS key material: {frame.path}: TenSEAL cannot load its encryption parameters "
            f"({exc}); expected a TenSEAL context serialized without its secret key ({_PUBLIC_CONTEXT_CALL})"
        )
    for part in parts:
        try:
            _parse(frame.assemble([part]))
        except Exception as exc:  # as above
            if part.path == frame.path:
                expected = f"expected a public TenSEAL context whose embedded {part.slot.what} load"
            else:
                expected = _expected(part.slot, part.path.name)
            reason = (
                f"{part.slot.what} in {part.origin} cannot be loaded with the encryption parameters in "
                f"{frame.path}"
            )
            if part.params is not None and part.params != frame.params:
                reason = f"{part.origin} has other encryption parameters than {frame.path}"
            return MissingKeys(f"unusable CKKS key material: {reason} (TenSEAL: {exc}); {expected}")
    origins = ", ".join(part.origin for part in parts)
    return MissingKeys(f"unusable CKKS key material: TenSEAL cannot combine {origins} ({error})")


def _read_public_context(source: KeySource) -> ts.Context:
    """Assemble the public context from ``source`` (layout: docs/ckks-keys.md); refuse secret material."""
    from core.crypto import ckks

    directory = Path(source.directory)
    secret = directory / source.secret_key_filename
    if source.secret_key_filename and secret.exists():  # never opened: its presence is enough
        raise MissingKeys(
            f"refusing the CKKS key material in KEYS_PATH={directory}: {secret} exists, and the worker's "
            "key directory must not contain a secret key"
        )
    ctx_path = directory / source.ctx_filename
    if not ctx_path.is_file():
        raise MissingKeys(
            f"CKKS public key material incomplete in KEYS_PATH={directory}: CKKS context file {ctx_path} "
            f"not found (expected a TenSEAL context serialized without its secret key)"
        )
    try:
        frame, embedded = _split(ctx_path.read_bytes(), ctx_path)
    except ckks.SecretKeyPresent:
        raise MissingKeys(
            f"refusing the CKKS key material in KEYS_PATH={directory}: {ctx_path} is a TenSEAL context "
            f"that holds a secret key; expected one serialized without it ({_PUBLIC_CONTEXT_CALL})"
        ) from None
    except ckks.MalformedMaterial as error:
        raise MissingKeys(
            f"unusable CKKS key material in KEYS_PATH={directory}: {ctx_path}: {error}; expected a "
            f"TenSEAL context serialized without its secret key ({_PUBLIC_CONTEXT_CALL})"
        ) from None
    wanted = [(_PUBLIC_KEY, source.pubkey_filename), (_RELIN_KEYS, source.relinkey_filename)]
    if source.rotatekey_filename:  # Galois keys are big: left out, even from ctx, unless asked for
        wanted.append((_GALOIS_KEYS, source.rotatekey_filename))
    parts: list[_Part] = []
    for slot, name in wanted:
        path = directory / name
        if path.is_file():
            parts.append(_key_part(path, slot))
        elif slot.field in embedded:
            parts.append(_Part(slot, embedded[slot.field], ctx_path, f"{ctx_path} (embedded)", frame.params))
    if not any(part.slot is _PUBLIC_KEY for part in parts):
        raise MissingKeys(
            f"CKKS public key material incomplete in KEYS_PATH={directory}: no public key, neither in "
            f"{directory / source.pubkey_filename} nor inside {ctx_path}; "
            f"{_expected(_PUBLIC_KEY, source.pubkey_filename)}"
        )
    try:
        context = _parse(frame.assemble(parts))
    except Exception as exc:  # TenSEAL raises RuntimeError/ValueError/TypeError on bad streams
        raise _diagnose(frame, parts, exc) from None
    return context


def load_context(source: KeySource) -> tuple[ts.Context, str]:
    """Read the public context from ``source`` and return it with its :func:`fingerprint`.

    Every problem with the material is a :class:`MissingKeys` naming the file, what it should hold
    and how to produce it (layout: docs/ckks-keys.md).
    """
    directory = Path(source.directory)
    if not directory.is_dir():
        raise MissingKeys(
            f"CKKS operations need the public key material in KEYS_PATH={directory}, which does not exist "
            f"(expected files {source.ctx_filename}, {source.pubkey_filename}, {source.relinkey_filename})"
        )
    try:
        digest = fingerprint(source)
        context = _read_public_context(source)
    except OSError as error:
        raise MissingKeys(f"cannot read the CKKS key material in KEYS_PATH={directory}: {error}") from None
    if context.is_private():  # the structural checks exclude it; the invariant is the point
        raise MissingKeys(f"refusing the CKKS key material in KEYS_PATH={directory}: it holds a secret key")
    return context, digest


# ----------------------------------------------------------------------------- pool processes
_CACHE_SIZE = 2
_contexts: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


def _remember(digest: str, context: Any) -> None:
    with _lock:
        _contexts[digest] = context
        _contexts.move_to_end(digest)
        while len(_contexts) > _CACHE_SIZE:
            _contexts.popitem(last=False)


def _summary(source: KeySource, context: ts.Context, digest: str) -> PublicKeys:
    from core.crypto import ckks

    slots = ckks.slot_count(context)
    return PublicKeys(
        source=source,
        digest=digest,
        poly_modulus_degree=2 * slots,
        slots=slots,
        has_relin_keys=bool(context.has_relin_keys()),
        has_galois_keys=bool(context.has_galois_keys()),
    )


def inspect_keys(source: KeySource) -> PublicKeys:
    """Pool function: load and validate the material, keep the context in this process, summarise it."""
    context, digest = load_context(source)
    _remember(digest, context)
    return _summary(source, context, digest)


def context_for(keys: PublicKeys) -> ts.Context:
    """Pool side: this process's TenSEAL context for ``keys`` (loaded from KEYS_PATH once per process).

    Raises :class:`KeysChanged` when the files no longer match what the worker validated.
    """
    with _lock:
        context = _contexts.get(keys.digest)
        if context is not None:
            _contexts.move_to_end(keys.digest)
            return context
    context, digest = load_context(keys.source)
    if digest != keys.digest:
        raise KeysChanged(
            f"the CKKS key files in KEYS_PATH={keys.source.directory} changed after the worker loaded "
            "them; they will be reloaded by the next command (send it again)"
        )
    _remember(digest, context)
    return context


# ----------------------------------------------------------------------------- event loop
def _resource_name(galois: bool) -> str:
    return RESOURCE_GALOIS if galois else RESOURCE_PUBLIC


async def public_keys(ctx: JobContext, *, galois: bool = False) -> PublicKeys:
    """The worker's public key summary, loaded on first use (per worker, under a lock).

    A failure (``MissingKeys``) is not remembered: the next CKKS command tries again.
    """
    source = KeySource.from_settings(ctx.settings, galois=galois)

    async def loader() -> PublicKeys:
        return await ctx.compute(inspect_keys, source)

    keys: PublicKeys = await ctx.resource(_resource_name(galois), loader)
    if keys.source != source:  # settings are fixed per worker; guard against a stale resource anyway
        forget(ctx, galois=galois)
        keys = await ctx.resource(_resource_name(galois), loader)
    return keys


def forget(ctx: JobContext, *, galois: bool = False) -> None:
    """Drop the cached summary so the next CKKS command reloads the key files."""
    ctx.resources.pop(_resource_name(galois), None)


async def compute_with_keys(ctx: JobContext, keys: PublicKeys, fn: Callable[..., T], /, *args: Any) -> T:
    """``ctx.compute(fn, keys, *args)``; on :class:`KeysChanged` forget the summary and re-raise."""
    try:
        return await ctx.compute(fn, keys, *args)
    except KeysChanged:
        forget(ctx, galois=keys.source.rotatekey_filename is not None)
        raise
