"""worker/aio.py: awaiting work to its end through cancellations."""

from __future__ import annotations

import asyncio

import pytest

from worker.aio import await_to_end


async def test_returns_the_result_when_nobody_cancels() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await await_to_end(work()) == 7


async def test_repeated_cancellations_wait_for_the_end_then_cancel() -> None:
    release = asyncio.Event()
    ended: list[str] = []

    async def work() -> str:
        await release.wait()
        ended.append("work")
        return "result"

    waiting = asyncio.ensure_future(await_to_end(work()))
    for _ in range(3):  # a deadline, a shutdown, an impatient caller
        await asyncio.sleep(0)
        waiting.cancel()
    await asyncio.sleep(0)
    assert not waiting.done() and ended == []  # the work is held: nothing can have ended it
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert ended == ["work"]


async def test_failures_of_the_work_propagate() -> None:
    async def work() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await await_to_end(work())


async def test_a_cancellation_wins_over_a_failure_that_follows_it() -> None:
    """Cancelled (a deadline), then the work fails: the caller sees the cancellation, so a deadline
    still ends as a timeout rather than as the work's error."""
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()
        raise OSError("disk gone")

    waiting = asyncio.ensure_future(await_to_end(work()))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
