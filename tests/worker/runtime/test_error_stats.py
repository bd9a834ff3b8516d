"""Every error Reply counts in ``$SRV.STATS``, and JetStream mode records terminal failures.

Read through a real nats-server: each test provokes one kind of error answer, then asks the worker's
``$SRV.STATS`` and checks ``num_errors`` / ``last_error`` of the endpoint that answered. The JetStream
tests count executions with an in-process counter kept by the operation itself, so "answered from the
record" is observed, not inferred from the worker's own counters.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field

from schemas import codec, subjects
from tests.faults.support import Workers, dead_letters, wait_for
from tests.ops import command, request, test_registry
from worker.errors import NotFound, RoryError, StorageUnavailable, ValidationFailed
from worker.runtime.context import JobContext
from worker.runtime.jetstream import MSG_ID, publish_job
from worker.runtime.registry import Operation, Registry
from worker.runtime.service import WorkerService

RUNS: Counter[str] = Counter()  # key -> executions of probe.fail (in-process)
_ERRORS: dict[int, type[RoryError]] = {404: NotFound, 422: ValidationFailed, 503: StorageUnavailable}


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^[A-Za-z0-9]+$", max_length=40)
    code: int


class BigParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=1, le=8 * 1024 * 1024)


async def probe_fail(ctx: JobContext, params: FailParams) -> dict[str, Any]:
    """Count the execution, then fail with ``code``."""
    RUNS[params.key] += 1
    raise _ERRORS[params.code](f"probe {params.key} fails with {params.code}")


async def probe_big(ctx: JobContext, params: BigParams) -> dict[str, Any]:
    """A result larger than the server's max_payload: the Reply becomes a 500 after the run."""
    return {"blob": "x" * params.size}


def probe_registry() -> Registry:
    return test_registry(
        Operation("probe.fail", FailParams, probe_fail, "counts, then fails"),
        Operation("probe.big", BigParams, probe_big, "returns an oversized result"),
    )


async def stats(nc: Client, worker: WorkerService) -> dict[str, dict[str, Any]]:
    """The worker's ``$SRV.STATS`` endpoints by name, asked over NATS."""
    subject = subjects.srv("STATS", subjects.SERVICE_NAME, worker.instance_id)
    reply = await nc.request(subject, b"", timeout=5)
    return {endpoint["name"]: endpoint for endpoint in json.loads(reply.data)["endpoints"]}


async def wait_errors(nc: Client, worker: WorkerService, name: str, count: int) -> dict[str, Any]:
    """Wait (bounded) until endpoint ``name`` counts ``count`` errors; return it."""
    seen: dict[str, Any] = {}

    async def counted() -> bool:
        seen.update((await stats(nc, worker))[name])
        return seen["num_errors"] >= count

    await wait_for(counted, 15)
    assert seen["num_errors"] == count, seen
    return seen


def _node(worker: WorkerService, op: str) -> str:
    return subjects.node_cmd(worker.prefix, worker.node_id, op)


# ----------------------------------------------------------------------------- core request-reply
async def test_core_error_replies_are_counted(start_worker, nc: Client) -> None:
    worker = await start_worker(registry=probe_registry(), worker_capacity=1)

    # rejected before running: bad params
    reply, _ = await request(nc, _node(worker, "test.echo"), command("test.echo", {"n": -1}))
    assert reply["error"]["code"] == 400
    echo = await wait_errors(nc, worker, "test_echo", 1)
    assert echo["last_error"].startswith("400 ")

    # a subject naming no registered operation
    reply, _ = await request(nc, _node(worker, "no.such"), command("no.such"))
    assert reply["error"]["type"] == "UNKNOWN_OPERATION"
    assert (await wait_errors(nc, worker, "unrouted", 1))["last_error"].startswith("400 UNKNOWN_OPERATION")

    # the handler fails (404), and the same command sent again is answered with the first Reply
    failing = command("probe.fail", {"key": "core404", "code": 404})
    first, _ = await request(nc, _node(worker, "probe.fail"), failing)
    again, _ = await request(nc, _node(worker, "probe.fail"), failing)
    assert first == again and first["error"]["code"] == 404 and RUNS["core404"] == 1
    fail = await wait_errors(nc, worker, "probe_fail", 2)
    assert fail["num_requests"] == 2 and fail["last_error"].startswith("404 NOT_FOUND")

    # the deadline passes while the handler sleeps
    late = command("test.sleep", {"seconds": 5}, deadline_s=0.2)
    reply, _ = await request(nc, _node(worker, "test.sleep"), late, timeout=10)
    assert reply["error"]["code"] == 504
    assert (await wait_errors(nc, worker, "test_sleep", 1))["last_error"].startswith("504")

    # BUSY: the only slot runs a sleep; the command sent meanwhile is refused at once
    sleeper = asyncio.ensure_future(
        request(nc, _node(worker, "test.sleep"), command("test.sleep", {"seconds": 1.0}), timeout=10)
    )
    await wait_for(lambda: worker.inflight == 1, 10)
    reply, _ = await request(nc, _node(worker, "test.echo"), command("test.echo", {"message": "hi"}))
    assert reply["error"]["type"] == "BUSY"
    assert (await wait_errors(nc, worker, "test_echo", 2))["last_error"].startswith("503 BUSY")
    (slept, _) = await sleeper
    assert slept["ok"]

    # a result too large for the server's max_payload: the run succeeded, the Reply is a 500
    size = (nc.max_payload or 1024 * 1024) + 1
    reply, _ = await request(nc, _node(worker, "probe.big"), command("probe.big", {"size": size}))
    assert reply["error"]["code"] == 500
    big = await wait_errors(nc, worker, "probe_big", 1)
    assert big["num_requests"] == 1 and big["last_error"].startswith("500 INTERNAL")


async def test_health_errors_are_counted(start_worker, nc: Client) -> None:
    worker = await start_worker(registry=probe_registry())

    async def broken() -> dict[str, Any]:
        raise RuntimeError("probe broke")

    worker.health_body = broken  # type: ignore[method-assign]
    answer = await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=5)
    assert json.loads(answer.data)["status"] == "degraded"
    health = await wait_errors(nc, worker, "health", 1)
    assert health["last_error"].startswith("500 INTERNAL") and "probe broke" in health["last_error"]


# ----------------------------------------------------------------------------- JetStream mode
async def _js_worker(start_worker, workers: Workers, **overrides: Any) -> WorkerService:
    settings = workers.settings(**overrides)
    return await start_worker(registry=probe_registry(), settings=settings, store=workers.store(settings))


async def _republish(nc: Client, worker: WorkerService, body: dict[str, Any]) -> None:
    """Publish ``body`` again under a fresh ``Nats-Msg-Id``: what a Manager does once the stream's
    duplicate window has passed, so the stream stores it again and the record must answer it."""
    subject = subjects.jobs_node(worker.prefix, worker.node_id, body["op"])
    headers = {MSG_ID: uuid.uuid4().hex, codec.CONTENT_TYPE: codec.MSGPACK}
    ack = await nc.jetstream().publish(subject, codec.encode(body, json_mode=False), headers=headers)
    assert not ack.duplicate


async def test_terminal_failures_are_recorded_and_answered_from_the_record(
    start_worker, workers: Workers, nc: Client
) -> None:
    worker = await _js_worker(start_worker, workers)
    collector = await _results(nc, worker)
    for code, error_type in ((422, "VALIDATION_FAILED"), (404, "NOT_FOUND")):
        key = f"rec{code}{uuid.uuid4().hex[:8]}"
        body = command("probe.fail", {"key": key, "code": code})
        before = len(collector.messages)
        await publish_job(nc.jetstream(), worker.prefix, worker.node_id, body)
        await collector.wait(before + 1, timeout=15)
        await _republish(nc, worker, body)
        await collector.wait(before + 2, timeout=15)
        first, second = collector.messages[before : before + 2]
        assert RUNS[key] == 1  # run once; the second delivery was answered from the record
        assert first.data == second.data  # the same Reply, byte for byte
        reply = codec.decode(first.data, json_mode=False)
        assert reply["in_reply_to"] == body["id"] and reply["error"]["type"] == error_type
        assert second.headers.get("Nats-Service-Error-Code") == str(code)
        record = await worker._intake.records.lookup(worker._intake.records.key(worker.node_id, body["id"]))
        assert record == first.data
        fail = await wait_errors(nc, worker, "probe_fail", 2 if code == 422 else 4)
        assert fail["last_error"].startswith(f"{code} {error_type}")
    assert worker._intake.counters["answered_from_record"] == 2
    await wait_for(_stream_empty(nc, worker), 10)


async def test_jetstream_error_replies_are_counted(start_worker, workers: Workers, nc: Client) -> None:
    worker = await _js_worker(start_worker, workers, jetstream_max_deliver=1)
    collector = await _results(nc, worker)
    js = nc.jetstream()

    # rejected on intake (bad params), and a subject naming no registered operation
    await publish_job(js, worker.prefix, worker.node_id, command("test.echo", {"n": -1}))
    assert (await wait_errors(nc, worker, "test_echo", 1))["last_error"].startswith("400 ")
    await publish_job(js, worker.prefix, worker.node_id, command("no.such"))
    assert (await wait_errors(nc, worker, "unrouted", 1))["last_error"].startswith("400 UNKNOWN_OPERATION")

    # a 5xx on the last run: dead-lettered and answered with the error
    key = f"dlq{uuid.uuid4().hex[:8]}"
    body = command("probe.fail", {"key": key, "code": 503})
    await publish_job(js, worker.prefix, worker.node_id, body)
    fail = await wait_errors(nc, worker, "probe_fail", 1)
    assert fail["last_error"].startswith("503 STORAGE_UNAVAILABLE")
    await wait_for(lambda: any(r.get("in_reply_to") == body["id"] for r in collector.bodies), 15)
    assert len(await dead_letters(js, worker.settings)) == 1


async def test_a_result_record_not_written_is_counted(start_worker, workers: Workers, nc: Client) -> None:
    """The run succeeds (counted as a success) but its record cannot be written: the outcome is a
    503 (nak'd, run again), so the endpoint counts one error on top of the two runs."""
    worker = await _js_worker(start_worker, workers, jetstream_max_deliver=3)
    collector = await _results(nc, worker)
    js = nc.jetstream()
    records = worker._intake.records
    create = records.create
    refused: list[str] = []

    async def refuse_once(key: str, data: bytes) -> bytes | None:
        if not refused:
            refused.append(key)
            raise ConnectionError("results bucket refused the write")
        return await create(key, data)

    records.create = refuse_once  # type: ignore[method-assign]
    echo = command("test.echo", {"message": "kept"})
    await publish_job(js, worker.prefix, worker.node_id, echo)
    await wait_for(lambda: any(r.get("in_reply_to") == echo["id"] for r in collector.bodies), 15)
    (answer,) = [r for r in collector.bodies if r.get("in_reply_to") == echo["id"]]
    assert answer["ok"] and refused
    endpoint = await wait_errors(nc, worker, "test_echo", 1)
    assert endpoint["num_requests"] == 2
    assert endpoint["last_error"].startswith("503 BUSY") and "could not be recorded" in endpoint["last_error"]


async def _results(nc: Client, worker: WorkerService) -> Any:
    from tests.ops import Collector

    return await Collector.on(nc, subjects.results_all(worker.prefix))


def _stream_empty(nc: Client, worker: WorkerService) -> Any:
    async def empty() -> bool:
        info = await nc.jetstream().stream_info(worker.settings.jetstream_stream)
        return info.state.messages == 0

    return empty
