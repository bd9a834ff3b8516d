"""Heartbeats: one msgpack Heartbeat every HEARTBEAT_INTERVAL seconds, from their own task.

Beats follow a fixed schedule (no drift from the time spent publishing). ``seq`` starts at 1 and
grows by one per beat; a beat that cannot be sent because the connection is down is skipped but its
number is used, so a Manager sees the gap. Load is measured with psutil over the worker process and
its compute processes (CPU percent since the previous beat, resident memory).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psutil

log = logging.getLogger("rory.worker.heartbeat")


class LoadSampler:
    """CPU percent and RSS (MiB) of this process plus the given child pids.

    psutil reads /proc for each process (6-7 ms measured), so :meth:`sample_off_loop` runs it on a
    thread of the sampler's own: asyncio's default executor also serves storage and transfer work,
    and a beat queued behind that was seen 3 s late.
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def sample_off_loop(self, child_pids: Iterable[int] = ()) -> dict[str, float]:
        """:meth:`sample` on the sampler's thread (one call at a time: ``_procs`` is not shared)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rory-load")
        pids = list(child_pids)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.sample, pids)

    def close(self) -> None:
        """Let the sampler's thread go (a later sample starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
                proc.cpu_percent(None)  # first call primes the counter
            except psutil.Error:
                return None
            self._procs[pid] = proc
        return proc

    def sample(self, child_pids: Iterable[int] = ()) -> dict[str, float]:
        pids = {os.getpid(), *child_pids}
        for gone in set(self._procs) - pids:
            del self._procs[gone]
        cpu = 0.0
        rss = 0
        for pid in pids:
            proc = self._proc(pid)
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        return {"cpu": round(cpu, 1), "rss_mb": round(rss / (1024 * 1024), 1)}


class Heartbeater:
    """Runs ``publish(await build(seq))`` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        interval: float,
        build: Callable[[int], Awaitable[bytes]],
        publish: Callable[[bytes], Awaitable[Any]],
        connected: Callable[[], bool],
    ) -> None:
        self.interval = interval
        self._build = build
        self._publish = publish
        self._connected = connected
        self.seq = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rory-heartbeat")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.seq += 1
            if self._connected():
                try:
                    await self._publish(await self._build(self.seq))
                except Exception as error:  # a failed beat must never end the loop
                    log.warning("heartbeat not sent", extra={"seq": self.seq, "error": repr(error)})
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a stalled loop): resynchronise instead of bursting
                next_at = loop.time() + self.interval
                delay = self.interval
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["Heartbeater", "LoadSampler"]
