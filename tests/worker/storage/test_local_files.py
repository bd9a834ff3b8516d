"""The local store's thread-pool jobs (worker/storage/local_files.py): a failed or cancelled call
waits for its threads before it cleans up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from worker.storage.local_files import Job


async def test_abort_waits_for_running_work_even_when_cancelled_again() -> None:
    """A second cancellation (a deadline, then a shutdown) must not end ``abort`` while a thread
    still works: the caller's own cleanup would race a commit. It is raised once the work is done."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def work() -> None:
        started.set()
        release.wait(30)
        order.append("work")

    try:
        job = Job(pool)
        job.submit(work)
        await asyncio.to_thread(started.wait, 30)
        aborting = asyncio.ensure_future(job.abort(lambda: order.append("cleanup")))
        await asyncio.sleep(0)  # abort is now waiting for the thread
        aborting.cancel()
        # The thread is held, so abort cannot have finished however the machine schedules it.
        done, _ = await asyncio.wait([aborting], timeout=0.2)
        assert not done and order == []
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await aborting
        assert order == ["work", "cleanup"]
    finally:
        release.set()
        pool.shutdown(wait=True)


async def test_abort_without_a_second_cancellation_returns_normally() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    order: list[str] = []
    try:
        job = Job(pool)
        await job.submit(order.append, "work")
        await job.abort(lambda: order.append("cleanup"))
        assert order == ["work", "cleanup"]
    finally:
        pool.shutdown(wait=True)
