"""The storage circuit breaker, its probe, the command deadline, and the guard around a real store."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import numpy as np
import pytest

from worker.errors import NotFound, StorageUnavailable
from worker.storage.breaker import CircuitBreaker, pause, remaining, storage_deadline
from worker.storage.guarded import GuardedStore
from worker.storage.local import LocalStore


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.failed("a")
    breaker.failed("b")
    breaker.succeeded()  # a success in between resets the count: no flapping on scattered errors
    breaker.failed("c")
    breaker.failed("d")
    breaker.admit("get x")
    breaker.failed("e")
    with pytest.raises(StorageUnavailable, match="circuit open after: e") as caught:
        breaker.admit("get x")
    assert caught.value.retryable and caught.value.code == 503
    assert breaker.status.reachable is False and breaker.status.last_error == "e"


async def test_probe_closes_the_breaker_when_storage_returns() -> None:
    up = asyncio.Event()

    async def probe() -> bool:
        return up.is_set()

    breaker = CircuitBreaker(failure_threshold=1, probe_interval=0.01, probe=probe)
    breaker.failed(OSError("down"))
    assert breaker.is_open
    up.set()
    for _ in range(2000):
        if not breaker.is_open:
            break
        await asyncio.sleep(0.01)
    assert not breaker.is_open and breaker.status.last_error is None
    await breaker.aclose()


async def test_pause_refuses_to_sleep_past_the_deadline() -> None:
    assert remaining() is None
    loop = asyncio.get_running_loop()
    with storage_deadline(loop.time() + 0.5):
        left = remaining()
        assert left is not None and left <= 0.5
        with pytest.raises(StorageUnavailable, match="deadline"):
            await pause(30.0, "get x")  # raises at once instead of sleeping 30 s
    assert remaining() is None


class _FullDisk(LocalStore):
    """A real local store whose writes hit a full disk (ENOSPC cannot be produced on demand here)."""

    async def put_ndarray(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_guard_maps_disk_errors_to_503_and_counts_them(tmp_path: Path) -> None:
    store = GuardedStore(_FullDisk(tmp_path / "css"), CircuitBreaker(failure_threshold=2))
    for _ in range(2):
        with pytest.raises(StorageUnavailable, match="No space left"):
            await store.put_ndarray("x", np.zeros(3))
    with pytest.raises(StorageUnavailable, match="circuit open"):
        await store.get_ndarray("x")
    assert store.storage_status.reachable is False
    await store.aclose()


async def test_answers_from_storage_keep_the_breaker_closed(tmp_path: Path) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    store = GuardedStore(LocalStore(tmp_path / "css"), breaker)
    with pytest.raises(NotFound):
        await store.get_ndarray("absent")
    await store.put_ndarray("present", np.arange(4.0))
    np.testing.assert_array_equal(await store.get_ndarray("present"), np.arange(4.0))
    assert not breaker.is_open
    await store.aclose()


async def test_without_a_probe_one_attempt_goes_through_per_interval() -> None:
    breaker = CircuitBreaker(failure_threshold=1, probe_interval=0.05)
    breaker.failed("down")
    with pytest.raises(StorageUnavailable):
        breaker.admit("get x")
    await asyncio.sleep(0.06)
    breaker.admit("get x")  # the trial attempt (half-open by time)
    breaker.succeeded()
    assert not breaker.is_open
