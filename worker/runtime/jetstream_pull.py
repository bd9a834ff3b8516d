"""Pulling: one lane per durable consumer, never asking for more messages than reserved slots.

Slots are reserved (worker/runtime/slots.py) before a pull request is sent (batch = the reserved
slots) and stay reserved until the request ends (all delivered, the server's 404/408, or a
client-side timeout), so the server never hands this worker more messages than it can start. A lane
with work drains with ``no_wait`` requests (answered at once, nothing held idle); an empty lane
long-polls one slot only while every lane is empty, else looks again every :data:`POLL_INTERVAL`.
Status messages carry the request's own reply subject; deliveries carry only the command's subject
and count against the current request. A delivery no reservation covers (a core command reclaimed
its slot, or its request was given up after a reconnect) takes a free slot if there is one, else it
is nak'd at once for another worker; since requests are for one message or answered at once, it
cannot come back into the request it came from.

What to do with a delivered message is the intake's business (:class:`Owner`, implemented by
``JetStreamIntake`` in worker/runtime/jetstream_intake.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from worker.runtime.jetstream_topology import ConsumerSpec
from worker.runtime.slots import Reservation, Slots

log = logging.getLogger("rory.worker.jetstream")

PULL_EXPIRES = 1.0  # s: life of one pull request (how long a reservation may sit idle)
PULL_MARGIN = 1.0  # s: a pull with no answer this long after ``expires`` is given up (server gone)
POLL_INTERVAL = 0.2  # s: how often an empty lane looks again while another lane is busy
STATUS_HEADER = "Status"


class Owner(Protocol):
    """What the lanes need from the intake they pull for."""

    @property
    def stopping(self) -> bool: ...

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up when the intake stops."""

    async def check_consumer(self, spec: ConsumerSpec) -> None:
        """Pulls go unanswered or fail: see whether the consumer still exists."""

    def accept(self, msg: Msg, spec: ConsumerSpec) -> None:
        """Take a delivered message that holds a reserved slot (synchronous: called per message)."""

    def nak_now(self, msg: Msg) -> None:
        """Hand a message back for another worker: no slot for it."""


@dataclass
class _Pull:
    """One outstanding pull request: its reply subject, the slots it still holds, how it ended."""

    reply: str
    reservation: Reservation  # slots not used yet (a core command may reclaim some)
    batch: int = 0  # messages asked for; the request is over once this many arrived
    ends: float = 0.0  # loop time when the server gives up on the request (0: answered at once)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: str | None = None
    description: str = ""
    delivered: int = 0


class Lanes:
    """The lanes of one intake: they share the slots and know whether the others have work."""

    def __init__(self, *, nc: Client, slots: Slots, stream: str, owner: Owner) -> None:
        self.nc = nc
        self.slots = slots
        self.stream = stream
        self.owner = owner
        self._lanes: list[Lane] = []

    async def start(self, specs: Iterable[ConsumerSpec]) -> None:
        for spec in specs:
            lane = Lane(self, spec)
            await lane.start()
            self._lanes.append(lane)

    def others_busy(self, lane: Lane) -> bool:
        return any(not other.idle for other in self._lanes if other is not lane)

    def abandon(self) -> None:
        """Give up every outstanding request (after a reconnect the server may have forgotten them)."""
        for lane in self._lanes:
            lane.abandon()

    def open_until(self) -> float:
        """Loop time until which one of our requests may still take messages (0: none is open)."""
        return max((lane.current.ends for lane in self._lanes if lane.current is not None), default=0.0)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [lane.task for lane in self._lanes if lane.task is not None]

    async def unsubscribe(self) -> None:
        """Unsubscribe the pull inboxes (before the connection drains: docs/original-rory.md)."""
        for lane in self._lanes:
            await lane.unsubscribe()


class Lane:
    """Pulls one durable consumer, one request at a time, never more messages than reserved slots.

    A lane that just delivered messages is *busy*: it drains with ``no_wait`` requests (batch = its
    share of the free slots), which the server answers at once, so no slot sits reserved while
    another lane has work. A lane that came back empty is *idle*: it long-polls (one slot, expiry
    PULL_EXPIRES) only while every lane is idle, and otherwise looks again with a one-slot
    ``no_wait`` request every POLL_INTERVAL. Requests of one message or answered at once also mean
    that a message handed back (nak) can never be redelivered into the request it came from.
    """

    def __init__(self, lanes: Lanes, spec: ConsumerSpec) -> None:
        self.lanes = lanes
        self.spec = spec
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{lanes.stream}.{spec.name}"
        self.inbox = ""
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.current: _Pull | None = None
        self.idle = True
        self._count = 0

    async def start(self) -> None:
        nc = self.lanes.nc
        self.inbox = nc.new_inbox()
        self.sub = await nc.subscribe(f"{self.inbox}.*", cb=self._on_msg)
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"pull-{self.spec.name}")

    async def unsubscribe(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()

    async def _loop(self) -> None:
        lanes, owner, slots = self.lanes, self.lanes.owner, self.lanes.slots
        silent = 0
        while not owner.stopping:
            if self.idle and lanes.others_busy(self):
                await owner.pause(POLL_INTERVAL)
                if owner.stopping:
                    break
            reservation = await slots.acquire(self, 1 if self.idle else None)
            if reservation is None:
                break
            batch = reservation.unused
            wait = self.idle and not lanes.others_busy(self)
            self._count += 1
            pull = _Pull(f"{self.inbox}.{self._count}", reservation, batch)
            self.current = pull
            if wait:
                request: dict[str, Any] = {"batch": batch, "expires": int(PULL_EXPIRES * 1e9)}
                pull.ends = asyncio.get_running_loop().time() + PULL_EXPIRES
            else:
                request = {"batch": batch, "no_wait": True}
            sent = False
            try:
                await lanes.nc.publish(self.next_subject, json.dumps(request).encode(), reply=pull.reply)
                sent = True
                await asyncio.wait_for(pull.done.wait(), (PULL_EXPIRES if wait else 0) + PULL_MARGIN)
            except TimeoutError:
                pass
            except Exception as error:
                log.warning("pull request failed", extra={"consumer": self.spec.name, "error": repr(error)})
            finally:
                self.current = None
                slots.end(reservation)
            if not sent:
                await owner.pause(PULL_EXPIRES)  # connection closed or closing: do not spin
                continue
            self.idle = pull.delivered < pull.batch  # fewer than asked for: the consumer is empty now
            if pull.status is None and not pull.delivered:
                silent += 1  # no answer at all: server restarting, or our consumer is gone
                if silent % 3 == 0 and not owner.stopping:
                    await owner.check_consumer(self.spec)
            else:
                silent = 0
            if pull.status is not None and pull.status not in ("404", "408") and not owner.stopping:
                log.warning(
                    "pull request ended",
                    extra={
                        "consumer": self.spec.name,
                        "status": pull.status,
                        "description": pull.description,
                    },
                )
                if pull.status == "503" or "deleted" in pull.description.lower():
                    await owner.check_consumer(self.spec)  # 503: no responders, the consumer is gone
                await owner.pause(0.5)  # do not spin on a persistent error

    def abandon(self) -> None:
        """Give up the outstanding request now (after a reconnect its server side may be gone)."""
        pull = self.current
        if pull is not None and not pull.done.is_set():
            pull.done.set()

    async def _on_msg(self, msg: Msg) -> None:
        # Status messages (408 expired, 409 ...) arrive on the request's own reply subject, so they
        # are matched to it; deliveries carry the command's subject, and count against the current
        # request (one at a time), or, beyond its slots, take a free slot or go back at once.
        pull = self.current
        headers = msg.headers
        if not msg.reply and headers and headers.get(STATUS_HEADER):
            status = headers[STATUS_HEADER]
            if status != "100" and pull is not None and msg.subject == pull.reply:  # 100: heartbeat
                pull.status = status
                pull.description = str(headers.get("Description") or "")
                pull.done.set()
            return
        covered = False
        if pull is not None:
            pull.delivered += 1
            covered = pull.reservation.take()
            if pull.delivered >= pull.batch:
                pull.done.set()  # the server considers the request complete
        owner = self.lanes.owner
        if covered:
            owner.accept(msg, self.spec)
        elif self.lanes.slots.reserve_one():
            owner.accept(msg, self.spec)  # late delivery of an old request, and a slot is free
        else:
            owner.nak_now(msg)


__all__ = ["POLL_INTERVAL", "PULL_EXPIRES", "PULL_MARGIN", "Lane", "Lanes", "Owner"]
