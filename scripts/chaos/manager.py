"""The Manager / data-owner side: publish commands, collect Replies, count executions in storage.

JetStream mode publishes each command once to ``<p>.jobs.pool.fault.work`` (``Nats-Msg-Id`` = the
command id, via worker.runtime.jetstream.publish_job; a publish that times out is repeated with the
same id, which the stream's duplicate window drops) and listens on ``<p>.results.>``. A job whose
Reply the Manager missed (its own connection was on a killed server) is read from the result record,
as docs/reliability.md tells Managers to. Core mode sends request-reply with client retries (same
command id) on timeouts and retryable (5xx) errors: what a Manager sees without durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from schemas import codec, subjects
from worker.runtime import jetstream
from worker.storage import LocalStore

PREFIX = "chaos"
OP = "fault.work"
REPLICAS = 3


def command(key: str, seconds: float) -> dict[str, Any]:
    """A ``fault.work`` Command (tests/faults/ops.py); ``id`` doubles as the job id."""
    return {"v": 1, "id": uuid.uuid4().hex, "op": OP, "ts": time.time(),
            "params": {"key": key, "seconds": seconds}}


async def _quiet(error: Exception) -> None:
    """A server of ours was killed: the client reconnects by itself; nats-py would print a traceback."""


async def connect(urls: list[str]) -> Client:
    return await nats.connect(servers=urls, name="chaos-manager", max_reconnect_attempts=-1,
                              reconnect_time_wait=0.3, ping_interval=3, max_outstanding_pings=2,
                              connect_timeout=3, error_cb=_quiet)


async def create_r3_topology(nc: Client) -> None:
    """The jobs/DLQ streams and the results bucket with three replicas, before any worker starts.

    A worker with JETSTREAM_ENSURE=true creates them with one replica (worker/runtime/jetstream.py
    ``ensure_topology`` sets no ``num_replicas``) and then only verifies existing ones, so the
    operator creates them R3 first; consumers inherit the stream's replicas.
    """
    js = nc.jetstream()
    await js.add_stream(StreamConfig(
        name="RORY_JOBS", subjects=subjects.jobs_stream_subjects(PREFIX),
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        duplicate_window=jetstream.DUPLICATE_WINDOW, max_msg_size=1024 * 1024, num_replicas=REPLICAS))
    await js.add_stream(StreamConfig(
        name="RORY_DLQ", subjects=jetstream.dlq_stream_subjects(PREFIX), retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, duplicate_window=jetstream.DUPLICATE_WINDOW,
        max_age=jetstream.DLQ_MAX_AGE, num_replicas=REPLICAS))
    await js.create_key_value(KeyValueConfig(
        bucket=jetstream.results_bucket("RORY_JOBS"), history=1, ttl=24 * 3600.0, storage=StorageType.FILE,
        direct=True, replicas=REPLICAS))


@dataclass
class Outcome:
    """What the Manager learnt about each job of one run."""

    keys: dict[str, str]  # command id -> storage key
    replies: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    answered_at: dict[str, float] = field(default_factory=dict)  # first answer, monotonic
    from_record: set[str] = field(default_factory=set)
    attempts: Counter[str] = field(default_factory=Counter)  # publishes / requests sent per job

    def add(self, job: str, body: dict[str, Any], *, final: bool = True) -> None:
        """A Reply for ``job``; ``final``: the Manager stops waiting for this job (core retries end)."""
        self.replies[job].append(body)
        if final and job not in self.answered_at:
            self.answered_at[job] = time.monotonic()

    @property
    def answered(self) -> int:
        return len(self.answered_at)

    def final(self, job: str) -> dict[str, Any] | None:
        """The answer that counts: the first (JetStream: later ones repeat it) or the one core retries
        ended on; a job that was never answered has none."""
        if job not in self.answered_at:
            return None
        replies = self.replies[job]
        return replies[0] if len({bool(r.get("ok")) for r in replies}) == 1 else replies[-1]

    def extra_replies(self, job: str) -> int:
        """Successful Replies beyond the first (JetStream: a repeated Reply; core: two answered tries)."""
        return max(0, sum(1 for r in self.replies.get(job, []) if r.get("ok")) - 1)


class Collector:
    """Every Reply on ``<p>.results.>``, grouped by ``in_reply_to`` (whichever node token it carries)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.sub: Any = None

    async def start(self, nc: Client) -> None:
        self.sub = await nc.subscribe(subjects.results_all(PREFIX), cb=self._on_msg)
        await nc.flush()

    async def _on_msg(self, msg: Msg) -> None:
        body = codec.decode(msg.data, json_mode=codec.is_json(msg.headers))
        job = str(body.get("in_reply_to", ""))
        if job in self.outcome.keys:
            self.outcome.add(job, body)

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


async def publish_all(nc: Client, commands: list[dict[str, Any]], outcome: Outcome) -> None:
    """Publish each command until the stream acks it (same id each time: stored once)."""
    js = nc.jetstream()
    for body in commands:
        for attempt in range(60):
            outcome.attempts[body["id"]] += 1
            try:
                await jetstream.publish_job(js, PREFIX, None, body, timeout=2.0)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.APIError,
                    nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))


async def read_records(nc: Client, outcome: Outcome) -> None:
    """Unanswered jobs whose result record exists: the Manager missed the Reply, not the job."""
    kv = await nc.jetstream().key_value(jetstream.results_bucket("RORY_JOBS"))
    for job in outcome.keys:
        if job in outcome.answered_at:
            continue
        with contextlib.suppress(Exception):
            entry = await kv.get(jetstream.record_key(PREFIX, subjects.JOBS_POOL_TOKEN, job))
            if entry.value:
                outcome.add(job, codec.decode(entry.value, json_mode=False), final=True)
                outcome.from_record.add(job)


async def request_with_retries(nc: Client, body: dict[str, Any], outcome: Outcome, slots: asyncio.Semaphore,
                               *, timeout: float, budget: float) -> None:
    """Core request-reply as a careful Manager does it: retry timeouts and 5xx (BUSY, storage) with
    back-off, same command id, for ``budget`` seconds; then the last error stands (or nothing: lost)."""
    job, data = body["id"], codec.encode(body)
    subject = subjects.pool_cmd(PREFIX, OP)
    give_up = time.monotonic() + budget
    attempt = 0
    while True:
        reply: dict[str, Any] | None = None
        async with slots:
            outcome.attempts[job] += 1
            with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError,
                                     nats.errors.ConnectionReconnectingError):
                msg = await nc.request(subject, data, timeout=timeout)
                reply = codec.decode(msg.data, json_mode=codec.is_json(msg.headers))
        last = time.monotonic() >= give_up
        if reply is not None:
            code = int((reply.get("error") or {}).get("code", 0))
            done = bool(reply.get("ok")) or code < 500 or last
            outcome.add(job, reply, final=done)
            if done:
                return
        if last:
            return
        await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
        attempt += 1


async def count_markers(store: LocalStore, keys: set[str]) -> tuple[Counter[str], Counter[str]]:
    """(executions started, executions finished) per key, from the ``<key>-run-*``/``-result-*`` balls."""
    runs: Counter[str] = Counter()
    results: Counter[str] = Counter()
    for ball in await store.list_balls():
        key, _, rest = ball.partition("-")
        if key in keys:
            (runs if rest.startswith("run-") else results)[key] += 1
    return runs, results
