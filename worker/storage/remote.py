"""What the two network backends (``mictlanx.py``, ``nats_objects.py``) share: reading and writing a
ball as N separately stored objects.

Neither MictlanX nor a JetStream object store can replace several objects at once, so both keep the
same discipline (docs/storage.md):

* **Writing**: every chunk carries its own SHA-256 and the write's ``full_checksum``; chunks
  ``1..n-1`` are stored first (at most ``max_workers`` at a time) and chunk 0, which carries
  ``num_chunks`` and is the one readers open first, last: it is the commit point, so until it lands
  readers see the previous ball (or none), never this one half written.
* **Reading**: chunk 0's metadata first, and a ball that cannot fit in ``MAX_OBJECT_BYTES`` is refused
  from it alone (:func:`~worker.storage.layout.check_first_chunk`) before the other ``n-1`` records
  are fetched; then the layout is validated and checked against the budget before the output is
  allocated, and the chunks are streamed straight into it.
* **Versions**: the etag of a ball is a hash of its chunks' sizes and SHA-256s (MictlanX falls back
  to the ``full_checksum`` for objects without per-chunk ones): the content names the version, so the
  read cache (``cache.py``) can key on it.

A backend supplies how one record is fetched (:meth:`RemoteStore._record`), how the chunks of a
layout are fetched (:meth:`RemoteStore._fill`) and how a read is kept consistent while writers
replace the ball (:meth:`RemoteStore._consistent`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence, Sized
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from worker.errors import NotFound
from worker.storage.base import Allocator, BallInfo, allocate_output
from worker.storage.codec import (
    BallPlan,
    ChunkMeta,
    ChunkPayload,
    Layout,
    check_budget,
    check_first_chunk,
    decode_bytes_list,
    num_chunks_of,
    off_loop,
    read_layout,
)
from worker.storage.names import check_ball_id, chunk_key
from worker.storage.planned import PlannedStore

T = TypeVar("T")
#: Smaller payloads are hashed on the event loop (cheaper than a thread hop).
HASH_INLINE_LIMIT = 1024 * 1024


def sha256_hex(views: Sequence[memoryview]) -> str:
    """SHA-256 of the views' bytes in order, as hex."""
    digest = hashlib.sha256()
    for view in views:
        digest.update(view)
    return digest.hexdigest()


def content_etag(chunks: Sequence[tuple[int, str | None]]) -> str | None:
    """A version token from the chunks' (size, SHA-256): the content itself names the version."""
    if not chunks or not all(checksum for _, checksum in chunks):
        return None
    text = "\n".join(f"{size}:{checksum}" for size, checksum in chunks)
    return "chunks-sha256:" + hashlib.sha256(text.encode()).hexdigest()


#: Chunk tag with the time of the write (ms since the epoch), set by this project's writers and by
#: MictlanX's newer client; anything but 1-19 digits is ignored.
WRITTEN_AT_TAG = "updated_at"
_STAMP = re.compile(r"[0-9]{1,19}")


def written_at(chunks: Sequence[ChunkMeta] | Sequence[ChunkPayload]) -> str | None:
    """``BallInfo.written``: chunk 0's write time (the commit point), None when it has none."""
    stamp = chunks[0].tags.get(WRITTEN_AT_TAG) if chunks else None
    return stamp if stamp is not None and _STAMP.fullmatch(stamp) else None


def stored_info(plan: BallPlan, full: str, sums: Sequence[str]) -> BallInfo:
    """What readers will find for ``plan`` once stored with the chunk checksums ``sums``."""
    etag = content_etag([(c.size, sums[c.index]) for c in plan.chunks])
    return replace(plan.info(full), etag=etag, written=written_at(plan.chunks))


async def plan_checksums(plan: BallPlan) -> tuple[list[str], str]:
    """Each chunk's SHA-256 and the whole payload's; big plans are hashed in threads, in parallel."""
    views = [chunk.data for chunk in plan.chunks]
    if plan.size <= HASH_INLINE_LIMIT:
        sums = [sha256_hex([view]) for view in views]
        return sums, sums[0] if len(views) == 1 else sha256_hex(views)
    jobs = [asyncio.to_thread(sha256_hex, [view]) for view in views]
    if len(views) > 1:
        jobs.append(asyncio.to_thread(sha256_hex, views))
    sums = await asyncio.gather(*jobs)
    return list(sums[: len(views)]), sums[-1]


class RemoteStore(PlannedStore):
    """A bucket of balls kept as separate network objects (see the module docstring).

    ``max_workers`` bounds the requests of one call in flight; ``max_object_bytes`` the ball a read
    may allocate (``PayloadTooLarge`` beyond it).
    """

    max_workers: int
    max_object_bytes: int

    # ------------------------------------------------------------------ what a backend supplies
    @abstractmethod
    async def _record(self, key: str) -> Any:
        """The stored metadata record of object ``key``; ``NotFound`` when it is absent."""

    @abstractmethod
    def _meta_of(self, record: Any) -> ChunkMeta:
        """A record as chunk metadata (validated: bad records are ``CorruptObject``)."""

    def _chunk_missing(self, ball_id: str, index: int, count: int) -> Exception:
        """What a missing chunk ``index > 0`` of a ball whose chunk 0 was found means."""
        return NotFound(f"{ball_id}: chunk {index} of {count} is missing (incomplete or being rewritten)")

    def _check_records(self, ball_id: str, metas: Sequence[ChunkMeta]) -> None:
        """A backend's own check of a ball's records before their layout is validated (none here)."""

    @abstractmethod
    async def _fill(self, layout: Layout, records: Sequence[Any], flat: memoryview) -> None:
        """Fetch every chunk of ``layout`` (whose records are ``records``) into ``flat``, verified."""

    @abstractmethod
    async def _consistent(self, ball_id: str, read: Callable[[Layout, list[Any]], Awaitable[T]]) -> T:
        """Load the ball (:meth:`_load`) and run ``read`` on its layout and records."""

    def _info(self, layout: Layout) -> BallInfo:
        """BallInfo with the content etag of the chunks' checksums (None when one is unknown) and the
        write's time."""
        etag = content_etag([(m.size, m.checksum) for m in layout.chunks])
        return replace(layout.info(), etag=etag, written=written_at(layout.chunks))

    # ------------------------------------------------------------------ shared machinery
    async def _bounded(self, factories: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run the factories' awaitables, at most ``max_workers`` at a time, results in order; the
        first failure cancels the rest.

        ``max_workers`` runners pull the next factory from one shared iterator, so ``factories`` may be
        a lazy generator and nothing is created per item up front: a chunk 0 whose ``num_chunks`` lies
        costs ``max_workers`` tasks, not one task (and coroutine) per claimed chunk, and a failing
        fetch stops the iteration there.
        """
        source = enumerate(factories)
        results: dict[int, T] = {}
        failed = False

        async def runner() -> None:
            nonlocal failed
            while not failed:  # after a failure no runner takes another item
                try:
                    index, factory = next(source)  # never awaits: no two runners take the same item
                except StopIteration:
                    return
                try:
                    results[index] = await factory()
                except BaseException:
                    failed = True
                    raise

        width = self.max_workers
        if isinstance(factories, Sized):
            width = min(width, len(factories))
        if width < 1:
            return []
        tasks = [asyncio.ensure_future(runner()) for _ in range(width)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [results[index] for index in range(len(results))]

    async def _load(self, ball_id: str) -> tuple[Layout, list[Any]]:
        """The validated layout of a ball and the record of each of its chunks, in index order.

        Chunk 0's record alone decides whether the ball may be read at all (before the other records
        are fetched), and the layout is checked against ``max_object_bytes`` before anything is
        allocated for it.
        """
        first = await self._record(chunk_key(ball_id, 0))
        first_meta = self._meta_of(first)
        count = num_chunks_of(first_meta.tags, ball_id)
        check_first_chunk(ball_id, first_meta, count, self.max_object_bytes)

        async def fetch(index: int) -> Any:
            try:
                return await self._record(chunk_key(ball_id, index))
            except NotFound:
                raise self._chunk_missing(ball_id, index, count) from None

        rest = await self._bounded((lambda i=i: fetch(i)) for i in range(1, count))  # type: ignore[misc]
        records = [first, *rest]
        metas = [first_meta, *(self._meta_of(record) for record in rest)]
        self._check_records(ball_id, metas)
        layout = read_layout(ball_id, metas)
        check_budget(layout, self.max_object_bytes)  # before any read allocates its output
        return layout, records

    async def _store_chunks(self, plan: BallPlan, put: Callable[[ChunkPayload], Awaitable[None]]) -> None:
        """Chunks ``1..n-1`` concurrently, then chunk 0: the commit point (see the module docstring)."""
        first, *rest = plan.chunks
        await self._bounded((lambda c=c: put(c)) for c in rest)  # type: ignore[misc]
        await put(first)

    # ------------------------------------------------------------------ reads
    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return (await self.fetch_ndarray(ball_id))[0]

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo]:
        """Read an ndarray; the info's ``etag`` is the content hash the read bytes were checked against."""

        async def read(layout: Layout, records: list[Any]) -> tuple[np.ndarray, BallInfo]:
            layout.require_array()
            out, flat = await allocate_output(layout, allocate)
            await self._fill(layout, records, memoryview(flat))
            return out, self._info(layout)

        return await self._consistent(ball_id, read)

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        async def read(layout: Layout, records: list[Any]) -> list[bytes]:
            layout.require_bytes_list()
            buffer = bytearray(layout.size)
            view = memoryview(buffer)
            await self._fill(layout, records, view)
            return await off_loop(layout.size, decode_bytes_list, layout, view, self.max_object_bytes)

        return await self._consistent(ball_id, read)

    async def info(self, ball_id: str) -> BallInfo:
        async def read(layout: Layout, records: list[Any]) -> BallInfo:
            return self._info(layout)

        return await self._consistent(ball_id, read)

    async def exists(self, ball_id: str) -> bool:
        check_ball_id(ball_id)
        try:
            await self._record(chunk_key(ball_id, 0))
        except NotFound:
            return False
        return True


__all__ = [
    "HASH_INLINE_LIMIT",
    "WRITTEN_AT_TAG",
    "RemoteStore",
    "content_etag",
    "plan_checksums",
    "sha256_hex",
    "stored_info",
    "written_at",
]
