"""The local store's commit lock and its kept manifests: exclusion survives a bucket directory moved
or made anew, the kept descriptor never leaks, and the manifests kept stay within their budget."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from worker.storage import LocalStore
from worker.storage import local as local_module


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """Hold ``lock``'s flock on a descriptor of our own, as another worker process would."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def _commit_waits_for(store: LocalStore, lock: Path) -> None:
    """A put started while ``lock`` is held does not commit until it is released."""
    with _held(lock):
        put = asyncio.ensure_future(store.put_ndarray("b", np.arange(3.0)))
        await asyncio.sleep(0.5)
        assert not put.done()  # (on a slow machine it may not have started: never a false failure)
    await put
    np.testing.assert_array_equal(await store.get_ndarray("b"), np.arange(3.0))


async def test_a_commit_waits_for_another_process_holding_the_lock(tmp_path: Path) -> None:
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))  # the store now keeps .lock open
        await _commit_waits_for(store, tmp_path / "rory" / ".lock")


async def test_the_lock_follows_a_bucket_directory_moved_away_and_made_anew(tmp_path: Path) -> None:
    """Restoring a bucket (``mv rory rory.old; mkdir rory``) leaves the kept descriptor on the old
    ``.lock``, which still has a name: the store must lock the new one, which others lock."""
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))
        os.rename(tmp_path / "rory", tmp_path / "rory.old")
        (tmp_path / "rory").mkdir(mode=0o700)
        (tmp_path / "rory" / ".lock").touch(mode=0o600)
        await _commit_waits_for(store, tmp_path / "rory" / ".lock")


async def test_the_lock_follows_a_bucket_directory_deleted_and_made_anew(tmp_path: Path) -> None:
    async with LocalStore(tmp_path, "rory") as store:
        await store.put_ndarray("a", np.zeros(2))
        shutil.rmtree(tmp_path / "rory")
        (tmp_path / "rory").mkdir(mode=0o700)
        (tmp_path / "rory" / ".lock").touch(mode=0o600)
        await _commit_waits_for(store, tmp_path / "rory" / ".lock")


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
