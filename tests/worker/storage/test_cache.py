"""The storage read cache: hits, validation against storage (never a stale read), write-through,
bounded size, cold start after a restart, and the version tokens (etag) it relies on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.worker.storage.conftest import Backend, mictlanx_store
from worker.errors import NotFound
from worker.runtime import shared
from worker.storage import LocalStore, ObjectStore
from worker.storage.base import ForwardingStore
from worker.storage.cache import DEFAULT_CACHE_BYTES, CachedStore, with_cache

MB = 1 << 20


class Counting(ForwardingStore):
    """Delegates to a real store and counts payload reads (to prove a hit downloads nothing)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.reads = 0
        self.delay = 0.0

    async def fetch_ndarray(self, ball_id: str, *, allocate: Any = None) -> Any:
        self.reads += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self.inner.fetch_ndarray(ball_id, allocate=allocate)

    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        self.reads += 1
        return await self.inner.get_ndarray(ball_id)


#: What the ``pair`` fixture yields, named once for every test that takes it.
Pair = tuple[CachedStore, Counting, ObjectStore]


@pytest.fixture
async def pair(backend: Backend, tmp_path: Path) -> AsyncIterator[Pair]:
    """(the worker's cached store, its counting inner store, ANOTHER client on the same bucket)."""
    if backend.name == "local":
        worker_inner: ObjectStore = LocalStore(backend.root, "rory")
    else:
        worker_inner = mictlanx_store(backend.router)
    counting = Counting(worker_inner)
    cached = CachedStore(counting, 64 * MB)
    try:
        yield cached, counting, backend.store
    finally:
        await cached.aclose()


def _data(seed: int, shape: tuple[int, ...] = (300, 50)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


# ----------------------------------------------------------------------------- etag
async def test_info_names_the_version_and_changes_on_rewrite(store: ObjectStore) -> None:
    written = await store.put_ndarray("ball", _data(1), num_chunks=3)
    info = await store.info("ball")
    assert written.etag and info.etag == written.etag
    _, read = await store.fetch_ndarray("ball")
    assert read is not None and read.etag == info.etag
    await store.put_ndarray("ball", _data(2), num_chunks=3)
    assert (await store.info("ball")).etag != info.etag


# ----------------------------------------------------------------------------- hits
async def test_second_read_is_a_hit_and_downloads_nothing(pair: Pair) -> None:
    cached, counting, owner = pair
    data = _data(3)
    await owner.put_ndarray("data", data, num_chunks=2)
    first = await cached.get_ndarray("data")
    second = await cached.get_ndarray("data")
    np.testing.assert_array_equal(first, data)
    np.testing.assert_array_equal(second, data)
    assert counting.reads == 1 and cached.hits == 1 and cached.misses == 1
    assert not second.flags.writeable  # shared between readers: read-only
    with pytest.raises(ValueError):
        second[0, 0] = 1.0


async def test_fetch_is_cached_too_and_names_the_version_served(pair: Pair) -> None:
    """``fetch_ndarray`` (the read that also says which version it read) hits like ``get_ndarray``,
    and after an overwrite it reads the new version and names it."""
    cached, counting, owner = pair
    first_version = await owner.put_ndarray("udm", _data(3), num_chunks=2)
    first, info = await cached.fetch_ndarray("udm")
    again, info_again = await cached.fetch_ndarray("udm")
    np.testing.assert_array_equal(first, _data(3))
    np.testing.assert_array_equal(again, _data(3))
    assert info is not None and info_again is not None
    assert info.etag == info_again.etag == first_version.etag
    assert counting.reads == 1 and cached.hits == 1 and not again.flags.writeable
    second_version = await owner.put_ndarray("udm", _data(4), num_chunks=2)
    replaced, info_replaced = await cached.fetch_ndarray("udm")
    np.testing.assert_array_equal(replaced, _data(4))
    assert info_replaced is not None and info_replaced.etag == second_version.etag
    assert counting.reads == 2


async def test_a_fetch_into_the_callers_own_memory_bypasses_the_cache(pair: Pair) -> None:
    """A caller that brings its own allocator may reuse that buffer: it is never kept or served."""
    cached, counting, owner = pair
    await owner.put_ndarray("udm", _data(5), num_chunks=2)
    buffers: list[np.ndarray] = []

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buffers.append(np.empty(shape, dtype))
        return buffers[-1]

    got, _ = await cached.fetch_ndarray("udm", allocate=allocate)
    got[:] = 0.0  # the caller reuses its buffer
    again, _ = await cached.fetch_ndarray("udm")
    np.testing.assert_array_equal(again, _data(5))
    assert counting.reads == 2 and cached.hits == 0 and len(buffers) == 1


async def test_own_writes_are_cached_as_a_private_snapshot(pair: Pair) -> None:
    cached, counting, _ = pair
    data = _data(4)
    await cached.put_ndarray("udm", data, num_chunks=2)
    expected = data.copy()
    data[:] = 0.0  # the writer keeps using its array: the cache must not see that
    read = await cached.get_ndarray("udm")
    np.testing.assert_array_equal(read, expected)
    assert counting.reads == 0 and cached.hits == 1


async def test_large_cached_arrays_cross_into_the_pool_without_a_copy(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path, "rory")
    cached = CachedStore(inner, 64 * MB)
    try:
        await inner.put_ndarray("big", _data(5, (1000, 200)), num_chunks=3)
        array = await cached.get_ndarray("big")
        assert shared.is_shared(array)
        keep: list[Any] = []
        packed = shared.pack((array,), keep)
        assert isinstance(packed[0], shared.SharedArray) and keep == []
    finally:
        await cached.aclose()


# ----------------------------------------------------------------------------- never stale
@pytest.mark.parametrize("same_shape", [True, False])
async def test_an_overwrite_by_another_client_is_never_served_stale(pair: Pair, same_shape: bool) -> None:
    cached, counting, owner = pair
    await owner.put_ndarray("x", _data(6))
    np.testing.assert_array_equal(await cached.get_ndarray("x"), _data(6))
    replacement = _data(7) if same_shape else _data(7, (20, 5))
    await owner.put_ndarray("x", replacement)
    np.testing.assert_array_equal(await cached.get_ndarray("x"), replacement)
    assert counting.reads == 2 and cached.hits == 0


async def test_another_worker_overwriting_what_we_wrote(pair: Pair) -> None:
    cached, _, other = pair
    await cached.put_ndarray("centj", _data(8))
    await other.put_ndarray("centj", _data(9))
    np.testing.assert_array_equal(await cached.get_ndarray("centj"), _data(9))


async def test_a_delete_by_another_client_is_seen(pair: Pair) -> None:
    cached, _, owner = pair
    await owner.put_ndarray("gone", _data(10))
    await cached.get_ndarray("gone")
    await owner.delete("gone")
    with pytest.raises(NotFound):
        await cached.get_ndarray("gone")
    assert cached.cached_bytes == 0  # the entry is dropped, not kept for a ball that is gone


async def test_two_caches_on_one_bucket_stay_coherent(tmp_path: Path) -> None:
    first = CachedStore(LocalStore(tmp_path, "rory"), 64 * MB)
    second = CachedStore(LocalStore(tmp_path, "rory"), 64 * MB)
    try:
        for round_ in range(4):
            writer, reader = (first, second) if round_ % 2 == 0 else (second, first)
            await writer.put_ndarray("udm", _data(round_))
            np.testing.assert_array_equal(await reader.get_ndarray("udm"), _data(round_))
            np.testing.assert_array_equal(await writer.get_ndarray("udm"), _data(round_))
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_read_racing_our_own_write_keeps_nothing_stale(pair: Pair) -> None:
    cached, counting, owner = pair
    await owner.put_ndarray("race", _data(11))
    counting.delay = 0.05
    reading = asyncio.ensure_future(cached.get_ndarray("race"))
    await asyncio.sleep(0.01)
    counting.delay = 0.0
    await cached.put_ndarray("race", _data(12))
    await reading  # old or new: either is a correct read at its time
    np.testing.assert_array_equal(await cached.get_ndarray("race"), _data(12))


# ----------------------------------------------------------------------------- bounded, cold
async def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path, "rory")
    cached = CachedStore(inner, 3 * MB)
    try:
        one = (MB // 8,)  # 1 MB of float64
        for name in "abcd":
            await inner.put_ndarray(name, np.full(one, float(ord(name))))
        for name in "abc":
            await cached.get_ndarray(name)
        assert cached.cached_bytes == 3 * MB
        await cached.get_ndarray("a")  # a is now the most recently used
        await cached.get_ndarray("d")  # evicts b
        assert cached.cached_bytes <= 3 * MB
        hits = cached.hits
        await cached.get_ndarray("a")
        assert cached.hits == hits + 1
        await cached.get_ndarray("b")
        assert cached.hits == hits + 1  # b was evicted
        # larger than the whole cache: served, never kept
        await inner.put_ndarray("huge", np.ones((4 * MB) // 8))
        assert (await cached.get_ndarray("huge")).sum() == (4 * MB) // 8
        assert cached.cached_bytes <= 3 * MB
    finally:
        await cached.aclose()


async def test_a_restarted_worker_starts_cold(tmp_path: Path) -> None:
    first = CachedStore(LocalStore(tmp_path, "rory"), 64 * MB)
    await first.put_ndarray("state", _data(13))
    await first.get_ndarray("state")
    assert first.hits == 1
    await first.aclose()
    restarted = CachedStore(LocalStore(tmp_path, "rory"), 64 * MB)
    try:
        np.testing.assert_array_equal(await restarted.get_ndarray("state"), _data(13))
        assert restarted.hits == 0 and restarted.misses == 1
    finally:
        await restarted.aclose()


async def test_a_backend_without_versions_is_never_cached(tmp_path: Path) -> None:
    class Unversioned(Counting):
        async def fetch_ndarray(self, ball_id: str, *, allocate: Any = None) -> Any:
            self.reads += 1
            return await self.inner.get_ndarray(ball_id), None

    inner = Unversioned(LocalStore(tmp_path, "rory"))
    cached = CachedStore(inner, 64 * MB)
    try:
        await inner.put_ndarray("v", _data(14))
        for _ in range(3):
            np.testing.assert_array_equal(await cached.get_ndarray("v"), _data(14))
        assert inner.reads == 3 and cached.hits == 0 and cached.cached_bytes == 0
    finally:
        await cached.aclose()


async def test_with_cache_wraps_once_and_can_be_disabled(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path, "rory")
    wrapped = with_cache(inner)
    assert isinstance(wrapped, CachedStore) and wrapped.max_bytes == DEFAULT_CACHE_BYTES
    assert with_cache(wrapped) is wrapped
    assert with_cache(inner, 0) is inner
    assert wrapped.directory == inner.directory  # other attributes are the inner store's
    await wrapped.aclose()


async def test_byte_lists_and_deletes_pass_through(pair: Pair) -> None:
    cached, _, _ = pair
    await cached.put_ndarray("k", _data(15))
    await cached.put_bytes_list("k", [b"a", b"b"])
    assert await cached.get_bytes_list("k") == [b"a", b"b"]
    assert cached.cached_bytes == 0
    await cached.put_ndarray("k", _data(16))
    assert await cached.delete("k") >= 1
    assert cached.cached_bytes == 0 and not await cached.exists("k")


async def test_closing_releases_the_cached_arrays_off_the_event_loop(tmp_path: Path) -> None:
    """Releasing a cached array may unmap and unlink a shared-memory file: at close the last
    references die in a worker thread, never on the loop that answers health."""
    import mmap
    import threading
    import weakref

    released_on: list[str] = []

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        memory = mmap.mmap(-1, int(np.prod(shape)) * dtype.itemsize)  # what a shared segment is
        weakref.finalize(memory, lambda: released_on.append(threading.current_thread().name))
        return np.frombuffer(memory, dtype=dtype).reshape(shape)

    inner = LocalStore(tmp_path, "rory")
    await inner.put_ndarray("udm", _data(7), num_chunks=1)
    cached = CachedStore(inner, 64 * MB, allocate=allocate)
    got = await cached.get_ndarray("udm")
    np.testing.assert_array_equal(got, _data(7))
    del got
    assert released_on == []  # still cached
    await cached.aclose()
    assert cached.stats()["entries"] == 0
    assert released_on and threading.current_thread().name not in released_on


async def test_a_cancelled_close_still_closes_the_inner_store(tmp_path: Path) -> None:
    closed: list[bool] = []

    class Recording(ForwardingStore):
        async def aclose(self) -> None:
            closed.append(True)
            await self.inner.aclose()

    cached = CachedStore(Recording(LocalStore(tmp_path, "rory")), 64 * MB)
    await cached.put_ndarray("udm", _data(3), num_chunks=1)
    closing = asyncio.ensure_future(cached.aclose())
    await asyncio.sleep(0)  # inside aclose, at the hand-off of the cached arrays to a thread
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    assert closed == [True]
