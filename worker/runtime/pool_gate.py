"""The pool subscription follows capacity: a worker leaves the pool queue group while it is full.

Why: NATS hands each message of a queue group to a member picked at random and knows
nothing of their slots, so a full worker was picked while others sat idle and answered 503 BUSY; the
requester retried, often into another full worker. Measured on 16 cores, 8 workers gave 4.7x one.

What the gate does: it watches the dispatcher's :class:`~worker.runtime.slots.Slots`
(worker/runtime/slots.py). When no core command could be admitted (``Slots.admittable`` is false) it
drains the pool subscription: UNSUB, so the server offers pool commands only to the other members.
When a slot frees it subscribes again, with the same subject and the same queue group. One task makes
every change, one at a time, and looks at the slots again after each, so a burst of changes ends in
the state the slots are in, never with two subscriptions.

The race: between the admit that took the last slot and the server reading the UNSUB, the server may
still send pool commands here. Such a command is *parked*: it waits (at most ``park_s`` from its
receipt) for a slot to free, then goes through the usual admission; past the bound it is answered 503
BUSY as before. The drain waits for the parked commands, so the subscription comes back only after
they had their turn at the freed slot.

When every worker is full the queue group has no member left: a pool request gets the server's
no-responders status at once instead of a BUSY Reply. Both mean "nothing ran, retry"; the data owner
retries both (dataowner/nats_port.py). Node commands (``<p>.worker.<node>.cmd.>``) are not gated:
only this node can serve them, so a full worker still answers them BUSY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from worker.runtime.slots import Slots

log = logging.getLogger("rory.worker.pool")

#: How long a pool command that reached a full worker waits for a slot before it is answered BUSY.
#: Short on purpose: while it waits here another worker may sit idle, and the requester's own retry
#: (the data owner's first comes after 0.1-0.2 s, dataowner/port.py RetryPolicy) would find that one.
#: benchmarks/bench_pool.py --work sleep measured 2 workers x 1 slot at 0.99x of 1 x 2 with 0.05 s
#: and 0.85x with 1 s (commands waited a whole job at one worker while the other was free).
PARK_S = 0.05
#: Bound on one UNSUB + flush (a disconnected client cannot flush; the subscription is then dropped).
DRAIN_TIMEOUT_S = 5.0


class PoolGate:
    """Owns the pool queue subscription of one worker and keeps it only while a slot can be taken.

    ``callback``: the service's command callback (worker/runtime/service.py ``_on_command``), which
    validates, admits and answers. ``accepting``: false once the worker stops (a parked command then
    stops waiting and is answered by the callback, BUSY "stopping").
    """

    def __init__(
        self,
        nc: Client,
        subject: str,
        queue: str,
        callback: Callable[[Msg], Awaitable[None]],
        slots: Slots,
        *,
        accepting: Callable[[], bool],
        park_s: float | None = None,
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.queue = queue
        self.park_s = PARK_S if park_s is None else park_s  # read here, so tests can raise PARK_S
        self.withdrawals = 0  # times the pool subscription was drained because the worker was full
        self.restores = 0  # times it was subscribed again
        self.parked = 0  # pool commands that arrived while full and waited for a slot
        self.parked_busy = 0  # ... of which no slot freed within park_s (answered BUSY)
        self._callback = callback
        self._slots = slots
        self._accepting = accepting
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unwatch: Callable[[], None] | None = None
        self._closed = False

    @property
    def subscribed(self) -> bool:
        """Whether the server currently offers this worker pool commands."""
        return self._sub is not None

    def stats(self) -> dict[str, int | bool]:
        """Counters for health data and benchmarks."""
        return {
            "subscribed": self.subscribed,
            "withdrawals": self.withdrawals,
            "restores": self.restores,
            "parked": self.parked,
            "parked_busy": self.parked_busy,
        }

    async def open(self) -> None:
        """Subscribe (the worker starts with free slots) and follow the slots from now on."""
        self._sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_msg)
        self._unwatch = self._slots.watch(self._on_slots)
        self._on_slots()

    async def close(self) -> None:
        """Stop following the slots and drain the subscription (what already arrived is handled)."""
        self._closed = True
        if self._unwatch is not None:
            self._unwatch()
        self._wake.set()
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            await self._drain(sub)

    async def settled(self) -> None:
        """Wait until the subscription matches the slots (the last SUB or UNSUB was flushed).

        For tests and benchmarks that must know the server has seen the change, not only the worker.
        """
        while (task := self._task) is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    # ------------------------------------------------------------------ following the slots
    def _on_slots(self) -> None:
        """A Slots watcher: wake parked commands; start the reconciling task if the state is wrong."""
        self._wake.set()
        if self._closed or self._slots.admittable == (self._sub is not None):
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconcile())

    async def _reconcile(self) -> None:
        while not self._closed:
            want = self._slots.admittable
            if want and self._sub is None:
                try:
                    self._sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_msg)
                except Exception as error:  # closed connection: nothing to serve any more
                    log.warning("pool subscription not restored", extra={"error": repr(error)})
                    return
                self.restores += 1
                # Two flushes: nats-py writes a PING ahead of the queued SUB (see _drain), so only the
                # second PONG says the server has the SUB; settled() relies on it.
                with contextlib.suppress(Exception):
                    await self.nc.flush(timeout=DRAIN_TIMEOUT_S)
                    await self.nc.flush(timeout=DRAIN_TIMEOUT_S)
            elif not want and self._sub is not None:
                sub, self._sub = self._sub, None
                self.withdrawals += 1
                await self._drain(sub)
            else:
                return

    async def _drain(self, sub: Subscription) -> None:
        """UNSUB, then handle what the server had already sent, then forget the subscription.

        Why not ``sub.drain()`` alone: in nats-py 2.16 it queues its UNSUB in the pending buffer but
        writes its PING straight to the socket, so the PONG can come back before the server has read
        the UNSUB; drain then forgets the subscription, and a command the server routed to it in
        between is dropped (a requester timed out in benchmarks/bench_pool.py). So the UNSUB goes
        first, through nats-py's own ``Client._send_unsubscribe`` (an internal, like the re-SUB in
        worker/runtime/health.py), and a flush makes the flusher write it; drain's UNSUB is then a
        no-op for the server and its PING follows ours, so its PONG means every command routed here
        has arrived and is handled before the subscription is forgotten.
        """
        with contextlib.suppress(Exception):  # disconnected: drain below still hands over the queue
            await self.nc._send_unsubscribe(sub._id)
            await self.nc.flush(timeout=DRAIN_TIMEOUT_S)
        try:
            await asyncio.wait_for(sub.drain(), DRAIN_TIMEOUT_S)
        except Exception as error:  # disconnected or draining: the server drops the interest anyway
            log.debug("pool subscription drain failed", extra={"error": repr(error)})
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        # A drain that timed out leaves the subscription closed for nats-py's API (unsubscribe raises)
        # but still in the client's table, and a reconnect would subscribe it again: a hidden second
        # pool subscription that the gate never withdraws. Forget it for good (a nats-py internal);
        # its message task keeps running, so commands already queued to it are still handled.
        self.nc._remove_sub(sub._id)

    # ------------------------------------------------------------------ messages
    async def _on_msg(self, msg: Msg) -> None:
        """Park a command that reached this worker while full (the race above), then dispatch it."""
        if not self._slots.admittable and self._accepting():
            self.parked += 1
            loop = asyncio.get_running_loop()
            until = loop.time() + self.park_s
            while not self._closed and self._accepting():
                self._wake.clear()
                if self._slots.admittable:
                    break
                left = until - loop.time()
                if left <= 0:
                    self.parked_busy += 1
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
        await self._callback(msg)


__all__ = ["DRAIN_TIMEOUT_S", "PARK_S", "PoolGate"]
