"""Answers to re-sent commands: a command id that is running or finished lately is not run again.

A client that loses a reply (a timeout, a reconnect) sends the same command again with the same id.
Running a secure k-means step twice is not harmless: step 1 rewrites the centroids it reads (a second
run sees no shift and reports a false convergence) and step 2 adds the shift again. So a worker keeps,
per command id, the future of the running command and then its final Reply for ``ttl`` seconds: a
duplicate waits for, or is answered from, the first run. Retryable failures (503, 504) are forgotten
at once, because running those again is exactly what a retry is for. The JetStream intake has its own
durable record (results key-value bucket); this cache covers request-reply mode on the same instance.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

Reply = dict[str, Any]


@dataclass
class _Entry:
    op: str
    job_id: str
    future: asyncio.Future[Reply]
    finished_at: float | None = field(default=None)


class RecentReplies:
    """Bounded (``capacity`` ids) and short-lived (``ttl`` seconds) memory of command outcomes."""

    def __init__(self, *, capacity: int = 4096, ttl: float = 600.0) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            finished = oldest.finished_at
            if len(self._entries) <= self.capacity and (finished is None or now - finished < self.ttl):
                break
            self._entries.popitem(last=False)

    def claim(self, command_id: str, op: str, job_id: str) -> asyncio.Future[Reply] | None:
        """None: the caller runs the command (and must call :meth:`finish`). Else: the first run's answer.

        An id reused for another operation or job is a different command: it runs (and replaces
        the memory of the old one).
        """
        self._expire(time.monotonic())
        entry = self._entries.get(command_id)
        if entry is not None and entry.op == op and entry.job_id == job_id:
            return entry.future
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._entries[command_id] = _Entry(op, job_id, future)
        self._entries.move_to_end(command_id)
        return None

    def finish(self, command_id: str, reply: Reply | None) -> None:
        """Record the first run's Reply; None (the run was cancelled) forgets the id."""
        entry = self._entries.get(command_id)
        if entry is None:
            return
        if reply is None:
            entry.future.cancel()
            del self._entries[command_id]
            return
        if not entry.future.done():
            entry.future.set_result(reply)
        error = reply.get("error")
        if isinstance(error, dict) and error.get("retryable"):
            del self._entries[command_id]  # a retry must run again
        else:
            entry.finished_at = time.monotonic()


__all__ = ["RecentReplies"]
