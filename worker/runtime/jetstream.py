"""Durable intake (``RORY_JOBS_MODE=jetstream``): commands from the RORY_JOBS work queue.

Why JetStream: a core request-reply command dies with the worker that took it. Commands published
to ``<p>.jobs.<node>.<op>`` / ``<p>.jobs.pool.<op>`` are stored by the server until a worker acks
them, so a crash, a restart of the worker or of the server, or a storage outage delays a job instead
of losing it. The guarantees (docs/reliability.md): **at-least-once delivery**, **effectively-once
results**.

Topology (created when ``JETSTREAM_ENSURE=true``, only verified otherwise):

* stream ``JETSTREAM_STREAM`` (RORY_JOBS): work-queue retention on ``<p>.jobs.>``, file storage,
  ``Nats-Msg-Id`` duplicate window :data:`DUPLICATE_WINDOW`. A work queue forbids overlapping
  consumers, so each node's durable ``worker-<node>`` filters ``<p>.jobs.<node>.>`` and the shared
  durable ``pool`` filters ``<p>.jobs.pool.>`` (a node may not be called ``pool``);
* stream ``JETSTREAM_DLQ_STREAM`` (RORY_DLQ): limits retention on ``<p>.dlq.>``;
* KV bucket ``<stream minus _JOBS>_RESULTS`` (RORY_RESULTS): one record per successful command, key
  ``<p>.<node|pool>.<command id>`` (the node the command was addressed to, or ``pool``), value the
  msgpack Reply, TTL ``JETSTREAM_RESULT_TTL``. Keying by node lets each node's credentials reach its
  own records and the pool's only (scripts/nats_auth.py).

Flow of one message:

1. **Pull only what can start.** Slots are reserved before a pull request is sent (batch = the
   reserved slots) and stay reserved until the request ends (all delivered, the server's 404/408, or
   a client-side timeout), so the server never hands this worker more messages than it can start. A
   lane with work drains with ``no_wait`` requests (answered at once, nothing held idle); an empty
   lane long-polls one slot only while every lane is empty, else looks again every POLL_INTERVAL.
   Status messages carry the request's own reply subject; deliveries carry only the command's
   subject and count against the current request. A delivery no reservation covers (a core command
   reclaimed its slot, or its request was given up after a reconnect) takes a free slot if there is
   one, else it is nak'd at once for another worker; since requests are for one message or answered
   at once, it cannot come back into the request it came from.
2. **Answered already?** The results record is looked up first: a redelivery (an ack lost in a crash,
   a Manager re-publishing after the duplicate window) is answered from it without recomputing, if
   the record is this command's (``op``, ``in_reply_to``, ``job_id`` and, for a node's command, its
   ``node_id`` match).
   A second delivery of a command this worker is running joins the running one.
3. **Run** through :meth:`Dispatcher.run` (same validation, deadline, stats as core commands), with
   ``in_progress`` every third of the ack wait so a long job is not redelivered.
4. **Settle:** success -> create the record (the first run to finish wins; a later duplicate answers
   with the recorded Reply), publish the Reply on ``<p>.results.<node>.<job_id>``, ack. 4xx (the command
   can never succeed) -> error Reply, ``term``. 5xx (the worker or its environment failed: storage
   503, deadline 504, BUSY, crashed compute process, internal error) -> ``nak`` with a growing,
   bounded delay; on the last run (``JETSTREAM_MAX_DELIVER``) -> copy to the DLQ with the reason,
   error Reply, ``term``. The consumers allow one delivery more than that: it never runs the command,
   it dead-letters a command whose every run ended without an answer (each worker died), so such a
   command is settled by the next worker that comes up. Every dead letter is published from the
   message the worker holds, then ``term``ed: a node needs no stream-wide message access. If even
   the extra delivery goes unanswered, the server's MAX_DELIVERIES advisory lets a
   :class:`DeadLetterMover` move the command to the DLQ; that reads and deletes by stream sequence,
   so it runs under an operator/Manager identity, or in a worker whose identity administers
   JetStream (``JETSTREAM_ENSURE=true``), never under a node's own credentials.

Stop: no new pulls; messages still arriving for the outstanding request are handed back; in-flight
jobs get the grace period, the rest are cancelled and handed back. A hand-back while our own pull is
still open waits until it expires (:meth:`JetStreamIntake.handback_delay`), else the server would
bounce the message straight back into it and burn a delivery. The pull subscriptions are
unsubscribed before the connection drains (a drain after a timed-out pull hangs: docs/original-rory.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from schemas import codec, subjects
from worker.errors import Busy, Conflict, RoryError
from worker.runtime.connection import NatsUnavailable
from worker.runtime.dispatch import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    Dispatcher,
    Rejected,
    error_headers,
)
from worker.settings import Settings

log = logging.getLogger("rory.worker.jetstream")

DUPLICATE_WINDOW = 120.0  # s: a re-publish with the same Nats-Msg-Id inside this window is dropped
DLQ_MAX_AGE = 30 * 24 * 3600.0  # s: dead letters are kept this long
PULL_EXPIRES = 1.0  # s: life of one pull request (how long a reservation may sit idle)
PULL_MARGIN = 1.0  # s: a pull with no answer this long after ``expires`` is given up (server gone)
POLL_INTERVAL = 0.2  # s: how often an empty lane looks again while another lane is busy
NAK_MAX_DELAY = 300.0  # s: longest back-off between two deliveries
RECORD_BUDGET = 10.0  # s: retries of the result-record write before the command is nak'd instead
ACK_TIMEOUT = 2.0  # s: wait for the server to confirm an ack
STATUS_HEADER = "Status"

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
MSG_ID = "Nats-Msg-Id"
MAX_REASON = 512


class JetStreamUnavailable(NatsUnavailable):
    """JetStream is off, or the streams/consumers/bucket are missing or unusable (JETSTREAM_ENSURE)."""


class MaxDeliveries(RoryError):
    """The server gave up redelivering: every delivery ended without an answer (workers died)."""

    code, type, retryable = 500, "MAX_DELIVERIES", False


# ----------------------------------------------------------------------------- names and helpers
# The names live in schemas/subjects.py (one source of truth, shared with scripts/nats_auth.py).
results_bucket = subjects.results_bucket
dlq_subject = subjects.dlq_subject
dlq_stream_subjects = subjects.dlq_stream_subjects
record_key = subjects.record_key


def nak_delay(deliveries: int, ack_wait: float, *, cap: float = NAK_MAX_DELAY) -> float:
    """Back-off before delivery ``deliveries + 1``: ``base * 2**(deliveries-1)``, at most ``cap``.

    ``base`` is a tenth of the ack wait (at least 1 s), so the schedule scales with how long the
    operator lets a job run silently: ack wait 60 s -> 6, 12, 24, 48 s ...
    """
    base = max(1.0, ack_wait / 10.0)
    return min(cap, base * 2.0 ** max(0, min(deliveries - 1, 30)))


def subject_covers(pattern: str, subject: str) -> bool:
    """True when every subject matched by ``subject`` (may hold wildcards) is matched by ``pattern``."""
    p_tokens, s_tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(p_tokens):
        if token == ">":
            return len(s_tokens) > index
        if index >= len(s_tokens):
            return False
        other = s_tokens[index]
        if other == ">":
            return False
        if token != "*" and token != other:
            return False
    return len(p_tokens) == len(s_tokens)


def _one_line(text: str, limit: int = MAX_REASON) -> str:
    return " ".join(str(text).split())[:limit]


async def publish_job(
    js: JetStreamContext,
    prefix: str,
    node: str | None,
    command: Mapping[str, Any],
    *,
    json_mode: bool = False,
    timeout: float = 5.0,
) -> PubAck:
    """Publish a Command to the jobs stream (``node`` None: the pool), deduplicated by its ``id``.

    The ``Nats-Msg-Id`` header is the command id, so publishing the same command twice inside the
    stream's duplicate window stores it once (``PubAck.duplicate`` is then True).
    """
    op = str(command["op"])
    subject = subjects.jobs_pool(prefix, op) if node is None else subjects.jobs_node(prefix, node, op)
    headers = {MSG_ID: str(command["id"]), codec.CONTENT_TYPE: codec.content_type(json_mode)}
    return await js.publish(
        subject, codec.encode(dict(command), json_mode=json_mode), timeout=timeout, headers=headers
    )


# ----------------------------------------------------------------------------- topology
@dataclass(frozen=True)
class ConsumerSpec:
    """One durable pull consumer: its name, filter, and the DLQ subject token (node id or ``pool``)."""

    name: str
    filter_subject: str
    source: str

    @property
    def op_prefix(self) -> str:
        return self.filter_subject[:-1]  # "<p>.jobs.<node>." -- the filter minus its ">"


@dataclass(frozen=True)
class Topology:
    stream: str
    dlq_stream: str
    bucket: str
    prefix: str
    consumers: tuple[ConsumerSpec, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        prefix, node = settings.rory_subject_prefix, settings.node_id
        if node == subjects.JOBS_POOL_TOKEN:
            raise JetStreamUnavailable("NODE_ID 'pool' collides with the pool jobs subject <p>.jobs.pool.>")
        return cls(
            stream=settings.jetstream_stream,
            dlq_stream=settings.jetstream_dlq_stream,
            bucket=subjects.results_bucket(settings.jetstream_stream),
            prefix=prefix,
            consumers=(
                ConsumerSpec(
                    subjects.jobs_node_consumer(node), subjects.jobs_node_filter(prefix, node), node
                ),
                ConsumerSpec(
                    subjects.JOBS_POOL_CONSUMER, subjects.jobs_pool_filter(prefix), subjects.JOBS_POOL_TOKEN
                ),
            ),
        )


@dataclass
class ConsumerLimits:
    """What the server says about a consumer: decisions use these, not the settings.

    ``runs``: deliveries that may run the command. The consumer's ``max_deliver`` is one more (see
    :func:`consumer_max_deliver`); 0 = unlimited.
    """

    ack_wait: float
    max_deliver: int  # -1 = unlimited
    runs: int


def consumer_max_deliver(runs: int) -> int:
    """The consumer's ``max_deliver`` for a run budget: one extra delivery dead-letters a command
    whose every run died with its worker (no advisory is needed for it)."""
    return runs + 1


def _limits(info: ConsumerInfo) -> ConsumerLimits:
    config = info.config
    max_deliver = int(config.max_deliver or -1)
    runs = max_deliver - 1 if max_deliver > 1 else (1 if max_deliver == 1 else 0)
    return ConsumerLimits(float(config.ack_wait or 30.0), max_deliver, runs)


async def _api(what: str, call: Awaitable[Any]) -> Any:
    """Run a JetStream API call; 'JetStream is off' becomes :class:`JetStreamUnavailable`."""
    try:
        return await call
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as error:
        raise JetStreamUnavailable(f"JetStream is not available on the server ({what}): {error!r}") from None
    except nats.errors.TimeoutError:
        raise JetStreamUnavailable(f"JetStream did not answer ({what})") from None


def _stream_covers(config: StreamConfig, wanted: list[str]) -> list[str]:
    """The ``wanted`` subjects the stream does not capture yet."""
    have = list(config.subjects or [])
    return [s for s in wanted if not any(subject_covers(h, s) for h in have)]


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, ensure: bool) -> None:
    """Create the stream (ensure) or check that it exists, has our retention and captures our subjects.

    A stream that captures other subjects belongs to another deployment (another subject prefix):
    its fixed consumer name ``pool`` would collide with ours, so it is refused, not extended.
    """
    wanted = list(config.subjects or [])
    for _ in range(3):  # another worker may be creating it at the same moment
        try:
            info = await _api(f"stream info {config.name}", js.stream_info(config.name))
        except nats.js.errors.NotFoundError:
            if not ensure:
                raise JetStreamUnavailable(
                    f"stream {config.name} does not exist and JETSTREAM_ENSURE=false; create it "
                    f"(subjects {wanted}) or let a worker with JETSTREAM_ENSURE=true do it"
                ) from None
            try:
                await _api(f"add stream {config.name}", js.add_stream(config=config))
                log.info("stream created", extra={"stream": config.name, "subjects": wanted})
                return
            except nats.js.errors.BadRequestError as error:
                log.info("stream creation raced or failed; checking again", extra={"error": repr(error)})
                continue
        current = info.config
        if current.retention != config.retention:
            raise JetStreamUnavailable(
                f"stream {config.name} has retention {current.retention}, expected {config.retention}"
            )
        missing = _stream_covers(current, wanted)
        if missing:
            raise JetStreamUnavailable(
                f"stream {config.name} captures {current.subjects}, not {missing}: it belongs to another "
                "subject prefix; give each RORY_SUBJECT_PREFIX its own JETSTREAM_STREAM and "
                "JETSTREAM_DLQ_STREAM"
            )
        return
    raise JetStreamUnavailable(
        f"stream {config.name} could not be created: {wanted} may overlap another stream"
    )


async def ensure_topology(
    js: JetStreamContext, topology: Topology, settings: Settings
) -> tuple[dict[str, ConsumerLimits], KeyValue]:
    """Create/update (JETSTREAM_ENSURE=true) or verify the streams, consumers and results bucket."""
    ensure = settings.jetstream_ensure
    prefix = topology.prefix
    await _ensure_stream(
        js,
        StreamConfig(
            name=topology.stream,
            description="Rory job commands (work queue)",
            subjects=subjects.jobs_stream_subjects(prefix),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=settings.max_message_bytes,
            num_replicas=settings.jetstream_replicas,
        ),
        ensure,
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=topology.dlq_stream,
            description="Rory commands that could not be completed",
            subjects=subjects.dlq_stream_subjects(prefix),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            max_age=DLQ_MAX_AGE,
            num_replicas=settings.jetstream_replicas,
        ),
        ensure,
    )
    limits: dict[str, ConsumerLimits] = {}
    for spec in topology.consumers:
        limits[spec.name] = await _ensure_consumer(js, topology.stream, spec, settings)
    kv = await _ensure_bucket(
        js, topology.bucket, ensure, settings.jetstream_result_ttl, settings.jetstream_replicas
    )
    return limits, kv


async def _ensure_consumer(
    js: JetStreamContext, stream: str, spec: ConsumerSpec, settings: Settings
) -> ConsumerLimits:
    wanted = ConsumerConfig(
        name=spec.name,
        durable_name=spec.name,
        description="Rory worker intake",
        filter_subject=spec.filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.jetstream_ack_wait,
        max_deliver=consumer_max_deliver(settings.jetstream_max_deliver),
    )
    try:
        info = await _api(f"consumer info {spec.name}", js.consumer_info(stream, spec.name))
    except nats.js.errors.NotFoundError:
        if not settings.jetstream_ensure:
            raise JetStreamUnavailable(
                f"consumer {spec.name} on {stream} does not exist and JETSTREAM_ENSURE=false"
            ) from None
        info = None
    if info is not None:
        config = info.config
        filters = [config.filter_subject] if config.filter_subject else list(config.filter_subjects or [])
        if filters != [spec.filter_subject] or config.ack_policy != AckPolicy.EXPLICIT:
            raise JetStreamUnavailable(
                f"consumer {spec.name} filters {filters} with ack policy {config.ack_policy}; expected "
                f"[{spec.filter_subject!r}] with explicit acks"
            )
        same = math.isclose(
            float(config.ack_wait or 0), settings.jetstream_ack_wait, rel_tol=1e-6
        ) and config.max_deliver == consumer_max_deliver(settings.jetstream_max_deliver)
        if same or not settings.jetstream_ensure:
            if not same:
                log.warning(
                    "consumer limits differ from the settings; using the server's",
                    extra={
                        "consumer": spec.name,
                        "ack_wait": config.ack_wait,
                        "max_deliver": config.max_deliver,
                    },
                )
            return _limits(info)
    try:
        info = await _api(f"add consumer {spec.name}", js.add_consumer(stream, config=wanted))
    except nats.js.errors.BadRequestError as error:
        raise JetStreamUnavailable(f"consumer {spec.name} on {stream}: {error}") from None
    return _limits(info)


async def _ensure_bucket(
    js: JetStreamContext, bucket: str, ensure: bool, ttl: float, replicas: int = 1
) -> KeyValue:
    try:
        kv = await _api(f"bucket {bucket}", js.key_value(bucket))
    except nats.js.errors.BucketNotFoundError:
        if not ensure:
            raise JetStreamUnavailable(
                f"results bucket {bucket} does not exist and JETSTREAM_ENSURE=false"
            ) from None
    else:
        await _ensure_ttl(js, bucket, ttl, ensure)
        return kv
    config = KeyValueConfig(
        bucket=bucket,
        description="Rory result records (msgpack Replies by node and command id)",
        history=1,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,  # lookups by direct get: answered by the stream, not queued behind the JS API
    )
    try:
        return await _api(f"create bucket {bucket}", js.create_key_value(config=config))
    except nats.js.errors.BadRequestError:
        return await _api(f"bucket {bucket}", js.key_value(bucket))  # created concurrently


async def _ensure_ttl(js: JetStreamContext, bucket: str, ttl: float, ensure: bool) -> None:
    """Bring an existing bucket's record lifetime to JETSTREAM_RESULT_TTL (ensure), or say it differs."""
    stream = f"KV_{bucket}"
    try:
        info = await js.stream_info(stream)
        current = float(info.config.max_age or 0.0)
        if math.isclose(current, ttl, rel_tol=1e-6):
            return
        if not ensure:
            log.warning(
                "result records live longer or shorter than JETSTREAM_RESULT_TTL; using the bucket's",
                extra={"bucket": bucket, "ttl": current, "jetstream_result_ttl": ttl},
            )
            return
        await js.update_stream(config=info.config.evolve(max_age=ttl))
        log.info("result record TTL updated", extra={"bucket": bucket, "from": current, "to": ttl})
    except Exception as error:  # the bucket works with its old TTL; not a reason to refuse to start
        log.warning(
            "result record TTL not checked or updated", extra={"bucket": bucket, "error": repr(error)}
        )


# ----------------------------------------------------------------------------- dead letters
MOVER_ID = "dlq-mover"  # node token of the Replies a stand-alone mover publishes


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
            "error": _error_info(error),
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
            _error_info(error),
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


# ----------------------------------------------------------------------------- slots
class SlotBroker:
    """Hands out the dispatcher's free slots to pullers, first come first served.

    A puller at the head of the queue takes its share of the free slots (all of them when nobody
    else waits), so two consumers both get pulled when slots are scarce; a puller whose request ended
    re-queues at the tail, so with one slot the consumers take turns.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._queue: list[object] = []
        self.pullers: list[_Puller] = []  # whose idle reservations a core command may reclaim
        self._changed = asyncio.Event()
        self.closed = False

    def notify(self) -> None:
        self._changed.set()

    async def acquire(self, who: object, limit: int | None = None) -> int:
        """Reserve at least one slot, at most ``limit`` (returns how many); 0 once closed."""
        self._queue.append(who)
        try:
            while not self.closed:
                free = self._dispatcher.free_slots
                if free > 0 and self._queue[0] is who:
                    share = max(1, math.ceil(free / len(self._queue)))
                    if limit is not None:
                        share = min(share, limit)
                    self._dispatcher.reserved += share
                    return share
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)
            return 0
        finally:
            self._queue.remove(who)
            self._changed.set()

    def reclaim(self) -> bool:
        """Give one slot of an idle reservation to a core command (``Dispatcher.reclaim``).

        The pull request it belonged to may still bring a message for it; such a delivery then finds
        no reservation and is handed back at once (or takes a slot freed meanwhile).
        """
        for puller in self.pullers:
            pull = puller.current
            if pull is not None and pull.slots > 0:
                pull.slots -= 1
                self._dispatcher.reserved -= 1
                return True
        return False

    def take_one(self) -> bool:
        """Reserve one slot now if one is free (for a message no reservation covers)."""
        if self.closed or self._dispatcher.free_slots <= 0:
            return False
        self._dispatcher.reserved += 1
        return True

    def release(self, slots: int) -> None:
        if slots:
            self._dispatcher.reserved -= slots
            self.notify()

    def close(self) -> None:
        self.closed = True
        self.notify()


@dataclass
class _Pull:
    """One outstanding pull request: its reply subject, the slots it still holds, how it ended."""

    reply: str
    slots: int  # reserved slots not used yet (a core command may reclaim some)
    batch: int = 0  # messages asked for; the request is over once this many arrived
    ends: float = 0.0  # loop time when the server gives up on the request (0: answered at once)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: str | None = None
    description: str = ""
    delivered: int = 0


class _Puller:
    """Pulls one durable consumer, one request at a time, never more messages than reserved slots.

    A lane that just delivered messages is *busy*: it drains with ``no_wait`` requests (batch = its
    share of the free slots), which the server answers at once, so no slot sits reserved while
    another lane has work. A lane that came back empty is *idle*: it long-polls (one slot, expiry
    PULL_EXPIRES) only while every lane is idle, and otherwise looks again with a one-slot
    ``no_wait`` request every POLL_INTERVAL. Requests of one message or answered at once also mean
    that a message handed back (nak) can never be redelivered into the request it came from.
    """

    def __init__(self, intake: JetStreamIntake, spec: ConsumerSpec) -> None:
        self.intake = intake
        self.spec = spec
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{intake.topology.stream}.{spec.name}"
        self.inbox = ""
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.current: _Pull | None = None
        self.idle = True
        self._count = 0

    async def start(self) -> None:
        nc = self.intake.nc
        self.inbox = nc.new_inbox()
        self.sub = await nc.subscribe(f"{self.inbox}.*", cb=self._on_msg)
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"pull-{self.spec.name}")

    def _others_busy(self) -> bool:
        return any(not puller.idle for puller in self.intake._pullers if puller is not self)

    async def _loop(self) -> None:
        intake, broker = self.intake, self.intake.broker
        silent = 0
        while not intake.stopping:
            if self.idle and self._others_busy():
                await intake.pause(POLL_INTERVAL)
                if intake.stopping:
                    break
            slots = await broker.acquire(self, 1 if self.idle else None)
            if slots == 0:
                break
            wait = self.idle and not self._others_busy()
            self._count += 1
            pull = _Pull(f"{self.inbox}.{self._count}", slots, slots)
            self.current = pull
            if wait:
                request: dict[str, Any] = {"batch": slots, "expires": int(PULL_EXPIRES * 1e9)}
                pull.ends = asyncio.get_running_loop().time() + PULL_EXPIRES
            else:
                request = {"batch": slots, "no_wait": True}
            sent = False
            try:
                await intake.nc.publish(self.next_subject, json.dumps(request).encode(), reply=pull.reply)
                sent = True
                await asyncio.wait_for(pull.done.wait(), (PULL_EXPIRES if wait else 0) + PULL_MARGIN)
            except TimeoutError:
                pass
            except Exception as error:
                log.warning("pull request failed", extra={"consumer": self.spec.name, "error": repr(error)})
            finally:
                self.current = None
                broker.release(pull.slots)
                pull.slots = 0
            if not sent:
                await intake.pause(PULL_EXPIRES)  # connection closed or closing: do not spin
                continue
            self.idle = pull.delivered < pull.batch  # fewer than asked for: the consumer is empty now
            if pull.status is None and not pull.delivered:
                silent += 1  # no answer at all: server restarting, or our consumer is gone
                if silent % 3 == 0 and not intake.stopping:
                    await intake.check_consumer(self.spec)
            else:
                silent = 0
            if pull.status is not None and pull.status not in ("404", "408") and not intake.stopping:
                log.warning(
                    "pull request ended",
                    extra={
                        "consumer": self.spec.name,
                        "status": pull.status,
                        "description": pull.description,
                    },
                )
                if pull.status == "503" or "deleted" in pull.description.lower():
                    await intake.check_consumer(self.spec)  # 503: no responders, the consumer is gone
                await intake.pause(0.5)  # do not spin on a persistent error

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
            if pull.slots > 0:
                pull.slots -= 1
                covered = True
            if pull.delivered >= pull.batch:
                pull.done.set()  # the server considers the request complete
        if covered:
            self.intake.accept(msg, self.spec)
        elif self.intake.broker.take_one():
            self.intake.accept(msg, self.spec)  # late delivery of an old request, and a slot is free
        else:
            self.intake.nak_now(msg)


# ----------------------------------------------------------------------------- running jobs
@dataclass
class _Delivery:
    msg: Msg
    stream_seq: int
    deliveries: int


@dataclass
class _Running:
    """A command being served; further deliveries of the same command join it."""

    job: Any
    spec: ConsumerSpec
    deliveries: dict[int, _Delivery]  # newest delivery per stream sequence
    closing: bool = False

    def attach(self, delivery: _Delivery) -> None:
        self.deliveries[delivery.stream_seq] = delivery


def _delivery(msg: Msg) -> _Delivery:
    meta = msg.metadata
    return _Delivery(msg, meta.sequence.stream, meta.num_delivered)


class JetStreamIntake:
    """The durable intake of one worker instance; see the module docstring."""

    def __init__(
        self,
        *,
        nc: Client,
        settings: Settings,
        dispatcher: Dispatcher,
        nak_cap: float = NAK_MAX_DELAY,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.dispatcher = dispatcher
        self.topology = Topology.from_settings(settings)
        self.prefix = settings.rory_subject_prefix
        self.node_id = settings.node_id
        self.nak_cap = nak_cap
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.kv: KeyValue | None = None
        self.limits: dict[str, ConsumerLimits] = {}
        self.broker = SlotBroker(dispatcher)
        self.stopping = False
        self._stop = asyncio.Event()
        self._pullers: list[_Puller] = []
        self._mover: DeadLetterMover | None = None
        self._running: dict[str, _Running] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._aux: set[asyncio.Task[None]] = set()
        self._results_prefix = subjects.results(self.prefix, self.node_id, "x")[:-1]
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "received",
                "acked",
                "naked",
                "termed",
                "dead_lettered",
                "answered_from_record",
                "joined_running",
                "lost_record_race",
                "rejected",
                "in_progress",
            ),
            0,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Ensure or verify the topology, subscribe the advisories, start pulling."""
        self.limits, self.kv = await ensure_topology(self.js, self.topology, self.settings)
        self.dispatcher.on_release = self.broker.notify
        self.dispatcher.reclaim = self.broker.reclaim
        stream = self.topology.stream
        if self.settings.jetstream_ensure:
            # Moving an abandoned command needs stream-wide message access, which only an identity
            # that administers JetStream has (JETSTREAM_ENSURE=true); with a node's own credentials
            # (JETSTREAM_ENSURE=false) an operator/Manager runs the DeadLetterMover instead.
            self._mover = DeadLetterMover(
                self.nc,
                prefix=self.prefix,
                stream=stream,
                dlq_stream=self.topology.dlq_stream,
                node_id=self.node_id,
                consumers=[spec.name for spec in self.topology.consumers],
                max_message_bytes=self.settings.max_message_bytes,
                reply=self._mover_reply,
            )
            await self._mover.start()
        for spec in self.topology.consumers:
            puller = _Puller(self, spec)
            await puller.start()
            self._pullers.append(puller)
            self.broker.pullers.append(puller)
        log.info(
            "durable intake started",
            extra={
                "stream": stream,
                "consumers": {name: vars(limits) for name, limits in self.limits.items()},
                "bucket": self.topology.bucket,
                "dlq": self.topology.dlq_stream,
            },
        )

    @property
    def subjects(self) -> list[str]:
        return [spec.filter_subject for spec in self.topology.consumers]

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return set(self._jobs)

    def stop_pulling(self) -> None:
        """No new pull requests; messages of the outstanding ones are nak'd for other workers."""
        self.stopping = True
        self._stop.set()
        self.broker.close()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up when the intake stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def cancel_jobs(self) -> None:
        for task in list(self._jobs):
            task.cancel()

    async def finish(self, grace: float) -> None:
        """Let in-flight jobs finish within ``grace`` s; cancel (and nak) the rest; stop the pullers."""
        self.stop_pulling()
        if self._jobs:
            _, pending = await asyncio.wait(set(self._jobs), timeout=grace)
            if pending:
                log.warning("grace period over; handing jobs back", extra={"jobs": len(pending)})
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
        tasks = [p.task for p in self._pullers if p.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=PULL_EXPIRES + PULL_MARGIN + 0.5)
            for task in pending:
                task.cancel()
        if self._aux:
            await asyncio.wait(set(self._aux), timeout=ACK_TIMEOUT + 1)

    async def close(self) -> None:
        """Unsubscribe the pull inboxes and advisories (call before draining the connection)."""
        for sub in [p.sub for p in self._pullers if p.sub is not None]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._mover is not None:
            await self._mover.close()
        if self.dispatcher.on_release == self.broker.notify:
            self.dispatcher.on_release = None
            self.dispatcher.reclaim = None

    async def on_reconnected(self) -> None:
        """After a reconnect the server may have forgotten our pull requests: issue new ones now."""
        for puller in self._pullers:
            puller.abandon()

    def stats(self) -> dict[str, Any]:
        return {
            "stream": self.topology.stream,
            "consumers": [spec.name for spec in self.topology.consumers],
            "reserved": self.dispatcher.reserved,
            **self.counters,
        }

    # ------------------------------------------------------------------ consumer health
    async def check_consumer(self, spec: ConsumerSpec) -> None:
        """Recreate a consumer someone deleted (ensure), or say loudly that it is gone."""
        if not self.nc.is_connected:
            return
        try:
            await self.js.consumer_info(self.topology.stream, spec.name)
        except nats.js.errors.NotFoundError:
            if self.settings.jetstream_ensure:
                log.warning("consumer is gone; recreating it", extra={"consumer": spec.name})
                with contextlib.suppress(Exception):
                    self.limits[spec.name] = await _ensure_consumer(
                        self.js, self.topology.stream, spec, self.settings
                    )
            else:
                log.error("consumer is gone and JETSTREAM_ENSURE=false", extra={"consumer": spec.name})
        except Exception as error:
            log.warning("consumer check failed", extra={"consumer": spec.name, "error": repr(error)})

    # ------------------------------------------------------------------ intake
    def _spawn(self, coro: Any, *, job: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks = self._jobs if job else self._aux
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def handback_delay(self) -> float:
        """Delay for handing a message back: 0, or while stopping, until our open pulls have ended.

        A message nak'd without delay is redelivered to any waiting pull request, including one this
        stopping worker still has open, which would only hand it back again and burn a delivery.
        """
        if not self.stopping:
            return 0.0
        now = asyncio.get_running_loop().time()
        ends = [p.current.ends for p in self._pullers if p.current is not None and p.current.ends > now]
        return max(ends) - now + 0.1 if ends else 0.0

    def nak_now(self, msg: Msg) -> None:
        """Hand a message back for another worker (no slot for it, or stopping)."""
        self._spawn(self._nak(msg, self.handback_delay()))

    def accept(self, msg: Msg, spec: ConsumerSpec) -> None:
        """Take a delivered message on the slot reserved for it (synchronous: called per message)."""
        dispatcher = self.dispatcher
        dispatcher.reserved -= 1  # the reservation becomes the job's slot (prepare) or is freed
        received = time.perf_counter()
        self.counters["received"] += 1
        try:
            delivery = _delivery(msg)
        except Exception:  # not a JetStream delivery: nothing to ack, nothing to answer
            log.warning("ignoring a non-JetStream message on a pull inbox", extra={"subject": msg.subject})
            self.broker.notify()
            return
        if self.stopping:
            self.broker.notify()
            self.nak_now(msg)
            return
        subject = msg.subject
        op = subject[len(spec.op_prefix) :] if subject.startswith(spec.op_prefix) else ""
        try:
            job = dispatcher.prepare(msg.data, msg.headers, op, received, reserved=True)
        except Rejected as rejected:
            self.broker.notify()
            self.counters["rejected"] += 1
            self._spawn(self._on_rejected(delivery, spec, op, rejected))
            return
        command_id = job.command.id
        running = self._running.get(command_id)
        if running is not None and not running.closing:
            dispatcher.release(job)  # the running one answers for both deliveries
            running.attach(delivery)
            self.counters["joined_running"] += 1
            self._spawn(self._progress(msg))
            return
        state = _Running(job, spec, {delivery.stream_seq: delivery})
        self._running[command_id] = state
        self._spawn(self._serve(state), job=True)

    # ------------------------------------------------------------------ serving
    async def _serve(self, state: _Running) -> None:
        job = state.job
        command = job.command
        key = subjects.record_key(self.prefix, state.spec.source, command.id)
        keep_alive = asyncio.get_running_loop().create_task(self._keep_alive(state))
        holding = True  # the admitted job's slot, until run() or release() gives it back
        try:
            try:
                stored = await self._lookup(key)
            except Exception as error:
                log.warning("result record lookup failed; retrying later", extra={"error": repr(error)})
                self.dispatcher.release(job)
                holding = False
                unavailable = Busy(f"result records unavailable: {error}")
                reply = self.dispatcher.reject(
                    unavailable,
                    op=command.op,
                    received=job.received,
                    data={"id": command.id, "job_id": command.job_id},
                )
                data, headers = self._encode(reply)
                await self._retry_or_dead_letter(
                    state, _error_info(unavailable), (command.job_id or command.id, data, headers)
                )
                return
            if stored is not None:
                self.dispatcher.release(job)
                holding = False
                await self._answer_from_record(state, stored)
                return
            runs = self.limits[state.spec.name].runs
            if 0 < runs < max(d.deliveries for d in state.deliveries.values()):
                self.dispatcher.release(job)  # every run so far died with its worker: do not run it again
                holding = False
                await self._reap(state, runs)
                return
            holding = False  # run() frees the slot when it returns, whatever happens
            reply = await self.dispatcher.run(job)
            await self._settle(state, reply)
        except asyncio.CancelledError:
            if holding:
                self.dispatcher.release(job)
            state.closing = True
            await asyncio.shield(self._nak_all(state, self.handback_delay()))
            raise
        finally:
            keep_alive.cancel()
            if self._running.get(command.id) is state:
                del self._running[command.id]

    async def _keep_alive(self, state: _Running) -> None:
        """``in_progress`` every third of the ack wait while the command is being served."""
        interval = max(0.05, self.limits[state.spec.name].ack_wait / 3.0)
        while True:
            await asyncio.sleep(interval)
            for delivery in list(state.deliveries.values()):
                await self._progress(delivery.msg)

    async def _progress(self, msg: Msg) -> None:
        try:
            await msg.in_progress()
            self.counters["in_progress"] += 1
        except Exception as error:
            log.debug("in_progress not sent", extra={"error": repr(error)})

    async def _lookup(self, key: str) -> bytes | None:
        assert self.kv is not None
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value or None

    def _record_mismatch(self, state: _Running, data: bytes) -> str | None:
        """Why a stored record is not the answer to this command, or None when it is.

        It must be a Reply to this very command: same ``op``, ``in_reply_to`` = the command's id,
        ``job_id`` = the command's job, and for a node's own command (not the pool's) written by
        this node. So a record that is not this command's is never sent as its answer.
        """
        command = state.job.command
        try:
            stored = codec.decode(data, json_mode=False, max_bytes=max(len(data), 1))
        except Exception:
            return "undecodable"
        if not isinstance(stored, dict):
            return "not a Reply"
        expected = {
            "op": command.op,
            "in_reply_to": command.id,
            "job_id": command.job_id or command.id,
        }
        if state.spec.source != subjects.JOBS_POOL_TOKEN:
            expected["node_id"] = self.node_id
        for field_name, value in expected.items():
            if stored.get(field_name) != value:
                return field_name
        return None

    async def _answer_from_record(self, state: _Running, data: bytes) -> None:
        command = state.job.command
        mismatch = self._record_mismatch(state, data)
        if mismatch is not None:
            log.warning(
                "the result record does not match the command; not answering from it",
                extra={"id": command.id, "job_id": command.job_id, "field": mismatch},
            )
            conflict = Conflict(
                f"command id {command.id!r} was already used for another command; use a new id"
            )
            reply = self.dispatcher.reject(
                conflict,
                op=command.op,
                received=state.job.received,
                data={"id": command.id, "job_id": command.job_id},
            )
            data, headers = self._encode(reply)
            state.closing = True
            await self._publish_result(command.job_id or command.id, data, headers)
            await self._term_all(state)
            return
        state.closing = True
        self.counters["answered_from_record"] += 1
        log.info("answered from the result record", extra={"id": command.id, "job_id": command.job_id})
        await self._publish_result(command.job_id or command.id, data, {codec.CONTENT_TYPE: codec.MSGPACK})
        await self._ack_all(state)

    async def _settle(self, state: _Running, reply: dict[str, Any]) -> None:
        command = state.job.command
        job_id = command.job_id or command.id
        data, headers = self._encode(reply)
        if ERROR_CODE_HEADER not in headers:
            try:
                earlier = await self._record(
                    subjects.record_key(self.prefix, state.spec.source, command.id), data
                )
            except Exception as error:
                log.warning(
                    "result record not stored; the command will run again", extra={"error": repr(error)}
                )
                failure = _error_info(Busy(f"the result could not be recorded: {error}"))
                failed, failed_headers = self._encode(_failed(reply, failure))
                await self._retry_or_dead_letter(state, failure, (job_id, failed, failed_headers))
                return
            if earlier is not None:  # another run recorded first: answer with its result
                self.counters["lost_record_race"] += 1
                if self._record_mismatch(state, earlier) is None:
                    data, headers = earlier, {codec.CONTENT_TYPE: codec.MSGPACK}
                else:  # not this command's record: never answer with it; our own result stands
                    log.warning(
                        "the existing result record is not this command's; answering with our own result",
                        extra={"id": command.id, "job_id": job_id},
                    )
            state.closing = True
            await self._publish_result(job_id, data, headers)
            await self._ack_all(state)
            return
        error = _reply_error(reply, headers)
        if error["code"] < 500:
            state.closing = True
            await self._publish_result(job_id, data, headers)
            await self._term_all(state)
        elif self.stopping and error["type"] == Busy.type:
            state.closing = True
            await self._nak_all(state, self.handback_delay())  # cancelled by the stop: for another worker
        else:
            await self._retry_or_dead_letter(state, error, (job_id, data, headers))

    async def _retry_or_dead_letter(
        self,
        state: _Running,
        error: dict[str, Any],
        reply: tuple[str, bytes, dict[str, str]] | None = None,
    ) -> None:
        """Nak with back-off, or on the last delivery copy to the DLQ, answer with the error, term."""
        state.closing = True
        limits = self.limits[state.spec.name]
        finals = []
        for delivery in list(state.deliveries.values()):
            if 0 < limits.runs <= delivery.deliveries:
                finals.append(delivery)
            else:
                await self._nak(
                    delivery.msg, nak_delay(delivery.deliveries, limits.ack_wait, cap=self.nak_cap)
                )
        if not finals:
            return
        moved = []
        for delivery in finals:
            if await self._dead_letter_msg(delivery, state.spec, error):
                moved.append(delivery)
            else:
                await self._nak(delivery.msg, 0.0)  # the MAX_DELIVERIES advisory will move it
        if moved and reply is not None:
            await self._publish_result(*reply)
        for delivery in moved:
            await self._term(delivery.msg)

    async def _reap(self, state: _Running, runs: int) -> None:
        """Dead-letter a command whose ``runs`` deliveries all ended without an answer."""
        command = state.job.command
        error = MaxDeliveries(
            f"run {runs} times without an answer (workers stopped or crashed while running it)"
        )
        reply = self.dispatcher.reject(
            error,
            op=command.op,
            received=state.job.received,
            data={"id": command.id, "job_id": command.job_id},
        )
        data, headers = self._encode(reply)
        await self._retry_or_dead_letter(
            state, _error_info(error), (command.job_id or command.id, data, headers)
        )

    async def _on_rejected(
        self, delivery: _Delivery, spec: ConsumerSpec, op: str, rejected: Rejected
    ) -> None:
        error = rejected.error
        if isinstance(error, Busy):  # stopping
            await self._nak(delivery.msg, self.handback_delay())
            return
        data, headers = self._encode(rejected.reply)
        job_id = rejected.reply.get("job_id") or ""
        if error.code >= 500:
            state = _Running(None, spec, {delivery.stream_seq: delivery})
            await self._retry_or_dead_letter(state, _error_info(error), (job_id, data, headers))
            return
        if job_id:
            await self._publish_result(job_id, data, headers)
        elif not await self._dead_letter_msg(delivery, spec, _error_info(error)):
            await self._nak(delivery.msg, nak_delay(delivery.deliveries, self.limits[spec.name].ack_wait))
            return  # nobody to tell and no DLQ: keep it rather than lose it silently
        await self._term(delivery.msg)

    # ------------------------------------------------------------------ dead letters
    async def _dead_letter_msg(self, delivery: _Delivery, spec: ConsumerSpec, error: dict[str, Any]) -> bool:
        msg = delivery.msg
        return await self._dead_letter(
            msg.subject,
            msg.data,
            msg.headers,
            stream_seq=delivery.stream_seq,
            deliveries=delivery.deliveries,
            spec=spec,
            error=error,
        )

    async def _dead_letter(
        self,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        *,
        stream_seq: int,
        deliveries: int,
        spec: ConsumerSpec,
        error: dict[str, Any],
    ) -> bool:
        """Copy a command to ``<p>.dlq.<node|pool>.<op>`` with the reason; True once the DLQ has it.

        The copy is made from the message this worker holds, so no stream-wide access is needed.
        """
        op = subject[len(spec.op_prefix) :] if subject.startswith(spec.op_prefix) else "unknown"
        out = dlq_headers(
            headers,
            error,
            subject=subject,
            stream=self.topology.stream,
            stream_seq=stream_seq,
            deliveries=deliveries,
            consumer=spec.name,
            node=self.node_id,
        )
        try:
            await self.js.publish(
                subjects.dlq_subject(self.prefix, spec.source, op),
                data or b"",
                headers=out,
                stream=self.topology.dlq_stream,
                timeout=5.0,
            )
        except Exception as error_:
            log.error("dead letter not stored", extra={"subject": subject, "error": repr(error_)})
            return False
        self.counters["dead_lettered"] += 1
        log.warning(
            "command dead-lettered",
            extra={
                "subject": subject,
                "seq": stream_seq,
                "deliveries": deliveries,
                "reason": out[DLQ_REASON],
            },
        )
        return True

    def _mover_reply(self, error: RoryError, op: str, decoded: Any) -> dict[str, Any]:
        """The error Reply of a command the mover dead-lettered (counted here and on its endpoint)."""
        self.counters["dead_lettered"] += 1
        return self.dispatcher.reject(error, op=op, received=time.perf_counter(), data=decoded)

    # ------------------------------------------------------------------ outputs
    def _encode(self, reply: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        max_payload = self.nc.max_payload or self.settings.max_message_bytes
        return self.dispatcher.encode(reply, False, max_payload)

    async def _record(self, key: str, data: bytes) -> bytes | None:
        """Create the result record; the first writer wins.

        Returns None when ``data`` became the record, or the record another run stored first (a
        duplicate that ran concurrently elsewhere, or our own create whose confirmation was lost), so
        every Reply of a command carries the same result. Retries briefly: the server may be restarting.
        """
        assert self.kv is not None
        loop = asyncio.get_running_loop()
        until = loop.time() + RECORD_BUDGET
        delay = 0.1
        while True:
            try:
                await self.kv.create(key, data)
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                exists = True
            except Exception:
                if loop.time() + delay > until:
                    raise
                exists = False
            if exists:
                with contextlib.suppress(Exception):
                    stored = await self._lookup(key)
                    if stored is not None:
                        return stored
            if loop.time() + delay > until:
                raise TimeoutError("the result record could be neither created nor read")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _publish_result(self, job_id: str, data: bytes, headers: dict[str, str]) -> None:
        if not job_id:
            return
        try:
            await self.nc.publish(self._results_prefix + job_id, data, headers=headers)
        except Exception as error:
            log.error("result not published", extra={"job_id": job_id, "error": repr(error)})

    async def _ack_all(self, state: _Running) -> None:
        for delivery in list(state.deliveries.values()):
            msg = delivery.msg
            try:
                await msg.ack_sync(timeout=ACK_TIMEOUT)
            except nats.errors.MsgAlreadyAckdError:
                continue
            except Exception as error:  # unconfirmed: a redelivery is answered from the record
                log.warning("ack not confirmed", extra={"seq": delivery.stream_seq, "error": repr(error)})
                with contextlib.suppress(Exception):
                    await msg.ack()
            self.counters["acked"] += 1

    async def _term_all(self, state: _Running) -> None:
        for delivery in list(state.deliveries.values()):
            await self._term(delivery.msg)

    async def _nak_all(self, state: _Running, delay: float) -> None:
        for delivery in list(state.deliveries.values()):
            await self._nak(delivery.msg, delay)

    async def _term(self, msg: Msg) -> None:
        try:
            await msg.term()
            self.counters["termed"] += 1
        except Exception as error:
            log.warning("term not sent", extra={"error": repr(error)})

    async def _nak(self, msg: Msg, delay: float) -> None:
        try:
            await msg.nak(delay=delay if delay > 0 else None)
            self.counters["naked"] += 1
        except Exception as error:
            log.warning("nak not sent", extra={"error": repr(error)})


def _key(header: Any) -> str:
    return str(getattr(header, "value", header))  # nats-py may use str-Enum keys


def _error_info(error: RoryError) -> dict[str, Any]:
    return {"code": error.code, "type": error.type, "message": error.message, "retryable": error.retryable}


def _failed(reply: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """``reply`` turned into an error Reply (its result dropped)."""
    failed = {key: value for key, value in reply.items() if key != "result"}
    failed["ok"] = False
    failed["error"] = error
    return failed


def _reply_error(reply: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
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
    "DUPLICATE_WINDOW",
    "MOVER_ID",
    "ConsumerSpec",
    "DeadLetterMover",
    "JetStreamIntake",
    "JetStreamUnavailable",
    "MaxDeliveries",
    "SlotBroker",
    "Topology",
    "dlq_headers",
    "dlq_subject",
    "ensure_topology",
    "nak_delay",
    "publish_job",
    "record_key",
    "results_bucket",
    "subject_covers",
]
