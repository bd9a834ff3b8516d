"""Capacity accounting shared by both intakes (worker/runtime/slots.py), without a server."""

from __future__ import annotations

import asyncio

from worker.runtime.slots import Slots


def test_core_admission_takes_free_slots_then_refuses() -> None:
    slots = Slots(2)
    assert slots.admit() and slots.admit()
    assert (slots.inflight, slots.reserved, slots.free) == (2, 0, 0)
    assert not slots.admit()  # 503 BUSY
    slots.finish()
    assert slots.free == 1 and slots.admit()


async def test_a_reservation_is_shared_out_and_given_back() -> None:
    slots = Slots(3)
    first = await slots.acquire("node")
    assert first is not None and first.unused == 3 and slots.reserved == 3 and slots.free == 0
    assert first.take()  # a message arrived: its slot stays reserved until it is admitted
    slots.end(first)  # the request ended: the two unused slots come back
    assert (slots.reserved, first.unused) == (1, 0)
    assert slots.admit(reserved=True)  # the delivery's reserved slot becomes the job's
    assert (slots.inflight, slots.reserved, slots.free) == (1, 0, 2)


async def test_a_core_command_reclaims_an_idle_reserved_slot() -> None:
    slots = Slots(1)
    reservation = await slots.acquire("pool", 1)
    assert reservation is not None and slots.free == 0
    assert slots.admit()  # no free slot, but an idle reserved one
    assert (slots.inflight, slots.reserved, reservation.unused) == (1, 0, 0)
    assert not reservation.take()  # the delivery it may still bring finds no reservation
    assert not slots.reserve_one()  # ... and no free slot: it is handed back
    assert not slots.admit()  # nothing left to reclaim
    slots.end(reservation)
    assert slots.reserved == 0


async def test_a_running_job_is_never_reclaimed() -> None:
    slots = Slots(1)
    reservation = await slots.acquire("node")
    assert reservation is not None and reservation.take()
    assert not slots.admit()  # the reserved slot is held by a delivery, not idle
    slots.unreserve()  # that delivery was refused
    assert slots.free == 1


async def test_waiting_pullers_share_and_take_turns() -> None:
    slots = Slots(2)
    assert slots.admit() and slots.admit()
    waiters = [asyncio.ensure_future(slots.acquire(name)) for name in ("node", "pool")]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    slots.finish()  # one slot frees: the head of the queue gets it, the other waits
    first = await asyncio.wait_for(waiters[0], 1)
    assert first is not None and first.unused == 1 and not waiters[1].done()
    slots.end(first)  # given back unused: the other puller's turn
    second = await asyncio.wait_for(waiters[1], 1)
    assert second is not None and second.unused == 1


async def test_close_wakes_waiting_pullers_with_nothing() -> None:
    slots = Slots(1)
    assert slots.admit()
    waiter = asyncio.ensure_future(slots.acquire("node"))
    await asyncio.sleep(0.01)
    slots.close()
    assert await asyncio.wait_for(waiter, 1) is None
    slots.finish()
    assert not slots.reserve_one() and slots.free == 1
