"""A bounded in-memory read cache over an object store, validated against storage on every read.

Why: a secure k-means round reads the encrypted dataset and the UDM that the previous step wrote
itself. Without a cache every round downloads both again (on MictlanX, tens of MB over the network;
locally, a read plus CRC checks), although neither changed. With it, a read costs one ``info()``.

Correctness first:

* Every ``get_ndarray`` / ``fetch_ndarray`` asks storage for the ball's current version
  (``info().etag``) and serves the cached copy only when the version, kind, shape and dtype all
  match. Another worker (or the data owner) overwriting the ball changes the etag, so a cached copy
  is never served stale. A ball whose backend cannot name its version (``etag`` None) is never cached.
* A miss reads with :meth:`ObjectStore.fetch_ndarray`, which reports the version that was actually
  read, so data and version cannot be mismatched by a concurrent overwrite between two calls.
* Writes through this store (``put_ndarray``, ``put_blob``) cache a private snapshot of what was
  written under the version the backend reports (write-through: the next step's read of its own
  output is a hit); ``put_bytes_list`` and ``delete`` just drop the entry.
* Arrays served from the cache are read-only views (they are shared between readers); arrays the
  cache did not keep are returned writable, as the backends return them.
* The cache lives in memory only: a restarted worker starts cold.

Bounded: at most ``max_bytes`` of array payload (least recently used entries go first); an object
larger than that is not cached. Cached arrays live in pooled shared-memory transfer files
(:func:`worker.segments.empty`), so handing them to the compute pool costs no copy at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from worker import segments
from worker.errors import NotFound
from worker.storage.base import Allocator, BallInfo, ForwardingStore, ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default bound of the cache: 512 MB of array payload (about ten 100k x 8 SKMeans jobs' data + UDM).
DEFAULT_CACHE_BYTES = 512 << 20
#: Snapshots at least this large are copied in a thread (the event loop keeps serving).
_OFF_LOOP_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Entry:
    etag: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    array: np.ndarray  # never handed out writable

    def matches(self, info: BallInfo) -> bool:
        return (
            info.etag is not None
            and info.etag == self.etag
            and info.kind == self.kind
            and tuple(info.full_shape or ()) == self.shape
            and info.full_dtype == self.dtype
        )

    def view(self) -> np.ndarray:
        view = self.array.view()
        view.flags.writeable = False
        return view


class _Fetch:
    """One read in flight; a write or delete of the same ball meanwhile makes its result unfit to keep."""

    __slots__ = ("superseded",)

    def __init__(self) -> None:
        self.superseded = False


def _snapshot(array: np.ndarray, allocate: Allocator) -> np.ndarray:
    """A private copy of ``array`` as storage returns it (C order, native byte order)."""
    dtype = array.dtype.newbyteorder("=")
    copy = allocate(tuple(array.shape), dtype)
    np.copyto(copy, array, casting="equiv")
    return copy


class CachedStore(ForwardingStore):
    """Wraps ``inner`` with a read cache of ndarrays keyed by (ball id, version).

    ``max_bytes``: the bound (0 disables caching; the store then only passes calls through).
    ``write_through``: keep a snapshot of arrays written through this store (default on).
    ``allocate``: where cached arrays live (default: pooled shared-memory transfer files).
    Every other attribute (``sweep``, ``directory``...) is the inner store's.
    """

    def __init__(
        self,
        inner: ObjectStore,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        *,
        write_through: bool = True,
        allocate: Allocator | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        super().__init__(inner)
        self.max_bytes = int(max_bytes)
        self.write_through = write_through
        self._allocate: Allocator = allocate or segments.empty
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, list[_Fetch]] = {}
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ bookkeeping
    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
        }

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _fits(self, nbytes: int) -> bool:
        return self.max_bytes > 0 and nbytes <= self.max_bytes

    def _drop(self, ball_id: str) -> None:
        entry = self._entries.pop(ball_id, None)
        if entry is not None:
            self._bytes -= entry.array.nbytes

    def _forget(self, ball_id: str) -> None:
        """The ball is being rewritten or deleted: drop it and spoil reads still in flight."""
        self._drop(ball_id)
        for fetch in self._inflight.get(ball_id, ()):
            fetch.superseded = True

    def _insert(self, ball_id: str, info: BallInfo, array: np.ndarray) -> bool:
        if info.etag is None or info.full_dtype is None or not self._fits(array.nbytes):
            return False
        entry = _Entry(info.etag, info.kind, tuple(array.shape), info.full_dtype, array)
        if not entry.matches(info) or np.dtype(array.dtype).name != info.full_dtype:
            return False
        self._drop(ball_id)
        while self._entries and self._bytes + array.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.array.nbytes
        self._entries[ball_id] = entry
        self._bytes += array.nbytes
        return True

    # ------------------------------------------------------------------ reads
    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return (await self.fetch_ndarray(ball_id))[0]

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo | None]:
        """The array and the info of the version served: the cached copy when storage's current
        version is the one cached (one ``info()`` call), else a read that is then cached.

        ``allocate``: the caller wants the array in memory of its own: such a read bypasses the
        cache (a buffer the caller may reuse must not become what the cache serves).
        """
        if self.max_bytes == 0 or allocate is not None:
            return await self.inner.fetch_ndarray(ball_id, allocate=allocate)
        entry = self._entries.get(ball_id)
        if entry is not None:
            try:
                info = await self.inner.info(ball_id)  # the cheap validation: which version is current?
            except NotFound:
                self._drop(ball_id)
                raise
            entry = self._entries.get(ball_id)  # (it may have changed while we waited)
            if entry is not None and entry.matches(info):
                self._entries.move_to_end(ball_id)
                self.hits += 1
                return entry.view(), info
            self._drop(ball_id)
        self.misses += 1
        fetch = _Fetch()
        self._inflight.setdefault(ball_id, []).append(fetch)
        try:
            array, read = await self.inner.fetch_ndarray(ball_id, allocate=self._allocate)
        finally:
            pending = self._inflight[ball_id]
            pending.remove(fetch)
            if not pending:
                del self._inflight[ball_id]
        if read is not None and not fetch.superseded and self._insert(ball_id, read, array):
            return self._entries[ball_id].view(), read
        return array, read

    # ------------------------------------------------------------------ writes
    async def _put_array(self, ball_id: str, array: Any, put: Any) -> BallInfo:
        self._forget(ball_id)
        snapshot: asyncio.Future[np.ndarray] | None = None
        if (
            self.write_through
            and isinstance(array, np.ndarray)
            and not array.dtype.hasobject
            and self._fits(array.nbytes)
        ):
            if array.nbytes >= _OFF_LOOP_BYTES:  # copy while the backend writes
                snapshot = asyncio.ensure_future(segments.in_thread(_snapshot, array, self._allocate))
            else:
                snapshot = asyncio.get_running_loop().create_future()
                snapshot.set_result(_snapshot(array, self._allocate))
        try:
            info = await put()
        except BaseException:
            if snapshot is not None:
                snapshot.cancel()
                await asyncio.gather(snapshot, return_exceptions=True)
            self._forget(ball_id)
            raise
        self._forget(ball_id)  # a read that raced this write must not keep what it read
        if snapshot is not None:
            try:
                copy = await snapshot
            except Exception as error:  # no room for the snapshot: the write itself succeeded
                log.debug("no write-through snapshot of %s: %s", ball_id, error)
            else:
                self._insert(ball_id, info, copy)
        return info

    async def _forward(
        self, op: str, ball_id: str | None, call: Callable[[], Awaitable[T]], *, array: Any = None
    ) -> T:
        """A put of an array keeps a snapshot (:meth:`_put_array`); ``put_bytes_list`` and ``delete``
        drop the entry and spoil reads in flight, before and after the call; other calls pass through."""
        if ball_id is None or op not in ("put", "delete"):
            return await call()
        if array is not None:
            return await self._put_array(ball_id, array, call)  # type: ignore[return-value]
        self._forget(ball_id)
        try:
            return await call()
        finally:
            self._forget(ball_id)

    async def aclose(self) -> None:
        # The last references die in a thread: releasing a large job's shared-memory arrays unmaps
        # and unlinks their files, 25-89 ms measured for a 1e6-row job, which the loop (health,
        # the last replies of a shutdown) should not wait on.
        entries = list(self._entries.values())
        self.clear()
        try:
            await asyncio.to_thread(entries.clear)
        finally:  # cancelled meanwhile: the inner store is closed all the same
            await self.inner.aclose()


def with_cache(store: Any, max_bytes: int = DEFAULT_CACHE_BYTES) -> Any:
    """``store`` wrapped in a :class:`CachedStore` (unchanged when it is one already, or when
    ``max_bytes`` is 0, or when it is not an :class:`ObjectStore`, e.g. an unavailable placeholder)."""
    if max_bytes <= 0 or isinstance(store, CachedStore) or not isinstance(store, ObjectStore):
        return store
    return CachedStore(store, max_bytes)


__all__ = ["DEFAULT_CACHE_BYTES", "CachedStore", "with_cache"]
