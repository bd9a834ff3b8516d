"""Result records: the msgpack Reply of each command whose outcome is final, in the results bucket
(RORY_RESULTS): a success, or a run's terminal failure (4xx: bad input, missing key, conflict,
invalid data; ``terminal`` in worker/runtime/jetstream_settle.py). Retryable failures (5xx) are
never recorded: running again is what their retry is for.

Why: a command may be delivered more than once (a lost ack, a crash, a Manager re-publishing after
the duplicate window); the record lets every later delivery be answered without recomputing, with
the same Reply byte for byte (docs/reliability.md, "effectively-once results"). A failed run is
recorded too, because running it again would only fail again, after spending storage reads and
compute, and could even succeed against storage that changed meanwhile, giving one command two
outcomes. The record is *created*, never overwritten, so when two runs race the first to finish
wins and the other answers with the recorded Reply. Records expire with the bucket's TTL
(JETSTREAM_RESULT_TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.js.errors
from nats.js.kv import KeyValue

from schemas import codec, subjects
from schemas.envelopes import Command

RECORD_BUDGET = 10.0  # s: retries of the result-record write before the command is nak'd instead


class ResultRecords:
    """The results bucket as seen by one node (``node_id``) under one subject prefix."""

    def __init__(self, kv: KeyValue, *, prefix: str, node_id: str) -> None:
        self.kv = kv
        self.prefix = prefix
        self.node_id = node_id

    def key(self, source: str, command_id: str) -> str:
        """``<p>.<node|pool>.<command id>``: ``source`` is the node the command was addressed to."""
        return subjects.record_key(self.prefix, source, command_id)

    async def lookup(self, key: str) -> bytes | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value or None

    async def create(self, key: str, data: bytes) -> bytes | None:
        """Create the result record; the first writer wins.

        Returns None when ``data`` became the record, or the record another run stored first (a
        duplicate that ran concurrently elsewhere, or our own create whose confirmation was lost), so
        every Reply of a command carries the same result. Retries briefly: the server may be restarting.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + RECORD_BUDGET
        delay = 0.1
        while True:
            try:
                await self.kv.create(key, data)
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                exists = True
            except Exception:
                if loop.time() + delay > until:
                    raise
                exists = False
            if exists:
                with contextlib.suppress(Exception):
                    stored = await self.lookup(key)
                    if stored is not None:
                        return stored
            if loop.time() + delay > until:
                raise TimeoutError("the result record could be neither created nor read")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @staticmethod
    def decode(data: bytes) -> dict[str, Any] | None:
        """The recorded Reply as a map, or None when the record is not one."""
        try:
            stored = codec.decode(data, json_mode=False, max_bytes=max(len(data), 1))
        except Exception:
            return None
        return stored if isinstance(stored, dict) else None

    def mismatch(self, command: Command, source: str, data: bytes) -> str | None:
        """Why a stored record is not the answer to ``command``, or None when it is.

        It must be a Reply to this very command: same ``op``, ``in_reply_to`` = the command's id,
        ``job_id`` = the command's job, and for a node's own command (``source`` not the pool) written
        by this node. So a record that is not this command's is never sent as its answer.
        """
        try:
            stored = codec.decode(data, json_mode=False, max_bytes=max(len(data), 1))
        except Exception:
            return "undecodable"
        if not isinstance(stored, dict):
            return "not a Reply"
        expected = {
            "op": command.op,
            "in_reply_to": command.id,
            "job_id": command.job_id or command.id,
        }
        if source != subjects.JOBS_POOL_TOKEN:
            expected["node_id"] = self.node_id
        for field_name, value in expected.items():
            if stored.get(field_name) != value:
                return field_name
        return None


__all__ = ["RECORD_BUDGET", "ResultRecords"]
