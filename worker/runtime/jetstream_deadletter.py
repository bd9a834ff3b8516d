"""Dead letters: the DLQ copy of a command, and the mover of commands nobody holds any more.

A worker dead-letters a command from the message it holds (worker/runtime/jetstream_intake.py:
publish the copy, then ``term``), so a node needs no stream-wide message access. Only a command
whose extra delivery went unanswered too is held by nobody; the server's MAX_DELIVERIES advisory
then lets a :class:`DeadLetterMover` move it (docs/reliability.md, "Dead letters").
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from schemas import codec, subjects
from worker.errors import RoryError
from worker.runtime.dispatch import error_headers, error_info
from worker.runtime.jetstream_topology import MSG_ID, ConsumerSpec
from worker.settings import Settings

log = logging.getLogger("rory.worker.jetstream")

# DLQ message headers (the payload is the original command, untouched)
DLQ_REASON = "Rory-Dlq-Reason"  # "<code> <TYPE>: <message>"
DLQ_CODE = "Rory-Dlq-Code"
DLQ_TYPE = "Rory-Dlq-Type"
DLQ_SUBJECT = "Rory-Original-Subject"
DLQ_STREAM = "Rory-Original-Stream"
DLQ_SEQUENCE = "Rory-Original-Sequence"
DLQ_DELIVERIES = "Rory-Deliveries"
DLQ_CONSUMER = "Rory-Consumer"
DLQ_NODE = "Rory-Node"
DLQ_MSG_ID = "Rory-Original-Msg-Id"
MAX_REASON = 512
MOVER_ID = "dlq-mover"  # node token of the Replies a stand-alone mover publishes


class MaxDeliveries(RoryError):
    """The server gave up redelivering: every delivery ended without an answer (workers died)."""

    code, type, retryable = 500, "MAX_DELIVERIES", False


def _one_line(text: str, limit: int = MAX_REASON) -> str:
    return " ".join(str(text).split())[:limit]


def dlq_headers(
    headers: Mapping[str, str] | None,
    error: Mapping[str, Any],
    *,
    subject: str,
    stream: str,
    stream_seq: int,
    deliveries: int,
    consumer: str,
    node: str,
) -> dict[str, str]:
    """Headers of a DLQ copy: the command's own (minus ``Nats-*``) plus where it came from and why."""
    out = {_key(k): str(v) for k, v in (headers or {}).items() if not _key(k).startswith("Nats-")}
    if headers and headers.get(MSG_ID):
        out[DLQ_MSG_ID] = str(headers[MSG_ID])
    out.update(
        {
            DLQ_REASON: _one_line(f"{error['code']} {error['type']}: {error['message']}"),
            DLQ_CODE: str(error["code"]),
            DLQ_TYPE: str(error["type"]),
            DLQ_SUBJECT: subject,
            DLQ_STREAM: stream,
            DLQ_SEQUENCE: str(stream_seq),
            DLQ_DELIVERIES: str(deliveries),
            DLQ_CONSUMER: consumer,
            DLQ_NODE: node,
            MSG_ID: f"{stream}-{stream_seq}",  # two movers of one message store it once
        }
    )
    return out


async def copy_to_dlq(
    js: JetStreamContext,
    msg: Msg,
    *,
    prefix: str,
    stream: str,
    dlq_stream: str,
    stream_seq: int,
    deliveries: int,
    spec: ConsumerSpec,
    node: str,
    error: Mapping[str, Any],
) -> bool:
    """Copy a command to ``<p>.dlq.<node|pool>.<op>`` with the reason; True once the DLQ has it.

    The copy is made from the message the worker holds, so no stream-wide access is needed.
    """
    subject = msg.subject
    op = subject[len(spec.op_prefix) :] if subject.startswith(spec.op_prefix) else "unknown"
    out = dlq_headers(
        msg.headers,
        error,
        subject=subject,
        stream=stream,
        stream_seq=stream_seq,
        deliveries=deliveries,
        consumer=spec.name,
        node=node,
    )
    try:
        await js.publish(
            subjects.dlq_subject(prefix, spec.source, op),
            msg.data or b"",
            headers=out,
            stream=dlq_stream,
            timeout=5.0,
        )
    except Exception as error_:
        log.error("dead letter not stored", extra={"subject": subject, "error": repr(error_)})
        return False
    log.warning(
        "command dead-lettered",
        extra={"subject": subject, "seq": stream_seq, "deliveries": deliveries, "reason": out[DLQ_REASON]},
    )
    return True


ReplyFactory = Callable[[RoryError, str, Any], dict[str, Any]]


class DeadLetterMover:
    """Moves a command the server stopped redelivering (MAX_DELIVERIES advisory) to the DLQ.

    Such a command is held by nobody, so the mover reads it by stream sequence
    (``$JS.API.STREAM.MSG.GET.<stream>``), copies it to ``<p>.dlq.<node|pool>.<op>`` as
    ``500 MAX_DELIVERIES``, publishes an error Reply on ``<p>.results.<node_id>.<job_id>`` and deletes
    it (``$JS.API.STREAM.MSG.DELETE.<stream>``). That is stream-wide message access: with it a node
    could read, answer or delete every other node's queued commands, so the per-node credentials of
    ``scripts/nats_auth.py`` do not have it. The mover runs under an operator/Manager identity (the
    generated ``manager`` user may), or inside a worker whose identity administers JetStream
    (``JETSTREAM_ENSURE=true``). Movers share the queue group ``<p>.dlq-movers``.

    ``consumers``: the consumers whose advisories to handle (``*``: all of the stream's).
    ``reply``: builds the error Reply (a worker passes its dispatcher's, so the error is counted).
    """

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str,
        stream: str = subjects.JOBS_STREAM,
        dlq_stream: str = Settings.model_fields["jetstream_dlq_stream"].default,
        node_id: str = MOVER_ID,
        consumers: Sequence[str] = ("*",),
        max_message_bytes: int = 1024 * 1024,
        reply: ReplyFactory | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.prefix = prefix
        self.stream = stream
        self.dlq_stream = dlq_stream
        self.node_id = node_id
        self.consumers = tuple(consumers)
        self.max_message_bytes = max_message_bytes
        self._reply = reply or self._default_reply
        self._subs: list[Subscription] = []
        self.moved = 0

    async def start(self) -> None:
        for consumer in self.consumers:
            self._subs.append(
                await self.nc.subscribe(
                    subjects.max_deliveries_advisory(self.stream, consumer),
                    queue=subjects.dlq_movers_queue(self.prefix),
                    cb=self.on_advisory,
                )
            )

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    def _default_reply(self, error: RoryError, op: str, decoded: Any) -> dict[str, Any]:
        ident = job = ""
        if isinstance(decoded, dict):
            raw_id, raw_job = decoded.get("id"), decoded.get("job_id")
            ident = raw_id if isinstance(raw_id, str) and subjects.is_valid_job_id(raw_id) else ""
            job = raw_job if isinstance(raw_job, str) and subjects.is_valid_job_id(raw_job) else ident
        return {
            "v": 1,
            "id": uuid.uuid4().hex,
            "in_reply_to": ident,
            "job_id": job,
            "op": op[:128],
            "node_id": self.node_id,
            "ok": False,
            "error": error_info(error),
            "timings": dict.fromkeys(("queued", "storage_get", "compute", "storage_put", "total"), 0.0),
        }

    def _source(self, subject: str, consumer: str) -> tuple[str, str]:
        """(node or ``pool``, op) of a command subject; from the consumer name if it is not ours."""
        parsed = subjects.parse_command_subject(self.prefix, subject)
        if parsed is not None and parsed.via in ("jobs-node", "jobs-pool"):
            return parsed.node or subjects.JOBS_POOL_TOKEN, parsed.op
        if consumer == subjects.JOBS_POOL_CONSUMER:
            return subjects.JOBS_POOL_TOKEN, "unknown"
        node = consumer.removeprefix("worker-")
        valid = node != consumer and subjects.is_valid_job_id(node) and len(node) <= 64
        return (node if valid else "unknown"), "unknown"

    async def on_advisory(self, msg: Msg) -> None:
        """The server stopped redelivering a command nobody answered: move it to the DLQ."""
        try:
            advisory = json.loads(msg.data)
            stream_seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries") or 0)
            consumer = str(advisory.get("consumer") or "")
            if advisory.get("stream") not in (None, self.stream):
                return
        except Exception:
            return
        try:
            raw = await self.js.get_msg(self.stream, stream_seq)
        except nats.js.errors.NotFoundError:
            return  # answered or moved meanwhile
        except Exception as error:
            log.warning("dead command not read", extra={"seq": stream_seq, "error": repr(error)})
            return
        error = MaxDeliveries(
            f"delivered {deliveries} times without an answer (workers stopped or crashed while running it)"
        )
        subject = raw.subject or ""
        source, op = self._source(subject, consumer)
        headers = dlq_headers(
            raw.headers,
            error_info(error),
            subject=subject,
            stream=self.stream,
            stream_seq=stream_seq,
            deliveries=deliveries,
            consumer=consumer,
            node=self.node_id,
        )
        try:
            await self.js.publish(
                subjects.dlq_subject(self.prefix, source, op),
                raw.data or b"",
                headers=headers,
                stream=self.dlq_stream,
                timeout=5.0,
            )
        except Exception as error_:
            log.error("dead letter not stored", extra={"subject": subject, "error": repr(error_)})
            return
        self.moved += 1
        log.warning(
            "abandoned command dead-lettered",
            extra={"subject": subject, "seq": stream_seq, "deliveries": deliveries},
        )
        try:
            decoded = codec.decode(
                raw.data or b"", json_mode=codec.is_json(raw.headers), max_bytes=self.max_message_bytes
            )
        except Exception:
            decoded = None
        reply = self._reply(error, op, decoded)
        job_id = reply.get("job_id") or ""
        if job_id:
            data = codec.encode(reply)
            out = {codec.CONTENT_TYPE: codec.MSGPACK, **error_headers(reply)}
            try:
                await self.nc.publish(subjects.results(self.prefix, self.node_id, job_id), data, headers=out)
            except Exception as error_:
                log.error("result not published", extra={"job_id": job_id, "error": repr(error_)})
        with contextlib.suppress(Exception):
            await self.js.delete_msg(self.stream, stream_seq)


def _key(header: Any) -> str:
    return str(getattr(header, "value", header))  # nats-py may use str-Enum keys


__all__ = [
    "DLQ_CODE",
    "DLQ_CONSUMER",
    "DLQ_DELIVERIES",
    "DLQ_MSG_ID",
    "DLQ_NODE",
    "DLQ_REASON",
    "DLQ_SEQUENCE",
    "DLQ_STREAM",
    "DLQ_SUBJECT",
    "DLQ_TYPE",
    "MOVER_ID",
    "DeadLetterMover",
    "MaxDeliveries",
    "ReplyFactory",
    "copy_to_dlq",
    "dlq_headers",
]
