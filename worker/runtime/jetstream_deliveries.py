"""What the JetStream intake keeps per command it serves, how it answers the server for a delivery
(:class:`Signals`), and the small Reply helpers it settles with.

A command may arrive more than once while it runs (a redelivery after ``ack_wait``, a re-published
copy): :class:`Running` holds every delivery of one command so a single run answers and settles
them all (worker/runtime/jetstream_intake.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from worker.runtime.dispatch import ERROR_CODE_HEADER, ERROR_HEADER, Job, describe_reply
from worker.runtime.jetstream_topology import ConsumerSpec

log = logging.getLogger("rory.worker.jetstream")

Answer = tuple[str, bytes, dict[str, str]]  # job id, encoded Reply, its headers
ACK_TIMEOUT = 2.0  # s: wait for the server to confirm an ack


@dataclass
class Delivery:
    """One delivery of a command: the message, its stream sequence, how often it was delivered."""

    msg: Msg
    stream_seq: int
    deliveries: int


@dataclass
class Running:
    """A command being served; further deliveries of the same command join it."""

    job: Job
    spec: ConsumerSpec
    deliveries: dict[int, Delivery]  # newest delivery per stream sequence
    closing: bool = False

    def attach(self, delivery: Delivery) -> None:
        self.deliveries[delivery.stream_seq] = delivery

    def same_command(self, job: Job, spec: ConsumerSpec) -> bool:
        """Whether ``job`` is another delivery of this command, not a different one reusing its id."""
        mine, theirs = self.job.command, job.command
        return spec.source == self.spec.source and (mine.op, mine.job_id) == (theirs.op, theirs.job_id)


class Signals:
    """How the intake answers the server for a delivery: ack, nak, term, in_progress.

    Each is counted in ``counters`` (the intake's, under "acked", "naked", "termed", "in_progress")
    once sent. A failure is only logged: the server redelivers after the ack wait whatever was lost.
    """

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters

    async def ack(self, delivery: Delivery) -> None:
        """Ack and wait for the server's confirmation (an unconfirmed one is sent once more)."""
        msg = delivery.msg
        try:
            await msg.ack_sync(timeout=ACK_TIMEOUT)
        except nats.errors.MsgAlreadyAckdError:
            return
        except Exception as error:  # unconfirmed: a redelivery is answered from the record
            log.warning("ack not confirmed", extra={"seq": delivery.stream_seq, "error": repr(error)})
            with contextlib.suppress(Exception):
                await msg.ack()
        self.counters["acked"] += 1

    async def progress(self, msg: Msg) -> None:
        await self._send("in_progress", msg.in_progress(), "in_progress", logging.DEBUG)

    async def term(self, msg: Msg) -> None:
        await self._send("term", msg.term(), "termed")

    async def nak(self, msg: Msg, delay: float) -> None:
        await self._send("nak", msg.nak(delay=delay if delay > 0 else None), "naked")

    async def nak_all(self, deliveries: Iterable[Delivery], delay: float) -> None:
        for delivery in list(deliveries):
            await self.nak(delivery.msg, delay)

    async def _send(
        self, name: str, send: Awaitable[None], counter: str, level: int = logging.WARNING
    ) -> None:
        try:
            await send
            self.counters[counter] += 1
        except Exception as error:
            log.log(level, f"{name} not sent", extra={"error": repr(error)})


def delivery_of(msg: Msg) -> Delivery:
    meta = msg.metadata
    return Delivery(msg, meta.sequence.stream, meta.num_delivered)


def failed_reply(reply: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """``reply`` turned into an error Reply (its result dropped)."""
    failed = {key: value for key, value in reply.items() if key != "result"}
    failed["ok"] = False
    failed["error"] = error
    return failed


def describe_error(error: Mapping[str, Any] | None) -> str | None:
    """How ``$SRV.STATS`` names an error (None: a success)."""
    return None if error is None else describe_reply({"ok": False, "error": error})


def reply_error(reply: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The error a Reply carries (encode() may have turned an unsendable success into a 500)."""
    if not reply.get("ok") and isinstance(reply.get("error"), dict):
        return reply["error"]
    return {
        "code": int(headers.get(ERROR_CODE_HEADER, "500")),
        "type": "INTERNAL",
        "message": headers.get(ERROR_HEADER, "reply could not be encoded"),
        "retryable": False,
    }


__all__ = [
    "ACK_TIMEOUT",
    "Answer",
    "Delivery",
    "Running",
    "Signals",
    "delivery_of",
    "describe_error",
    "failed_reply",
    "reply_error",
]
