"""The compute pool: processes, crash recovery, cancellation kills the slot, per-process cache."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests import ops
from tests.conftest import running_pool
from worker.runtime.pool import ComputeCrashed, ComputePool, process_identity, start_watchdog


@pytest.fixture
async def pool() -> AsyncIterator[ComputePool]:
    async with running_pool(2, ["tests.ops"], ready_timeout=30) as started:
        yield started


async def test_runs_in_other_processes(pool: ComputePool) -> None:
    assert await pool.run(ops.add, 2, b=3) == 5
    pids = set(await asyncio.gather(*(pool.run(ops.pid) for _ in range(6))))
    assert os.getpid() not in pids and pids <= set(pool.pids())
    assert pool.busy == 0


async def test_exceptions_from_the_function_propagate(pool: ComputePool) -> None:
    with pytest.raises(ValueError, match="nope"):
        await pool.run(ops.raise_value_error, "nope")
    assert pool.restarts == 0


async def test_more_jobs_than_slots_wait_for_a_slot(pool: ComputePool) -> None:
    results = await asyncio.gather(*(pool.run(ops.add, i, 1) for i in range(7)))
    assert results == [i + 1 for i in range(7)]


async def test_crash_restarts_only_that_slot(pool: ComputePool) -> None:
    survivor = asyncio.create_task(pool.run(ops.burn, 0.5))
    await asyncio.sleep(0.05)
    with pytest.raises(ComputeCrashed):
        await pool.run(ops.die)
    assert pool.restarts == 1
    assert await survivor > 0  # the other slot's job was not affected
    assert await pool.run(ops.add, 1, 1) == 2
    assert len(pool.pids()) >= 1


async def test_cancellation_kills_and_replaces_the_slot(pool: ComputePool) -> None:
    before = set(pool.pids())
    task = asyncio.create_task(pool.run(ops.burn, 10))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.kills == 1 and pool.busy == 0
    results = await asyncio.gather(pool.run(ops.add, 1, 2), pool.run(ops.add, 3, 4))
    assert results == [3, 7]
    assert set(pool.pids()) != before


async def test_process_cached_loads_once_per_process(pool: ComputePool) -> None:
    from worker.runtime.pool import process_cached

    calls = []
    assert process_cached("k", lambda: calls.append(1) or "v") == "v"
    assert process_cached("k", lambda: calls.append(1) or "w") == "v"
    assert calls == [1]


async def test_not_started_pool_refuses_work() -> None:
    pool = ComputePool(1)
    with pytest.raises(Exception, match="not running"):
        await pool.run(ops.add, 1, 2)
    with pytest.raises(ValueError):
        ComputePool(0)


# ----------------------------------------------------------------------------- dying with the worker
def _watched_child(owner: int, ready: Any) -> None:
    """A stand-in for a slot: the watchdog of ``owner``, then nothing but waiting."""
    start_watchdog(owner, interval=0.05)
    ready.set()
    time.sleep(60)


def test_process_identity_follows_a_process_life() -> None:
    assert process_identity(os.getpid()) == process_identity(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_identity(child.pid) is not None
    finally:
        child.kill()
    if sys.platform.startswith("linux"):  # killed but not yet reaped: a zombie counts as gone
        deadline = time.monotonic() + 10
        while process_identity(child.pid) is not None:
            assert time.monotonic() < deadline, "a zombie should count as gone"
            time.sleep(0.02)
    child.wait()
    assert process_identity(child.pid) is None


def test_a_watched_process_exits_when_its_owner_dies() -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_watched_child, args=(owner.pid, ready), daemon=True)
    child.start()
    try:
        assert ready.wait(30)
        assert child.is_alive()
        owner.kill()
        owner.wait()
        child.join(10)
        assert not child.is_alive(), "the watchdog did not notice its owner die"
        assert child.exitcode == 0
    finally:
        owner.kill()
        if child.is_alive():
            child.kill()
