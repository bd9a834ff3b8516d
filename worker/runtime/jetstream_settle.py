"""Settling a delivery: what the durable intake does with a command once it has an outcome.

:func:`settle` only decides; it does no I/O, so every rule is unit-tested without a server
(tests/worker/runtime/test_settle.py). The intake (worker/runtime/jetstream_intake.py) then does
what the decision says: publish the Reply, ack, nak, term, copy to the DLQ. The rules
(docs/reliability.md, "The path of one command"):

* success -> :class:`Ack` (the Reply is recorded, published, then the message acked);
* 4xx: the command can never succeed, retrying would fail again -> :class:`Term` after the error
  Reply (a run's 4xx is recorded first, like a success: :func:`terminal`); an unreadable command
  (no job id to answer to) -> :class:`DeadLetter` without a Reply;
* 503 BUSY because the worker is stopping -> :class:`HandBack`: nak'd for another worker at once
  (delayed only past this worker's own open pull, see ``JetStreamIntake.handback_delay``);
* any other 5xx (storage 503, deadline 504, crashed compute process, internal error, the result
  record not written) -> :class:`Nak` with a growing, bounded delay (:func:`nak_delay`), or on the
  last run the consumer allows -> :class:`DeadLetter` with the error Reply.

A command is run on at most ``ConsumerLimits.runs`` deliveries; the consumers allow one more, which
never runs it (:func:`spent`): it dead-letters a command whose every run died with its worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import Busy
from worker.runtime.jetstream_topology import ConsumerLimits

NAK_MAX_DELAY = 300.0  # s: longest back-off between two deliveries


def nak_delay(deliveries: int, ack_wait: float, *, cap: float = NAK_MAX_DELAY) -> float:
    """Back-off before delivery ``deliveries + 1``: ``base * 2**(deliveries-1)``, at most ``cap``.

    ``base`` is a tenth of the ack wait (at least 1 s), so the schedule scales with how long the
    operator lets a job run silently: ack wait 60 s -> 6, 12, 24, 48 s ...
    """
    base = max(1.0, ack_wait / 10.0)
    return min(cap, base * 2.0 ** max(0, min(deliveries - 1, 30)))


@dataclass(frozen=True)
class Ack:
    """Done: publish the (recorded) Reply, then ack."""


@dataclass(frozen=True)
class Term:
    """Invalid for good: publish the error Reply, then term (no redelivery)."""


@dataclass(frozen=True)
class Nak:
    """Try again later: nak with ``delay`` seconds (0: at once). No Reply until the final outcome."""

    delay: float


@dataclass(frozen=True)
class HandBack:
    """The worker is stopping: nak for another worker, without back-off and without a Reply."""


@dataclass(frozen=True)
class DeadLetter:
    """Give up: copy the command to the DLQ, then term.

    ``answer``: publish the error Reply once the DLQ has the copy. ``fallback``: the nak delay when
    the DLQ does not take it, so the command is kept rather than lost silently.
    """

    answer: bool
    fallback: float


Decision = Ack | Term | Nak | HandBack | DeadLetter


def terminal(error: Mapping[str, Any]) -> bool:
    """A final failure (4xx: bad input, missing key, conflict, invalid data): running the command
    again would fail the same way. Such an outcome of a run is recorded like a success, so a
    re-published copy is answered from the record instead of running again (docs/reliability.md)."""
    return int(error["code"]) < 500


def spent(deliveries: int, limits: ConsumerLimits) -> bool:
    """True on the extra delivery beyond the run budget: every run so far died with its worker, so
    the command is not run again but dead-lettered (``MAX_DELIVERIES``)."""
    return 0 < limits.runs < deliveries


def settle(
    error: Mapping[str, Any] | None,
    deliveries: int,
    limits: ConsumerLimits,
    *,
    stopping: bool = False,
    answerable: bool = True,
    cap: float = NAK_MAX_DELAY,
) -> Decision:
    """Decide what to do with one delivery (number ``deliveries``) of a command.

    ``error``: the outcome's error info (``code``, ``type``, ...), None for success.
    ``stopping``: the outcome is this worker's stop (a run cancelled by it, a refusal because of
    it); then a BUSY is handed back. Failures of the worker's own machinery (the result records)
    pass False: they are retried like any 5xx even during a stop.
    ``answerable``: the command has a job id to answer to (only an unreadable one has not).
    ``cap``: the longest back-off of a retry.
    """
    if error is None:
        return Ack()
    if terminal(error):
        if answerable:
            return Term()
        # nobody to tell: the DLQ copy is the only trace; if the DLQ refuses, keep the command
        return DeadLetter(answer=False, fallback=nak_delay(deliveries, limits.ack_wait))
    if stopping and error["type"] == Busy.type:
        return HandBack()
    if 0 < limits.runs <= deliveries:
        # the last run: if the DLQ refuses, the consumer's extra delivery or the server's
        # MAX_DELIVERIES advisory (DeadLetterMover) moves it later
        return DeadLetter(answer=True, fallback=0.0)
    return Nak(nak_delay(deliveries, limits.ack_wait, cap=cap))


__all__ = [
    "NAK_MAX_DELAY",
    "Ack",
    "DeadLetter",
    "Decision",
    "HandBack",
    "Nak",
    "Term",
    "nak_delay",
    "settle",
    "spent",
    "terminal",
]
