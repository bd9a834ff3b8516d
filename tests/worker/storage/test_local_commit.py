"""The local store's commit lock and its kept manifests: exclusion survives a bucket directory moved
or made anew, the kept descriptor never leaks, and the manifests kept stay within their budget."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from worker.errors import StorageUnavailable
from worker.storage import LocalStore, local_bucket
from worker.storage import local as local_module


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[int]:
    """Hold ``lock``'s flock on a descriptor of our own, as another worker process would."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


class _FlockSpy:
    """``fcntl`` as ``local_bucket`` sees it, counting the exclusive locks its threads ask for."""

    LOCK_EX, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_UN

    def __init__(self) -> None:
        self.asked = 0
        self._changed = threading.Condition()

    def flock(self, fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:
            with self._changed:
                self.asked += 1
                self._changed.notify_all()
        fcntl.flock(fd, operation)

    def wait_asked(self, count: int, timeout: float = 30.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.asked >= count, timeout)


async def _commit_waits_for(
    store: LocalStore, lock: Path, monkeypatch: pytest.MonkeyPatch, *, asks: int = 1
) -> None:
    """A put started while ``lock`` is held asks for it (``asks`` exclusive flocks: a second one
    after finding its kept descriptor stale) and does not commit until it is released."""
    spy = _FlockSpy()
    monkeypatch.setattr(local_bucket, "fcntl", spy)
    with _held(lock):
        put = asyncio.ensure_future(store.put_ndarray("b", np.arange(3.0)))
        assert await asyncio.to_thread(spy.wait_asked, asks)  # the store's thread is at the lock
        await asyncio.sleep(0.2)
        assert not put.done()  # still waiting for the lock we hold
    await put
    assert spy.asked == asks
    np.testing.assert_array_equal(await store.get_ndarray("b"), np.arange(3.0))


async def test_a_commit_waits_for_another_process_holding_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))  # the store now keeps .lock open
        await _commit_waits_for(store, tmp_path / "rory" / ".lock", monkeypatch)


async def test_the_lock_follows_a_bucket_directory_moved_away_and_made_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restoring a bucket (``mv rory rory.old; mkdir rory``) leaves the kept descriptor on the old
    ``.lock``, which still has a name: the store must lock the new one, which others lock."""
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))
        os.rename(tmp_path / "rory", tmp_path / "rory.old")
        (tmp_path / "rory").mkdir(mode=0o700)
        (tmp_path / "rory" / ".lock").touch(mode=0o600)
        await _commit_waits_for(store, tmp_path / "rory" / ".lock", monkeypatch, asks=2)


async def test_the_lock_follows_a_bucket_directory_deleted_and_made_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))
        shutil.rmtree(tmp_path / "rory")
        (tmp_path / "rory").mkdir(mode=0o700)
        (tmp_path / "rory" / ".lock").touch(mode=0o600)
        await _commit_waits_for(store, tmp_path / "rory" / ".lock", monkeypatch, asks=2)


async def test_a_symlink_planted_as_the_lock_fails_the_put_and_leaves_the_lock_free(tmp_path: Path) -> None:
    """``.lock`` replaced by a symlink loop: this store's put fails (503, never following it), and
    the lock it took on its kept descriptor is released, so another process's commit does not hang."""
    async with LocalStore(tmp_path, "rory") as store, LocalStore(tmp_path, "rory") as other:
        await store.put_ndarray("a", np.zeros(2))
        await other.put_ndarray("b", np.zeros(2))  # both keep a descriptor on the same .lock
        kept = os.open(tmp_path / "rory" / ".lock", os.O_RDONLY)
        try:
            lock = tmp_path / "rory" / ".lock"
            lock.unlink()
            lock.symlink_to(lock)
            with pytest.raises(StorageUnavailable):
                await store.put_ndarray("a", np.ones(2))
            fcntl.flock(kept, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody kept it locked
            fcntl.flock(kept, fcntl.LOCK_UN)
        finally:
            os.close(kept)


async def test_a_cancelled_aclose_never_waits_for_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose runs on the event loop: when a commit thread waits for another process's lock, the
    loop must not wait with it; the thread closes the kept descriptor once it is done."""
    store = LocalStore(tmp_path, "rory")
    await store.put_ndarray("a", np.zeros(2))
    spy = _FlockSpy()
    monkeypatch.setattr(local_bucket, "fcntl", spy)
    with _held(tmp_path / "rory" / ".lock") as held:
        # Should the loop ever wait for the lock here, it is let go after 30 s and the test fails
        # below instead of hanging.
        watchdog = threading.Timer(30.0, fcntl.flock, (held, fcntl.LOCK_UN))
        watchdog.start()
        put = asyncio.ensure_future(store.put_ndarray("a", np.ones(2)))
        assert await asyncio.to_thread(spy.wait_asked, 1)
        closing = asyncio.ensure_future(store.aclose())
        await asyncio.sleep(0.1)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing  # returns without waiting for the lock we still hold
        assert not put.done()
        watchdog.cancel()
    await put  # the commit went through once the lock was free
    assert store._lock_fd is None  # and the thread closed the descriptor behind it


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_store_dropped_without_aclose_leaks_no_descriptor(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "rory")
    await store.put_ndarray("a", np.zeros(2))
    await store.put_ndarray("a", np.ones(2))
    store._pool.shutdown(wait=True)  # (its threads; what aclose would also do)
    before = _open_fds()
    del store
    gc.collect()
    assert _open_fds() == before - 1  # the kept .lock descriptor


async def test_a_file_planted_at_the_pointers_temp_name_does_not_fail_the_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))
        version = "v" + "0" * 24
        monkeypatch.setattr(local_module, "new_version", lambda: version)
        (tmp_path / "rory" / ".tmp" / f"a.{version}.ref").write_bytes(b"planted")
        await store.put_ndarray("a", np.ones(2))
        np.testing.assert_array_equal(await store.get_ndarray("a"), np.ones(2))


async def test_kept_manifests_are_one_per_ball_and_within_their_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "MANIFEST_CACHE_BUDGET_BYTES", 20_000)  # a few dozen manifests
    async with LocalStore(tmp_path, "rory") as store:
        for i in range(50):  # every rewrite is a new version: only the last one is kept
            await store.put_ndarray("same", np.full(4, float(i)))
            assert (await store.info("same")).etag is not None
        assert list(store._manifests) == ["same"]
        for i in range(100):
            await store.put_ndarray(f"b{i}", np.zeros(1))
            await store.info(f"b{i}")
        assert 0 < store._manifest_bytes <= 20_000 and "b0" not in store._manifests
        assert sum(size for size, _ in store._manifests.values()) == store._manifest_bytes
        np.testing.assert_array_equal(await store.get_ndarray("b0"), np.zeros(1))  # evicted: read again
