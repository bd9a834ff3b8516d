"""The settling rules of the durable intake (worker/runtime/jetstream_settle.py), without a server.

The rules are the ones docs/reliability.md states ("Settle"): success is acked; a 4xx is answered and
termed; a 5xx is nak'd with a growing back-off until the last run, which dead-letters it; a BUSY
caused by the worker's own stop is handed back at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from worker.errors import (
    BadRequest,
    Busy,
    Conflict,
    DeadlineExceeded,
    Internal,
    NotFound,
    RoryError,
    StorageUnavailable,
    UnknownOperation,
    ValidationFailed,
)
from worker.runtime.dispatch import error_info
from worker.runtime.jetstream import (
    NAK_MAX_DELAY,
    Ack,
    ConsumerLimits,
    DeadLetter,
    Decision,
    HandBack,
    MaxDeliveries,
    Nak,
    Term,
    consumer_max_deliver,
    nak_delay,
    settle,
    spent,
)
from worker.settings import Settings

# The defaults: JETSTREAM_ACK_WAIT=60, JETSTREAM_MAX_DELIVER=5 (runs), consumer max_deliver 6.
ACK_WAIT = 60.0
RUNS = 5
LIMITS = ConsumerLimits(ack_wait=ACK_WAIT, max_deliver=consumer_max_deliver(RUNS), runs=RUNS)
UNLIMITED = ConsumerLimits(ack_wait=ACK_WAIT, max_deliver=-1, runs=0)


def info(error: RoryError) -> dict[str, Any]:
    return error_info(error)


STORAGE = info(StorageUnavailable("router down"))
DEADLINE = info(DeadlineExceeded("too slow"))
INTERNAL = info(Internal("bug"))
BUSY = info(Busy("stopping"))
RECORD_FAILED = info(Busy("the result could not be recorded: timeout"))
MAX_DELIVERIES = info(MaxDeliveries("run 5 times without an answer"))

# (name, error, deliveries, keyword arguments, expected decision)
CASES: list[tuple[str, dict[str, Any] | None, int, dict[str, Any], Decision]] = [
    ("success", None, 1, {}, Ack()),
    ("success on a redelivery", None, 3, {}, Ack()),
    ("success on the last run", None, RUNS, {}, Ack()),
    ("success while stopping", None, 1, {"stopping": True}, Ack()),
    # retryable 5xx below the run budget: nak with base * 2**(n-1), base = ack_wait / 10
    ("503 storage, delivery 1", STORAGE, 1, {}, Nak(6.0)),
    ("503 storage, delivery 2", STORAGE, 2, {}, Nak(12.0)),
    ("503 storage, delivery 3", STORAGE, 3, {}, Nak(24.0)),
    ("503 storage, delivery 4", STORAGE, 4, {}, Nak(48.0)),
    ("504 deadline, delivery 1", DEADLINE, 1, {}, Nak(6.0)),
    ("504 deadline, delivery 2", DEADLINE, 2, {}, Nak(12.0)),
    ("500 internal, delivery 1", INTERNAL, 1, {}, Nak(6.0)),
    ("503 busy, not stopping", BUSY, 1, {}, Nak(6.0)),
    ("record not written", RECORD_FAILED, 2, {}, Nak(12.0)),
    ("a smaller cap bounds the back-off", STORAGE, 4, {"cap": 20.0}, Nak(20.0)),
    # the last run, or beyond it: DLQ copy, error Reply, term; if the DLQ refuses, nak at once
    ("503 storage on the last run", STORAGE, RUNS, {}, DeadLetter(answer=True, fallback=0.0)),
    ("504 deadline on the last run", DEADLINE, RUNS, {}, DeadLetter(answer=True, fallback=0.0)),
    ("500 internal on the last run", INTERNAL, RUNS, {}, DeadLetter(answer=True, fallback=0.0)),
    ("busy on the last run, not stopping", BUSY, RUNS, {}, DeadLetter(answer=True, fallback=0.0)),
    ("every run died: the extra delivery", MAX_DELIVERIES, RUNS + 1, {}, DeadLetter(True, 0.0)),
    ("unanswerable 5xx on the last run", INTERNAL, RUNS, {"answerable": False}, DeadLetter(True, 0.0)),
    # terminal 4xx: the error Reply, then term, whatever the delivery count
    ("400 bad request", info(BadRequest("bad params")), 1, {}, Term()),
    ("400 unknown operation", info(UnknownOperation("no such op")), 1, {}, Term()),
    ("404 missing key", info(NotFound("no such key")), 2, {}, Term()),
    ("409 reused command id", info(Conflict("id reused")), 1, {}, Term()),
    ("422 validation failed", info(ValidationFailed("shapes")), RUNS, {}, Term()),
    ("4xx while stopping", info(NotFound("no such key")), 1, {"stopping": True}, Term()),
    # an unreadable command (no job id): DLQ copy without a Reply; if the DLQ refuses, keep it
    (
        "unanswerable 400",
        info(BadRequest("not msgpack")),
        1,
        {"answerable": False},
        DeadLetter(answer=False, fallback=6.0),
    ),
    (
        "unanswerable 400, third delivery",
        info(BadRequest("not msgpack")),
        3,
        {"answerable": False, "cap": 1.0},  # the fallback keeps the default cap, as before the split
        DeadLetter(answer=False, fallback=24.0),
    ),
    # the worker's stop: hand back for another worker, even on the last run
    ("busy while stopping", BUSY, 1, {"stopping": True}, HandBack()),
    ("busy while stopping, last run", BUSY, RUNS, {"stopping": True}, HandBack()),
    ("other 503 while stopping", STORAGE, 1, {"stopping": True}, Nak(6.0)),
    ("500 while stopping, last run", INTERNAL, RUNS, {"stopping": True}, DeadLetter(True, 0.0)),
]


@pytest.mark.parametrize(
    ("error", "deliveries", "kwargs", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_settle_rules(
    error: dict[str, Any] | None, deliveries: int, kwargs: dict[str, Any], expected: Decision
) -> None:
    assert settle(error, deliveries, LIMITS, **kwargs) == expected


def test_unanswerable_only_changes_4xx() -> None:
    for error in (None, STORAGE, BUSY):
        for deliveries in range(1, RUNS + 2):
            assert settle(error, deliveries, LIMITS, answerable=False) == settle(error, deliveries, LIMITS)


def test_without_a_run_budget_it_never_dead_letters() -> None:
    """``max_deliver`` unlimited (runs 0): retried forever, the back-off capped."""
    assert settle(STORAGE, 1, UNLIMITED) == Nak(6.0)
    assert settle(STORAGE, 100, UNLIMITED) == Nak(NAK_MAX_DELAY)
    assert settle(STORAGE, 100, UNLIMITED, cap=30.0) == Nak(30.0)
    assert not spent(1000, UNLIMITED)


def test_the_back_off_follows_the_documented_schedule() -> None:
    """docs/reliability.md: with the defaults the waits are 6, 12, 24 and 48 s."""
    settings = Settings()
    limits = ConsumerLimits(
        settings.jetstream_ack_wait,
        consumer_max_deliver(settings.jetstream_max_deliver),
        settings.jetstream_max_deliver,
    )
    delays = [settle(STORAGE, n, limits) for n in range(1, limits.runs)]
    assert delays == [Nak(nak_delay(n, limits.ack_wait)) for n in range(1, limits.runs)]
    assert [d.delay for d in delays if isinstance(d, Nak)] == [6.0, 12.0, 24.0, 48.0]
    assert isinstance(settle(STORAGE, limits.runs, limits), DeadLetter)


def test_a_short_ack_wait_backs_off_from_one_second() -> None:
    limits = ConsumerLimits(ack_wait=2.0, max_deliver=4, runs=3)
    assert settle(INTERNAL, 1, limits) == Nak(1.0)
    assert settle(INTERNAL, 2, limits) == Nak(2.0)
    assert settle(INTERNAL, 3, limits) == DeadLetter(answer=True, fallback=0.0)


def test_spent_is_the_extra_delivery_only() -> None:
    """A command is run on at most ``runs`` deliveries; the one after never runs it."""
    assert [spent(n, LIMITS) for n in range(1, RUNS + 3)] == [False] * RUNS + [True, True]


def test_decisions_are_frozen_values() -> None:
    decision = settle(STORAGE, 1, LIMITS)
    assert decision == Nak(6.0) and hash(decision) == hash(Nak(6.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.delay = 0.0  # type: ignore[misc]


def test_settle_does_not_touch_its_inputs() -> None:
    error = dict(STORAGE)
    limits = dataclasses.replace(LIMITS)
    settle(error, RUNS, limits, stopping=True, answerable=False)
    assert error == STORAGE and limits == LIMITS
