"""Helpers shared by the operation handlers: validation against storage, result sizing, safe writes.

Handlers are thin: validate the command against what storage says (``info`` only, never a download
just to learn a shape), fetch, compute in the process pool, write, reply. The pieces every handler
repeats live here so their semantics are the same everywhere:

* :func:`check_shape`, :func:`check_k`, :func:`check_numeric`, :func:`check_dtype`: bad commands are
  rejected *before* anything is written (400 for impossible parameters, 422 when storage disagrees);
* :func:`labels_payload` / :func:`plan_labels` (:func:`plan_labels_off_loop` from the event loop):
  a label vector travels inline unless it would take a large part of a message, in which case it is
  stored and its key returned; large vectors are converted and copied in a worker thread;
* :func:`put_all`: the write discipline (see its docstring for the exact guarantee); every object it
  writes carries :data:`WRITER_TAG` (the operation) and :data:`WRITE_TOKEN_TAG` (this write);
* :func:`check_owned_outputs`: a caller-named output may only replace what the same operation wrote;
* :func:`with_claims_checked`: every Rory handler first checks the command's legacy storage claims.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from worker.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ValidationFailed
from worker.runtime.context import JobContext
from worker.runtime.registry import Handler, Operation, Result
from worker.storage.base import BallInfo

__all__ = [
    "WRITER_TAG",
    "WRITE_TOKEN_TAG",
    "Write",
    "check_allocation",
    "check_dtype",
    "check_integral",
    "check_k",
    "check_numeric",
    "check_owned_outputs",
    "check_shape",
    "check_storage_claims",
    "fetch_arrays",
    "labels_payload",
    "plan_labels",
    "plan_labels_off_loop",
    "put_all",
    "result_chunks",
    "shape_of",
    "with_claims_checked",
]

log = logging.getLogger(__name__)

# A label vector larger than this fraction of MAX_MESSAGE_BYTES is stored instead of sent inline:
# the rest of the reply, the envelope and JSON's larger encoding must still fit in one message.
LABELS_INLINE_FRACTION = 4
#: Label vectors of more than this many bytes as int64 (1 MiB: 131,072 labels, whatever dtype they
#: arrive in) are planned in a worker thread (:func:`plan_labels_off_loop`); smaller ones on the
#: event loop, where they cost well under a millisecond.
LABELS_OFF_LOOP_BYTES = 1 << 20

#: Tag on every object the worker writes: the operation (``ml.lr.train``...) that wrote it. Objects
#: the data owner uploads lack it, so :func:`check_owned_outputs` never lets a command replace them.
WRITER_TAG = "rory_writer"
#: Tag on every object one :func:`put_all` call writes: a random token, so its cleanup deletes only
#: objects that this call wrote (not the same key committed meanwhile by another job).
WRITE_TOKEN_TAG = "rory_write"


# ------------------------------------------------------------------ sizing
def result_chunks(ctx: JobContext, params: BaseModel) -> int:
    """Chunks for result objects: the command's ``num_chunks`` or the NUM_CHUNKS setting."""
    requested = getattr(params, "num_chunks", None)
    return int(requested) if requested else int(ctx.settings.num_chunks)


def _labels_array(labels: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array)
    return array.astype(np.int64, copy=False).ravel()


_POWERS_OF_TEN = np.array([10**i for i in range(1, 20)], dtype=np.uint64)


def _encoded_size(values: np.ndarray) -> int:
    """Bytes of the larger of the two wire encodings (JSON text is the larger one for ints).

    Counted, not encoded: ``len(json.dumps(list, separators=(",", ":")))`` is the digits of every
    value, its minus signs, the commas and the brackets (encoding 100k labels cost ~6 ms on the loop).
    """
    array = np.asarray(values, dtype=np.int64).ravel()
    n = int(array.size)
    if n == 0:
        return 5  # max(len("[]"), the msgpack bound 9 * 0 + 5)
    negative = array < 0
    # |v| without overflowing at -2**63: -(v + 1) fits in int64, then add the 1 back as uint64.
    magnitude = np.where(negative, -(array + 1), array).astype(np.uint64) + negative.astype(np.uint64)
    digits = n + int(np.searchsorted(_POWERS_OF_TEN, magnitude, side="right").sum())
    json_size = digits + int(negative.sum()) + (n - 1) + 2
    return max(json_size, 9 * n + 5)


def _inline_limit(ctx: JobContext) -> int:
    return int(ctx.settings.max_message_bytes) // LABELS_INLINE_FRACTION


@dataclass(frozen=True)
class Write:
    """One object a handler wants stored.

    ``kind``: ``ndarray`` (chunked along axis 0, ``num_chunks``), ``blob`` (single object, e.g. the LR
    bias) or ``bytes_list`` (alias ``bytes``: a list of serialized ciphertexts, ``num_chunks`` and
    optional ``shape``).
    """

    key: str
    value: np.ndarray | Sequence[bytes]
    kind: Literal["ndarray", "blob", "bytes_list", "bytes"] = "ndarray"
    num_chunks: int = 1
    shape: Sequence[int] | None = None
    tags: dict[str, str] | None = field(default=None)


def _plan_labels(labels: np.ndarray, key: str, limit: int) -> tuple[dict[str, Any], Write | None]:
    """:func:`plan_labels` without the context: the decision and the (private int64) copy.

    Decided without counting digits when the vector cannot fit: every encoding takes at least the
    msgpack bound ``9 * n + 5`` (:func:`_encoded_size` returns the larger of the two), so a vector
    over ``limit`` by that bound is stored whatever its values (counting the digits of 1,000,000
    labels cost ~10-20 ms; worker/handlers/secure_kmeans.py step 1 did it every round).
    """
    array = _labels_array(labels)
    if 9 * int(array.size) + 5 <= limit and _encoded_size(array) <= limit:
        return {"label_vector": array.tolist()}, None  # tolist() of int64 gives Python ints
    return {"label_vector_id": key}, Write(key, np.array(array, dtype=np.int64), "ndarray", num_chunks=1)


def plan_labels(ctx: JobContext, labels: np.ndarray, key: str) -> tuple[dict[str, Any], Write | None]:
    """Decide how a label vector travels; return the payload and the write it needs (if stored).

    Use this instead of :func:`labels_payload` when the handler also writes state, so the label
    object joins the same :func:`put_all` (and is not left behind if the step fails). Runs on the
    caller's thread: from the event loop prefer :func:`plan_labels_off_loop`.
    """
    return _plan_labels(labels, key, _inline_limit(ctx))


async def plan_labels_off_loop(
    ctx: JobContext, labels: np.ndarray, key: str
) -> tuple[dict[str, Any], Write | None]:
    """:func:`plan_labels` in a worker thread when the vector holds more than
    :data:`LABELS_OFF_LOOP_BYTES` (the conversion and the private copy of a large vector would hold
    the event loop, and health with it), else right here (a thread hop costs more than the work)."""
    limit = _inline_limit(ctx)
    if np.asarray(labels).size * 8 > LABELS_OFF_LOOP_BYTES:  # the work is an int64 copy, by count
        return await asyncio.to_thread(_plan_labels, labels, key, limit)
    return _plan_labels(labels, key, limit)


async def labels_payload(ctx: JobContext, labels: np.ndarray, key: str) -> dict[str, Any]:
    """``{"label_vector": [...]}``, or ``{"label_vector_id": key}`` after storing the labels there
    (an int64 ndarray, one chunk) when the vector would exceed ~1/4 of MAX_MESSAGE_BYTES."""
    payload, write = await plan_labels_off_loop(ctx, labels, key)
    if write is not None:
        await put_all(ctx, [write])
    return payload


# ------------------------------------------------------------------ validation
async def check_shape(
    ctx: JobContext, ball_id: str, declared: Sequence[int] | None, *, allow_prefix: bool = False
) -> BallInfo:
    """Return the stored object's BallInfo; 422 when a declared shape disagrees with it.

    ``allow_prefix`` accepts a declared shape that is a leading prefix of the stored one (Rory's newest
    client declares a Liu matrix as ``(r, a)`` while storage holds ``(r, a, m)``). A missing object
    raises the store's NotFound (404).
    """
    info = await ctx.store.info(ball_id)
    if declared is not None:
        stored = [int(d) for d in info.full_shape]
        wanted = [int(d) for d in declared]
        matches = stored == wanted or (
            allow_prefix and len(wanted) < len(stored) and stored[: len(wanted)] == wanted
        )
        if not matches:
            raise ValidationFailed(f"{ball_id}: declared shape {wanted} but storage holds {stored}")
    return info


def check_dtype(info: BallInfo, declared: str | None) -> None:
    """422 when a declared dtype disagrees with the stored object's dtype."""
    if declared is not None and str(_dtype_of(info, info.ball_id)) != str(np.dtype(declared)):
        raise ValidationFailed(
            f"{info.ball_id}: declared dtype {declared} but storage holds {info.full_dtype}"
        )


async def check_storage_claims(ctx: JobContext, params: BaseModel) -> None:
    """Compare what a command's legacy fields declare (``Params.storage_claims``, schemas/operations.py)
    with storage: 422 naming the field, the declared and the stored value when they disagree, 404 when
    the object is missing. worker/runtime/registry.py runs it before the handler, so a command that
    fails it has downloaded nothing and written nothing."""
    claims = getattr(params, "storage_claims", None)
    for claim in claims() if claims is not None else ():
        field = claim.shape_field
        try:
            info = await check_shape(ctx, claim.key, claim.shape, allow_prefix=claim.allow_prefix)
            field = claim.dtype_field
            check_dtype(info, claim.dtype)
        except ValidationFailed as error:
            if type(error) is not ValidationFailed:  # e.g. CorruptObject from storage keeps its type
                raise
            raise ValidationFailed(f"params.{field}: {error.message}") from None


def check_allocation(ctx: JobContext, shape: Sequence[int], itemsize: int, what: str) -> None:
    """400 PAYLOAD_TOO_LARGE when an array a handler is about to *derive* (e.g. an n_records x n_model
    distance matrix from two inputs that each fit) would exceed MAX_OBJECT_BYTES.

    Storage reads are budgeted by the stores themselves; this is for products of sizes. ``shape``
    must come from storage (BallInfo/ndarrays), never from command params, which are only compared.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise BadRequest(f"{what}: negative dimension in {dims}")
    size = math.prod(dims) * int(itemsize)
    limit = int(ctx.settings.max_object_bytes)
    if size > limit:
        raise PayloadTooLarge(
            f"{what}: {dims} x {itemsize} bytes = {size} bytes exceeds MAX_OBJECT_BYTES={limit}"
        )


def check_k(k: int, n: int) -> None:
    """400 when more clusters (or neighbours) are asked for than there are records."""
    if k > n:
        raise BadRequest(f"k={k} is larger than the number of records ({n})")


def _dtype_of(obj: np.ndarray | BallInfo, name: str) -> np.dtype:
    if hasattr(obj, "dtype"):
        return np.dtype(obj.dtype)
    if getattr(obj, "kind", "ndarray") == "bytes_list" or obj.full_dtype is None:
        raise ValidationFailed(f"{name}: storage holds a list of serialized objects, not an ndarray")
    try:
        return np.dtype(obj.full_dtype)
    except TypeError:
        raise ValidationFailed(f"{name}: unknown dtype {obj.full_dtype!r} in storage") from None


def check_numeric(obj: np.ndarray | BallInfo, name: str, *, ndim: int | Sequence[int] | None = None) -> None:
    """422 unless ``obj`` (an ndarray or a BallInfo) holds real numbers (ints or floats) of ``ndim``."""
    dtype = _dtype_of(obj, name)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValidationFailed(f"{name}: expected a real numeric array, storage holds dtype {dtype}")
    if ndim is not None:
        shape = obj.shape if hasattr(obj, "shape") else tuple(obj.full_shape)
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) not in allowed:
            dims = " or ".join(map(str, allowed))
            raise ValidationFailed(f"{name}: expected {dims}-D, got shape {list(shape)}")


def check_integral(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as int64; 422 when it is not numeric or holds non-integral values."""
    check_numeric(array, name)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64, copy=False)
    if not np.all(np.isfinite(array)) or not np.array_equal(array, np.rint(array)):
        raise ValidationFailed(f"{name}: expected integer values (dtype {array.dtype})")
    return array.astype(np.int64)


# ------------------------------------------------------------------ reads
async def fetch_arrays(ctx: JobContext, *keys: str) -> list[np.ndarray]:
    """Download several ndarrays concurrently (the store's errors propagate: 404, 422, 503)."""
    return list(await asyncio.gather(*(ctx.store.get_ndarray(key) for key in keys)))


def shape_of(info: BallInfo) -> tuple[int, ...]:
    """The stored logical shape (empty when the object has none)."""
    return tuple(int(d) for d in info.full_shape or ())


# ------------------------------------------------------------------ ownership
async def _info_or_none(ctx: JobContext, key: str) -> BallInfo | None:
    try:
        return await ctx.store.info(key)
    except NotFound:
        return None


async def check_owned_outputs(ctx: JobContext, *names: str) -> None:
    """409 CONFLICT unless every output the *command* named is absent or was written by this operation.

    For outputs whose key the caller chooses freely (``weights_id``, ``bias_id``): without this, naming
    another dataset there overwrites it. Keys the worker derives from the inputs (``<P>udm``,
    ``<test>predictions``...; ``schemas.keys``) are Rory's protocol and need no such check. Re-running
    the same operation over its own outputs (a retry, the next epoch) stays allowed. Call it before
    any work: it reads metadata only.
    """
    infos = await asyncio.gather(*(_info_or_none(ctx, name) for name in names))
    op = str(ctx.op)
    for name, info in zip(names, infos, strict=True):
        if info is None:
            continue
        writer = info.tags.get(WRITER_TAG)
        if writer != op:
            owner = f"operation {writer}" if writer else "the data owner (or an older worker)"
            raise Conflict(
                f"{name} already exists and was written by {owner}; {op} may only replace its own "
                "outputs: choose another id or delete the object first"
            )


# ------------------------------------------------------------------ writes
async def _write(ctx: JobContext, write: Write, stamp: dict[str, str]) -> None:
    store = ctx.store
    tags = {**(write.tags or {}), **stamp}
    if write.kind == "ndarray":
        await store.put_ndarray(write.key, write.value, num_chunks=write.num_chunks, tags=tags)
    elif write.kind == "blob":
        await store.put_blob(write.key, write.value, tags=tags)
    elif write.kind in ("bytes_list", "bytes"):
        shape = list(write.shape) if write.shape is not None else None
        await store.put_bytes_list(
            write.key, write.value, num_chunks=write.num_chunks, shape=shape, tags=tags
        )
    else:  # pragma: no cover - Literal guards this
        raise ValueError(f"unknown write kind {write.kind!r}")


async def _discard(ctx: JobContext, keys: Sequence[str], token: str) -> None:
    """Best-effort delete of the objects this ``put_all`` call wrote; failures are logged, not raised.

    Only a visible object carrying this call's token is deleted: the key may meanwhile hold another
    job's commit, which is not ours to remove. A write that failed half-way leaves nothing visible
    (the stores remove their own partial chunks: ``worker/storage/local.py`` and ``mictlanx.py``
    ``_put``). Between the check and the delete another job could still commit the key (storage has
    no conditional delete); the window is one metadata read long.
    """
    for key in keys:
        try:
            info = await _info_or_none(ctx, key)
            if info is None:
                continue
            if info.tags.get(WRITE_TOKEN_TAG) != token:
                log.warning("not removing %s after a failed step: another writer replaced it", key)
                continue
            await ctx.store.delete(key)
        except Exception as error:  # cleanup must not mask the original failure
            log.warning("could not remove %s after a failed step: %s", key, error)


async def put_all(ctx: JobContext, writes: Sequence[Write]) -> None:
    """Store ``writes`` so that a failed step does not leave a mix of old and new state behind.

    Procedure:

    1. ask storage which keys already exist;
    2. write every object whose key is NEW (concurrently); if any of them fails (or the step is
       cancelled), delete every new key, partial ones included, and re-raise: storage is exactly as
       before the step;
    3. then overwrite the EXISTING keys one at a time, in the order given; if one fails, delete the
       new objects of step 2 and re-raise. On a store whose overwrite is atomic
       (``ObjectStore.atomic_overwrite``: the local backend) all but the last go together, then the
       last: no overwrite there can lose a ball, so only the last one's place matters.

    Guarantee, stated honestly: a failed ``put_all`` never leaves a *new* object behind, and never
    touches an existing object before every new object is safely stored. Existing objects are not
    versioned (MictlanX has no rename or compare-and-swap), so if overwrite number i fails, the
    overwrites before i stay applied and the one that failed may be gone or partial (the store's
    own delete-then-put: on MictlanX the old object is gone, on the local backend it is intact because
    its writes commit atomically). Handlers therefore list superseding writes so that the step's
    own inputs come LAST (SKMeans step 1 writes ``centi`` and the shift matrix before ``centj``,
    which it reads): until the last write lands, re-running the step reads the same inputs and
    rewrites the same outputs, so a retry converges to the state of a successful run. Cleanup is
    best effort: if storage also refuses the deletes, new objects can remain (logged); it removes
    only objects that carry this call's :data:`WRITE_TOKEN_TAG` (see :func:`_discard`).
    """
    if not writes:
        return
    keys = [w.key for w in writes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"put_all: duplicate keys in one step: {keys}")
    existing = await asyncio.gather(*(ctx.store.exists(key) for key in keys))
    fresh = [w for w, exists in zip(writes, existing, strict=True) if not exists]
    stale = [w for w, exists in zip(writes, existing, strict=True) if exists]

    token = secrets.token_hex(12)
    stamp = {WRITER_TAG: str(ctx.op), WRITE_TOKEN_TAG: token}
    fresh_keys = [w.key for w in fresh]
    try:
        await _all_or_first_error([_write(ctx, w, stamp) for w in fresh])
    except BaseException:  # failed, or cancelled (deadline): the new objects may be partly written
        await _discard(ctx, fresh_keys, token)
        raise

    # On a store whose overwrite is atomic no ball is ever lost half-way, so only the last write's
    # place matters (the step's own input comes last): the ones before it go together.
    together = stale[:-1] if ctx.store.atomic_overwrite else []
    try:
        await _all_or_first_error([_write(ctx, write, stamp) for write in together])
        for write in stale[len(together) :]:
            await _write(ctx, write, stamp)
    except BaseException:
        await _discard(ctx, fresh_keys, token)
        raise


async def _all_or_first_error(calls: Sequence[Awaitable[None]]) -> None:
    """Await every call (none is left running), then raise the first failure, if any."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        raise failures[0]


# ------------------------------------------------------------------ registration
def _claims_checked(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def checked(ctx: JobContext, params: BaseModel) -> Result:
        await check_storage_claims(ctx, params)
        return await handler(ctx, params)

    return checked


def with_claims_checked(operations: Iterable[Operation]) -> list[Operation]:
    """``operations`` whose handlers first run :func:`check_storage_claims`: a declared shape or dtype
    that disagrees with storage is a 422 before the handler reads or writes anything."""
    return [replace(operation, handler=_claims_checked(operation.handler)) for operation in operations]
