"""The worker's CKKS public key material: loaded lazily, once, only when a CKKS operation needs it.

Why this shape:

* The original V1 worker read ``ctx``, ``pubkey``, **``secretkey``** and ``relinkey`` from ``KEYS_PATH``
  on every PQC request, so "the cloud" could decrypt everything; the V2 worker refused to start
  without key files even for Liu-only work. Here a worker starts without keys, a non-CKKS operation
  never touches them, and the first CKKS operation loads them. Missing, malformed or secret-bearing
  material fails *that operation* with ``MissingKeys`` (422) and nothing else; the next CKKS command
  tries again, so an operator can add the files without restarting the worker.
* ``SECRET_KEY_FILENAME`` is never opened: its mere presence in ``KEYS_PATH`` refuses the directory
  (``core.crypto.ckks.read_public_context``), as does a ``ctx`` file that carries a private part
  (checked structurally before TenSEAL parses anything).
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
from collections.abc import Callable
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


def load_context(source: KeySource) -> tuple[ts.Context, str]:
    """Read the public context from ``source`` and return it with its :func:`fingerprint`.

    Every problem with the material is a :class:`MissingKeys` naming the file and the fix.
    """
    from core.crypto import ckks  # TenSEAL is imported only where a context is really built

    directory = Path(source.directory)
    if not directory.is_dir():
        raise MissingKeys(
            f"CKKS operations need the public key material in KEYS_PATH={directory}, which does not exist "
            f"(expected files {source.ctx_filename}, {source.pubkey_filename}, {source.relinkey_filename})"
        )
    try:
        digest = fingerprint(source)
        context = ckks.read_public_context(
            directory,
            source.ctx_filename,
            source.pubkey_filename,
            source.relinkey_filename,
            rotatekey_filename=source.rotatekey_filename,
            secret_key_filename=source.secret_key_filename,
        )
    except ckks.SecretKeyPresent as error:
        raise MissingKeys(f"refusing the CKKS key material in KEYS_PATH={directory}: {error}") from None
    except ckks.MissingKeyMaterial as error:
        raise MissingKeys(f"CKKS public key material incomplete in KEYS_PATH={directory}: {error}") from None
    except ckks.MalformedMaterial as error:
        raise MissingKeys(f"unusable CKKS key material in KEYS_PATH={directory}: {error}") from None
    except OSError as error:
        raise MissingKeys(f"cannot read the CKKS key material in KEYS_PATH={directory}: {error}") from None
    if context.is_private():  # read_public_context guarantees this; the invariant is the point
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
