"""Capacity accounting shared by both intakes: ``WORKER_CAPACITY`` slots, each running or reserved.

The dispatcher (worker/runtime/dispatch.py) owns one :class:`Slots`; the core request-reply intake
uses it through :meth:`Dispatcher.prepare` and the JetStream intake (worker/runtime/jetstream.py) is
handed the same object. Every change to the counts goes through a method here, so no intake writes
another object's counters, and whoever frees a slot wakes the pullers waiting for one.

Why reservations: the JetStream intake reserves slots *before* it asks the server for messages
(batch = the reserved slots), so the server never hands this worker a message it cannot start now
(docs/reliability.md, "Pull only what can start"). A reservation whose pull request has not brought
a message yet is idle; a core command that finds no free slot may take one idle reserved slot back
(:meth:`Slots.admit`), and the delivery that request may still bring then finds no reservation and is
handed back (or takes a slot freed meanwhile).

Why watchers: the core pool intake (worker/runtime/pool_gate.py) leaves the pool queue group while no
core command could be admitted and rejoins when one could; it learns of every change
through :meth:`Slots.watch` instead of polling or reading the counters' private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable


class Reservation:
    """Slots reserved for one pull request; ``unused`` of them still wait for a message."""

    __slots__ = ("unused",)

    def __init__(self, unused: int) -> None:
        self.unused = unused

    def take(self) -> bool:
        """A message arrived for this request: it holds one of the slots (still counted as reserved
        until :meth:`Slots.admit` or :meth:`Slots.unreserve`). False when none is left (reclaimed)."""
        if self.unused <= 0:
            return False
        self.unused -= 1
        return True


class Slots:
    """``capacity`` slots: ``inflight`` run admitted jobs, ``reserved`` wait for pulled messages.

    Pullers queue for free slots first come, first served: the one at the head takes its share (all
    of them when nobody else waits), so two consumers both get pulled when slots are scarce; a puller
    whose request ended queues again at the tail, so with one slot the consumers take turns.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._inflight = 0
        self._reserved = 0  # slots promised to pull requests or held by a delivery not yet admitted
        self._open: list[Reservation] = []  # reservations whose idle slots a core command may reclaim
        self._queue: list[object] = []
        self._changed = asyncio.Event()
        self._closed = False
        self._watchers: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ reading
    @property
    def inflight(self) -> int:
        """Slots running an admitted job."""
        return self._inflight

    @property
    def reserved(self) -> int:
        """Slots reserved for pull requests (or held by a delivery on its way to being admitted)."""
        return self._reserved

    @property
    def free(self) -> int:
        """Slots neither running a job nor reserved."""
        return self.capacity - self._inflight - self._reserved

    @property
    def admittable(self) -> bool:
        """Whether :meth:`admit` (not ``reserved``) would take a slot now: a free one, or an idle
        reserved one it may reclaim. The pool gate (worker/runtime/pool_gate.py) subscribes while this
        holds, so the server offers pool commands only to a worker that can start them."""
        if self.free > 0:
            return True
        return self._inflight < self.capacity and any(r.unused > 0 for r in self._open)

    # ------------------------------------------------------------------ watchers
    def watch(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """Call ``watcher()`` after every change of the counts; returns the function that stops it.

        Watchers run synchronously inside the change (e.g. inside :meth:`admit` on the message
        callback), so they must be cheap and must not raise: they read the public properties and
        schedule whatever work follows.
        """
        self._watchers.append(watcher)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._watchers.remove(watcher)

        return unwatch

    def _freed(self) -> None:
        """Slots came free: wake the pullers waiting in :meth:`acquire`, then the watchers."""
        self._changed.set()
        self._notify()

    def _notify(self) -> None:
        for watcher in tuple(self._watchers):
            watcher()

    # ------------------------------------------------------------------ jobs
    def admit(self, *, reserved: bool = False) -> bool:
        """Take a slot for a job; False when none is free (the caller answers 503 BUSY).

        ``reserved``: the caller holds a reserved slot for it (a delivery of a pull request), which
        becomes the job's. Otherwise a free slot is taken, or else one idle reserved slot.
        """
        if reserved:
            self._reserved -= 1
        elif self.free <= 0 and (self._inflight >= self.capacity or not self._reclaim()):
            return False
        self._inflight += 1
        self._notify()
        return True

    def finish(self) -> None:
        """An admitted job ended (or will not run): its slot is free again."""
        self._inflight -= 1
        self._freed()

    def _reclaim(self) -> bool:
        for reservation in self._open:
            if reservation.take():
                self._reserved -= 1
                return True
        return False

    # ------------------------------------------------------------------ reservations
    async def acquire(self, who: object, limit: int | None = None) -> Reservation | None:
        """Reserve at least one slot, at most ``limit``; None once closed. End it with :meth:`end`."""
        self._queue.append(who)
        try:
            while not self._closed:
                free = self.free
                if free > 0 and self._queue[0] is who:
                    share = max(1, math.ceil(free / len(self._queue)))
                    if limit is not None:
                        share = min(share, limit)
                    self._reserved += share
                    reservation = Reservation(share)
                    self._open.append(reservation)
                    self._notify()
                    return reservation
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)
            return None
        finally:
            self._queue.remove(who)
            self._changed.set()

    def end(self, reservation: Reservation) -> None:
        """The pull request is over: give back the slots no message came for."""
        with contextlib.suppress(ValueError):
            self._open.remove(reservation)
        unused, reservation.unused = reservation.unused, 0
        if unused:
            self._reserved -= unused
            self._freed()

    def reserve_one(self) -> bool:
        """Reserve one slot now if one is free (for a delivery no reservation covers)."""
        if self._closed or self.free <= 0:
            return False
        self._reserved += 1
        self._notify()
        return True

    def unreserve(self) -> None:
        """A delivery holding a reserved slot will not be admitted (rejected, stopping, not a job)."""
        self._reserved -= 1
        self._freed()

    def close(self) -> None:
        """No more reservations (the durable intake stops pulling); waiting pullers get None."""
        self._closed = True
        self._changed.set()


__all__ = ["Reservation", "Slots"]
