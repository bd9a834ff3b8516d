"""The production worker port: Commands over NATS, with retries under one command id.

Two transports:

* ``request`` (core request-reply, ``RORY_JOBS_MODE=core``): the command goes to
  ``<p>.worker.<node>.cmd.<op>`` or the pool and the reply comes back on the request's inbox.
* ``jobs`` (``RORY_JOBS_MODE=jetstream``): the command is published to the RORY_JOBS stream with
  ``Nats-Msg-Id`` = its id and the Reply is read from ``<p>.results.*.<job_id>``. The stream drops a
  re-published id inside its duplicate window and the worker answers a later one from its result
  record (worker/runtime/jetstream.py), so a re-sent command is never run twice.

What is retried (``RetryPolicy``: ``retries`` more attempts, back-off doubling from ``backoff``,
capped, with jitter), always re-sending the SAME command id:

* ``NoRespondersError`` (nobody subscribed: nothing ran; a worker restarting, a node not up yet);
* an error Reply with ``retryable: true`` (503 busy / storage unavailable, 504 deadline): the
  worker's steps leave their inputs untouched when they fail (worker/handlers/clustering.py writes
  the next round's input last), so the retry computes the same round;
* a request timeout (no reply within ``attempt_timeout``): on the ``jobs`` transport always; on
  ``request`` only for idempotent commands, because a core worker may still be running the first
  copy and a secure k-means step re-run after it completed would start from its own output.

Each retry is reported to the call's observer (the job shows it in its progress output).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from dataowner.errors import NoWorkerError, WorkerError
from dataowner.port import Outgoing, RetryEvent, RetryPolicy, WorkerPort, raise_error
from schemas import codec, subjects
from schemas.envelopes import Reply

__all__ = ["NatsPort", "Transport"]

Transport = Literal["request", "jobs"]
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Extra seconds an attempt waits beyond the command's deadline, so the worker's 504 arrives first.
DEADLINE_MARGIN = 5.0


class _Retry(Exception):
    """One attempt failed in a way the policy may retry."""

    def __init__(self, reason: str, final: Exception) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


class NatsPort(WorkerPort):
    """:class:`dataowner.port.WorkerPort` over a NATS connection.

    ``nats``: server URL(s), or a connected ``nats.aio.client.Client`` (not closed by :meth:`close`).
    ``attempt_timeout``: seconds to wait for one attempt's reply (default: the command's deadline
    plus a margin).
    """

    def __init__(
        self,
        nats: str | Sequence[str] | Any,
        *,
        prefix: str = "rory",
        node: str | None = None,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        transport: Transport = "request",
        attempt_timeout: float | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        subjects.pool_cmd(prefix, "probe")  # validates the prefix early
        if node is not None:
            subjects.node_cmd(prefix, node, "probe")
        if transport not in ("request", "jobs"):
            raise ValueError(f"transport must be 'request' or 'jobs', got {transport!r}")
        self._nats_arg = nats
        self.nc: Any = None if isinstance(nats, str | list | tuple) else nats
        self._owns_nc = self.nc is None
        self.prefix = prefix
        self.node = node
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.transport: Transport = transport
        self.attempt_timeout = attempt_timeout
        self._connect_options = connect_options or {}

    async def connect(self) -> NatsPort:
        if self.nc is None:
            import nats

            servers = [self._nats_arg] if isinstance(self._nats_arg, str) else list(self._nats_arg)
            options = {"connect_timeout": 5, "max_reconnect_attempts": 5, **self._connect_options}
            self.nc = await nats.connect(servers=servers, **options)
        return self

    async def close(self) -> None:
        if self.nc is not None and self._owns_nc:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None

    def subject(self, op: str, node: str | None = None) -> str:
        target = node if node is not None else self.node
        return subjects.node_cmd(self.prefix, target, op) if target else subjects.pool_cmd(self.prefix, op)

    async def prepare(self) -> None:
        await self.connect()

    async def exchange(self, command: Outgoing) -> Reply:
        deadline = command.deadline_s if command.deadline_s is not None else self.timeout
        if self.transport == "jobs":
            return await self._jobs(command, deadline)
        return await self._requests(command, deadline)

    def _limit(self, deadline: float) -> float:
        return self.attempt_timeout if self.attempt_timeout is not None else deadline + DEADLINE_MARGIN

    async def _retrying(self, command: Outgoing, attempt: Callable[[], Awaitable[Reply]]) -> Reply:
        """Run ``attempt`` until it returns a Reply; after a :class:`_Retry` wait out the policy's
        back-off (reported to the observer) and run it again, under the same command id."""
        for n in range(self.retry.retries + 1):
            try:
                return await attempt()
            except _Retry as retry:
                if n >= self.retry.retries:
                    raise retry.final from None
                delay = self.retry.delay(n)
                if command.observer is not None:
                    event = RetryEvent(command.op, command.command_id, n + 1, delay, retry.reason)
                    command.observer.retry(event)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ core request-reply
    async def _requests(self, command: Outgoing, deadline: float) -> Reply:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        op, record = command.op, command.record
        subject = self.subject(op, command.node)
        limit = self._limit(deadline)

        async def attempt() -> Reply:
            data = command.attempt(command.envelope(deadline))
            try:
                msg = await self.nc.request(
                    subject, data, timeout=limit, headers={codec.CONTENT_TYPE: codec.MSGPACK}
                )
            except NoRespondersError:
                # A pool worker with every slot taken leaves the queue group until one frees
                # (worker/runtime/pool_gate.py), so "nobody" may mean "everybody is busy".
                error = NoWorkerError(f"no worker is listening on {subject!r} (none running, or all busy)")
                raise _Retry("no responders", error) from None
            except NatsTimeout:
                error = WorkerError(op, 504, "TIMEOUT", f"no reply within {limit:g} s", True)
                if not command.idempotent:
                    raise error from None  # the first copy may still run: a re-send could apply twice
                raise _Retry("timeout", error) from None
            record.bytes_down += len(msg.data)
            raw = codec.decode(msg.data, json_mode=codec.is_json(msg.headers), max_bytes=MAX_REPLY_BYTES)
            reply = Reply.model_validate(raw)
            if reply.ok or reply.error is None or not reply.error.retryable:
                return reply
            raise _Retry(f"{reply.error.code} {reply.error.type}", raise_error(op, reply))

        return await self._retrying(command, attempt)

    # ------------------------------------------------------------------ JetStream jobs
    async def _jobs(self, command: Outgoing, deadline: float) -> Reply:
        from nats.errors import NoRespondersError

        from worker.runtime.jetstream import publish_job

        job = command.job_id or command.command_id
        target = command.node if command.node is not None else self.node
        replies: asyncio.Queue[Reply] = asyncio.Queue()

        async def on_result(msg: Any) -> None:
            with contextlib.suppress(Exception):  # someone else's garbage on our subject is ignored
                raw = codec.decode(msg.data, json_mode=codec.is_json(msg.headers), max_bytes=MAX_REPLY_BYTES)
                reply = Reply.model_validate(raw)
                if reply.in_reply_to == command.command_id:
                    command.record.bytes_down += len(msg.data)
                    replies.put_nowait(reply)

        js = self.nc.jetstream()
        envelope = command.envelope(deadline)
        limit = self._limit(deadline)

        async def attempt() -> Reply:
            command.attempt(envelope)  # counted: publish_job encodes it the same way
            try:
                await publish_job(js, self.prefix, target, envelope)
            except NoRespondersError:
                raise _Retry(
                    "no responders", NoWorkerError(f"no JetStream stream takes jobs of {self.prefix!r}")
                ) from None
            try:
                return await asyncio.wait_for(replies.get(), limit)
            except TimeoutError:
                error = WorkerError(command.op, 504, "TIMEOUT", f"no reply within {limit:g} s", True)
                raise _Retry("timeout", error) from None

        sub = await self.nc.subscribe(subjects.results_of_job(self.prefix, job), cb=on_result)
        try:
            await self.nc.flush()
            return await self._retrying(command, attempt)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
