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

from worker.runtime.jetstream_deadletter import (
    DLQ_CODE,
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_MSG_ID,
    DLQ_NODE,
    DLQ_REASON,
    DLQ_SEQUENCE,
    DLQ_STREAM,
    DLQ_SUBJECT,
    DLQ_TYPE,
    MOVER_ID,
    DeadLetterMover,
    MaxDeliveries,
    dlq_headers,
)
from worker.runtime.jetstream_deliveries import ACK_TIMEOUT
from worker.runtime.jetstream_intake import JetStreamIntake
from worker.runtime.jetstream_pull import POLL_INTERVAL, PULL_EXPIRES, PULL_MARGIN
from worker.runtime.jetstream_records import RECORD_BUDGET, ResultRecords
from worker.runtime.jetstream_settle import (
    NAK_MAX_DELAY,
    Ack,
    DeadLetter,
    Decision,
    HandBack,
    Nak,
    Term,
    nak_delay,
    settle,
    spent,
)
from worker.runtime.jetstream_topology import (
    DLQ_MAX_AGE,
    DUPLICATE_WINDOW,
    MSG_ID,
    ConsumerLimits,
    ConsumerSpec,
    JetStreamUnavailable,
    Topology,
    consumer_max_deliver,
    dlq_stream_subjects,
    dlq_subject,
    ensure_topology,
    publish_job,
    record_key,
    results_bucket,
    subject_covers,
)

__all__ = [
    "ACK_TIMEOUT",
    "DLQ_CODE",
    "DLQ_CONSUMER",
    "DLQ_DELIVERIES",
    "DLQ_MAX_AGE",
    "DLQ_MSG_ID",
    "DLQ_NODE",
    "DLQ_REASON",
    "DLQ_SEQUENCE",
    "DLQ_STREAM",
    "DLQ_SUBJECT",
    "DLQ_TYPE",
    "DUPLICATE_WINDOW",
    "MOVER_ID",
    "MSG_ID",
    "NAK_MAX_DELAY",
    "POLL_INTERVAL",
    "PULL_EXPIRES",
    "PULL_MARGIN",
    "RECORD_BUDGET",
    "Ack",
    "ConsumerLimits",
    "ConsumerSpec",
    "DeadLetter",
    "DeadLetterMover",
    "Decision",
    "HandBack",
    "JetStreamIntake",
    "JetStreamUnavailable",
    "MaxDeliveries",
    "Nak",
    "ResultRecords",
    "Term",
    "Topology",
    "consumer_max_deliver",
    "dlq_headers",
    "dlq_stream_subjects",
    "dlq_subject",
    "ensure_topology",
    "nak_delay",
    "publish_job",
    "record_key",
    "results_bucket",
    "settle",
    "spent",
    "subject_covers",
]
