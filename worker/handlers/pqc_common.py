"""What every CKKS ("PQC") handler shares: ciphertext-list checks, writes, key material, and running
parts of a step concurrently in the compute pool.

Why apart: the handlers of ``worker/handlers/pqc_skmeans.py``, ``pqc_sknn.py``, ``pplr.py`` and
``pqc_kmeans.py`` all read and write storage byte lists (msgpack arrays of serialized TenSEAL vectors,
never pickle) under the same rules: loop bounds always come from the stored objects, never from the
caller's declared shapes, which are only checked (422 on disagreement); result lists are split into
``min(num_chunks, items)`` chunks (the original's splitter hung when chunks > items:
docs/original-rory.md); a step split over the pool stops all its parts when one fails.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from worker.errors import CorruptObject, ValidationFailed
from worker.handlers.common import Write
from worker.keys import PublicKeys, compute_with_keys, public_keys
from worker.runtime.context import JobContext

__all__ = [
    "CIPHERTEXT_DTYPE",
    "MIN_PART_WORK",
    "check_declared_rows",
    "check_grid",
    "check_rows",
    "ciphertext_info",
    "ciphertext_write",
    "elapsed",
    "fan_out",
    "infos",
    "lists",
    "public_material",
    "spans",
    "stored_shape",
    "together",
]

#: Minimum ciphertext operations per pool process when a step is split over several (see :func:`spans`).
MIN_PART_WORK = 64
CIPHERTEXT_DTYPE = "ckks"


def elapsed(started: float) -> float:
    """Seconds since ``started`` (``time.perf_counter``): the timings every result reports."""
    return time.perf_counter() - started


def stored_shape(info: Any) -> tuple[int, ...] | None:
    """The logical shape a ciphertext list was stored with (None when it was stored without one)."""
    return None if info.full_shape is None else tuple(int(d) for d in info.full_shape)


def ciphertext_info(info: Any, *, ndim: int | None = None, what: str = "") -> tuple[int, ...] | None:
    """422 unless the object is a ciphertext list (with a ``ndim``-D logical shape when required)."""
    if info.kind != "bytes_list":
        raise ValidationFailed(
            f"{info.ball_id}: expected a list of CKKS ciphertexts{what}, storage holds a {info.kind}"
        )
    shape = stored_shape(info)
    if ndim is not None and (shape is None or len(shape) != ndim):
        raise ValidationFailed(
            f"{info.ball_id}: a {ndim}-D shape is required{what} (store the ciphertext list with "
            f"shape=[...]), storage holds {list(shape) if shape is not None else 'no shape'}"
        )
    return shape


def check_rows(key: str, items: Sequence[bytes], shape: tuple[int, ...] | None) -> int:
    """A list of row ciphertexts; a stored logical shape ``[n]`` or ``[n, a]`` must agree with it."""
    if shape is not None and shape and shape[0] != len(items):
        raise CorruptObject(f"{key}: tagged with shape {list(shape)} but holds {len(items)} ciphertexts")
    if not items:
        raise ValidationFailed(f"{key}: the ciphertext list is empty")
    return len(items)


def check_grid(key: str, items: Sequence[bytes], shape: tuple[int, ...]) -> None:
    """A column-packed list must hold exactly the ciphertexts its stored grid shape says: the handlers
    index it by that shape, so a disagreement is a corrupt object, not a short loop."""
    if math.prod(shape) != len(items):
        raise CorruptObject(f"{key}: tagged with shape {list(shape)} but holds {len(items)} ciphertexts")
    if not items:
        raise ValidationFailed(f"{key}: the ciphertext list is empty")


def check_declared_rows(key: str, declared: Sequence[int] | None, n: int | None) -> None:
    """A declared shape's first entry is the number of row ciphertexts (the rest is informative)."""
    if declared is not None and n is not None and int(declared[0]) != n:
        raise ValidationFailed(f"{key}: declared shape {list(declared)} but storage holds {n} ciphertexts")


def ciphertext_write(
    key: str, items: list[bytes], chunks: int, shape: Sequence[int], tags: dict[str, str] | None = None
) -> Write:
    """A ciphertext-list write in at most one chunk per item (more chunks than items hung the original)."""
    chunks = max(1, min(chunks, len(items)))
    return Write(key, items, "bytes", num_chunks=chunks, shape=list(shape), tags=tags)


async def together(*calls: Awaitable[Any]) -> list[Any]:
    """Await ``calls`` concurrently, results in order; the first failure cancels the others.

    Unlike ``asyncio.gather``, nothing is left running when this returns or raises: a part still in a
    compute slot when a sibling fails is cancelled (the pool kills and restarts that slot, so it is
    free again) and awaited, so a failed command does not keep slots busy after its capacity is
    released. The first error is raised as itself (not as an ExceptionGroup), like gather does.
    """
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks.extend(group.create_task(_awaited(call)) for call in calls)
    except BaseExceptionGroup as grouped:
        raise _first_error(grouped) from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[Any]) -> Any:
    """A coroutine around any awaitable: ``TaskGroup.create_task`` takes coroutines only."""
    return await call


def _first_error(grouped: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of a (nested) exception group: what the failed part itself raised."""
    error: BaseException = grouped
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def infos(ctx: JobContext, *names: str) -> list[Any]:
    """The storage info of each name, fetched concurrently (checks read only these, never the data)."""
    return await together(*(ctx.store.info(name) for name in names))


async def lists(ctx: JobContext, *names: str) -> list[list[bytes]]:
    """The ciphertext lists stored under ``names``, downloaded concurrently, in order."""
    return await together(*(ctx.store.get_bytes_list(name) for name in names))


async def public_material(
    ctx: JobContext, operation: str, *, relin: bool = False, galois: bool = False
) -> PublicKeys:
    """The worker's public key material for ``operation``, refusing it (422) without the keys it needs:
    a missing key is named before any ciphertext is read, not deep inside TenSEAL."""
    material = await public_keys(ctx, galois=galois)
    if relin:
        material.require_relin_keys(operation)
    if galois:
        material.require_galois_keys(operation)
    return material


def spans(units: int, work_per_unit: int, capacity: int) -> list[tuple[int, int]]:
    """Split ``units`` independent pieces of work over at most ``capacity`` pool processes, never
    giving a process less than :data:`MIN_PART_WORK` ciphertext operations (a split costs a pickle
    round trip and, the first time, a context load in that process)."""
    parts = max(1, min(capacity, units, (units * max(1, work_per_unit)) // MIN_PART_WORK))
    bounds = [units * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


async def fan_out(
    ctx: JobContext, material: PublicKeys, fn: Callable[..., Any], ranges: list[tuple[int, int]],
    args: Callable[[int, int], tuple[Any, ...]],
) -> list[Any]:
    """Run ``fn(keys, *args(lo, hi))`` for every range concurrently in the pool; results in order.

    When one part fails the others are cancelled at once (their slots killed and restarted) before
    the error propagates: see :func:`together`.
    """
    return await together(*(compute_with_keys(ctx, material, fn, *args(lo, hi)) for lo, hi in ranges))
