"""Topology of the durable intake: the jobs stream, its two consumers, the DLQ stream, the results bucket.

Created when ``JETSTREAM_ENSURE=true``, only verified otherwise (a node's own credentials cannot
administer JetStream: scripts/nats_auth.py):

* stream ``JETSTREAM_STREAM`` (RORY_JOBS): work-queue retention on ``<p>.jobs.>``, file storage,
  ``Nats-Msg-Id`` duplicate window :data:`DUPLICATE_WINDOW`. A work queue forbids overlapping
  consumers, so each node's durable ``worker-<node>`` filters ``<p>.jobs.<node>.>`` and the shared
  durable ``pool`` filters ``<p>.jobs.pool.>`` (a node may not be called ``pool``);
* stream ``JETSTREAM_DLQ_STREAM`` (RORY_DLQ): limits retention on ``<p>.dlq.>``;
* KV bucket ``<stream minus _JOBS>_RESULTS`` (RORY_RESULTS): one record per successful command, key
  ``<p>.<node|pool>.<command id>`` (the node the command was addressed to, or ``pool``), value the
  msgpack Reply, TTL ``JETSTREAM_RESULT_TTL``. Keying by node lets each node's credentials reach its
  own records and the pool's only (scripts/nats_auth.py).

The consumers allow one delivery more than ``JETSTREAM_MAX_DELIVER`` (:func:`consumer_max_deliver`);
when they already exist the worker follows the server's values (:class:`ConsumerLimits`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
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
from worker.runtime.connection import NatsUnavailable
from worker.settings import Settings

log = logging.getLogger("rory.worker.jetstream")

DUPLICATE_WINDOW = 120.0  # s: a re-publish with the same Nats-Msg-Id inside this window is dropped
DLQ_MAX_AGE = 30 * 24 * 3600.0  # s: dead letters are kept this long
MSG_ID = "Nats-Msg-Id"


class JetStreamUnavailable(NatsUnavailable):
    """JetStream is off, or the streams/consumers/bucket are missing or unusable (JETSTREAM_ENSURE)."""



# ----------------------------------------------------------------------------- names and helpers
# The names live in schemas/subjects.py (one source of truth, shared with scripts/nats_auth.py).
results_bucket = subjects.results_bucket
dlq_subject = subjects.dlq_subject
dlq_stream_subjects = subjects.dlq_stream_subjects
record_key = subjects.record_key



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


def consumer_limits(info: ConsumerInfo) -> ConsumerLimits:
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


def _rory_stream(
    name: str,
    description: str,
    stream_subjects: list[str],
    retention: RetentionPolicy,
    settings: Settings,
    *,
    max_msg_size: int = -1,  # StreamConfig's default: unlimited
    max_age: float | None = None,
) -> StreamConfig:
    """What both Rory streams share: on disk, a re-publish inside :data:`DUPLICATE_WINDOW` dropped,
    replicated as configured; each adds its one limit (message size, or age)."""
    return StreamConfig(
        name=name, description=description, subjects=stream_subjects, retention=retention,
        storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW, num_replicas=settings.jetstream_replicas,
        max_msg_size=max_msg_size, max_age=max_age,
    )


async def ensure_topology(
    js: JetStreamContext, topology: Topology, settings: Settings
) -> tuple[dict[str, ConsumerLimits], KeyValue]:
    """Create/update (JETSTREAM_ENSURE=true) or verify the streams, consumers and results bucket."""
    ensure = settings.jetstream_ensure
    prefix = topology.prefix
    jobs = _rory_stream(
        topology.stream, "Rory job commands (work queue)", subjects.jobs_stream_subjects(prefix),
        RetentionPolicy.WORK_QUEUE, settings, max_msg_size=settings.max_message_bytes,
    )
    dlq = _rory_stream(
        topology.dlq_stream, "Rory commands that could not be completed",
        subjects.dlq_stream_subjects(prefix), RetentionPolicy.LIMITS, settings, max_age=DLQ_MAX_AGE,
    )
    for config in (jobs, dlq):
        await _ensure_stream(js, config, ensure)
    limits: dict[str, ConsumerLimits] = {}
    for spec in topology.consumers:
        limits[spec.name] = await ensure_consumer(js, topology.stream, spec, settings)
    kv = await _ensure_bucket(
        js, topology.bucket, ensure, settings.jetstream_result_ttl, settings.jetstream_replicas
    )
    return limits, kv


async def ensure_consumer(
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
            return consumer_limits(info)
    try:
        info = await _api(f"add consumer {spec.name}", js.add_consumer(stream, config=wanted))
    except nats.js.errors.BadRequestError as error:
        raise JetStreamUnavailable(f"consumer {spec.name} on {stream}: {error}") from None
    return consumer_limits(info)


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


__all__ = [
    "DLQ_MAX_AGE",
    "DUPLICATE_WINDOW",
    "MSG_ID",
    "ConsumerLimits",
    "ConsumerSpec",
    "JetStreamUnavailable",
    "Topology",
    "consumer_limits",
    "consumer_max_deliver",
    "dlq_stream_subjects",
    "dlq_subject",
    "ensure_consumer",
    "ensure_topology",
    "publish_job",
    "record_key",
    "results_bucket",
    "subject_covers",
]
