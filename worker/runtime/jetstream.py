"""Durable intake (``RORY_JOBS_MODE=jetstream``): commands from the RORY_JOBS work queue.

Why JetStream: a core request-reply command dies with the worker that took it. Commands published
to ``<p>.jobs.<node>.<op>`` / ``<p>.jobs.pool.<op>`` are stored by the server until a worker acks
them, so a crash, a restart of the worker or of the server, or a storage outage delays a job instead
of losing it. The guarantees (docs/reliability.md): **at-least-once delivery**, **effectively-once
results**.

This module is the front door: it re-exports the names other modules, scripts and tests use. The
code lives in sibling modules, one concern each:

* worker/runtime/jetstream_topology.py: the streams, consumers and results bucket (created when
  ``JETSTREAM_ENSURE=true``, only verified otherwise), the subject names, :func:`publish_job`;
* worker/runtime/jetstream_pull.py: the lanes that pull each consumer, never more messages than
  reserved slots (the slots are the dispatcher's, worker/runtime/slots.py, shared with the core
  intake);
* worker/runtime/jetstream_settle.py: :func:`settle`, the pure decision of what to do with a
  delivery once its command has an outcome (ack, nak with back-off, term, dead-letter, hand back);
* worker/runtime/jetstream_records.py: the result records that make results effectively-once;
* worker/runtime/jetstream_deadletter.py: the DLQ copy and the :class:`DeadLetterMover` for
  commands nobody holds any more (it needs stream-wide access, so it runs under an operator/Manager
  identity, or in a worker whose identity administers JetStream, ``JETSTREAM_ENSURE=true``);
* worker/runtime/jetstream_intake.py: :class:`JetStreamIntake`, which admits deliveries through the
  dispatcher, answers from the result record, runs, and does the I/O that :func:`settle` decides.
"""

from __future__ import annotations

# The front door re-exports these four modules whole (their ``__all__`` is the list), so a name
# added to one of them needs no second entry here.
from worker.runtime import (
    jetstream_deadletter,
    jetstream_records,
    jetstream_settle,
    jetstream_topology,
)
from worker.runtime.jetstream_deadletter import *  # noqa: F403
from worker.runtime.jetstream_deliveries import ACK_TIMEOUT
from worker.runtime.jetstream_intake import JetStreamIntake
from worker.runtime.jetstream_pull import POLL_INTERVAL, PULL_EXPIRES, PULL_MARGIN
from worker.runtime.jetstream_records import *  # noqa: F403
from worker.runtime.jetstream_settle import *  # noqa: F403
from worker.runtime.jetstream_topology import *  # noqa: F403

__all__ = [
    "ACK_TIMEOUT",
    "POLL_INTERVAL",
    "PULL_EXPIRES",
    "PULL_MARGIN",
    "JetStreamIntake",
    *jetstream_deadletter.__all__,
    *jetstream_records.__all__,
    *jetstream_settle.__all__,
    *jetstream_topology.__all__,
]
