"""The durable intake under real faults: a SIGKILLed worker, a restarted nats-server, a storage outage.

Real processes throughout: a worker subprocess (``python -m worker run``) killed with SIGKILL, a
dedicated nats-server restarted on the same port and store directory, the fake MictlanX router
failing every request for a while. Executions and stored results are counted in real storage
(``tests/faults/ops.py``). Ack waits are short (1-2 s) to keep the file well under a minute.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from schemas import subjects
from tests.fakes.mictlanx_router import FakeRouter
from tests.faults.support import (
    WorkerProcess,
    Workers,
    balls,
    command,
    dead_letters,
    peer,
    publish,
    results,
    stream_messages,
    wait_for,
)
from tests.ops import Collector
from worker.embedded import EmbeddedNats
from worker.runtime import jetstream
from worker.settings import Settings
from worker.storage import LocalStore, MictlanXStore, RetryPolicy, parse_mictlanx_uri


async def _empty(nc: Client, stream: str) -> bool:
    return await stream_messages(nc.jetstream(), stream) == 0


# ----------------------------------------------------------------------------- SIGKILL
async def test_sigkilled_worker_job_is_finished_by_another_worker_once(
    workers: Workers, nc: Client, tmp_path: Path
) -> None:
    settings = workers.settings(jetstream_ack_wait=1.5, jetstream_max_deliver=5, worker_capacity=1)
    store = workers.store(settings)
    doomed = WorkerProcess(settings, tmp_path / "doomed.log")
    await doomed.start(nc)
    try:
        collector, body = await _running(nc, settings, store, "killed", 3.0)  # the subprocess runs it
        await doomed.kill()  # SIGKILL: no ack, no nak, no goodbye
        assert doomed.process is not None and doomed.process.returncode == -9
        rescuer = await workers.start(peer(settings))
        (reply,) = await collector.wait(1, timeout=15)
        assert reply["ok"] and reply["node_id"] == rescuer.node_id and reply["in_reply_to"] == body["id"]
        assert len(await balls(store, "killed", "run")) == 2  # started twice ...
        assert len(await balls(store, "killed", "result")) == 1  # ... stored once
        await wait_for(lambda: _empty(nc, settings.jetstream_stream), 3)
        await asyncio.sleep(settings.jetstream_ack_wait + 0.5)
        assert len(collector.bodies) == 1  # one answer
        kv = await nc.jetstream().key_value(jetstream.results_bucket(settings.jetstream_stream))
        history = await kv.history(jetstream.record_key(settings.rory_subject_prefix, "pool", body["id"]))
        assert len(history) == 1
    finally:
        await doomed.stop()


async def test_sigterm_hands_the_job_back_and_exits_cleanly(
    workers: Workers, nc: Client, tmp_path: Path
) -> None:
    settings = workers.settings(
        jetstream_ack_wait=10.0, jetstream_max_deliver=2, worker_capacity=1, shutdown_grace_period=0.3
    )
    store = workers.store(settings)
    leaving = WorkerProcess(settings, tmp_path / "leaving.log")
    await leaving.start(nc)
    try:
        collector, _ = await _running(nc, settings, store, "handback", 2.0)
        started = time.monotonic()
        code = await leaving.stop(timeout=10)  # SIGTERM: grace 0.3 s, then the job is nak'd
        assert code == 0, (tmp_path / "leaving.log").read_text()[-2000:]
        assert time.monotonic() - started < 6  # no drain hang
        rescuer = await workers.start(peer(settings))
        (reply,) = await collector.wait(1, timeout=8)  # long before the 10 s ack wait
        assert reply["ok"] and reply["node_id"] == rescuer.node_id
        assert len(await balls(store, "handback", "result")) == 1
    finally:
        await leaving.stop()


async def _count(store, key: str, kind: str, n: int) -> bool:
    return len(await balls(store, key, kind)) >= n


async def _running(
    nc: Client, settings: Settings, store: LocalStore, key: str, seconds: float, timeout: float = 10
) -> tuple[Collector, dict[str, Any]]:
    """Publish a ``seconds``-long job ``key`` and wait until a worker is running it (the fault comes
    next); the Collector, subscribed before the publish, sees every answer."""
    collector = await results(nc, settings)
    body = command(key, seconds=seconds)
    await publish(nc, settings, body)
    await wait_for(lambda: _count(store, key, "run", 1), timeout)
    return collector, body


# ----------------------------------------------------------------------------- nats-server restart
async def test_job_survives_a_nats_server_restart(tmp_path: Path) -> None:
    server = await EmbeddedNats(tmp_path / "own-nats").start()
    group = Workers(server.url, tmp_path)
    client = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        settings = group.settings(jetstream_ack_wait=2.0, jetstream_max_deliver=5)
        worker = await group.start(settings)
        store = group.store(settings)
        collector, body = await _running(client, settings, store, "restart", 2.0, timeout=5)
        restarted = time.monotonic()
        await server.restart()  # same port, same store directory: the stream and its message persist
        assert server.url == settings.nats_urls[0]
        (reply,) = await collector.wait(1, timeout=20)
        assert reply["ok"] and reply["in_reply_to"] == body["id"]
        assert time.monotonic() - restarted < 15
        assert len(await balls(store, "restart", "result")) == 1
        await wait_for(lambda: _empty(client, settings.jetstream_stream), 5)
        assert worker.nc is not None and worker.nc.is_connected
        # still serving after the restart
        second = command("after", seconds=0)
        await publish(client, settings, second)
        replies = await collector.wait(2, timeout=10)
        assert replies[-1]["ok"] and replies[-1]["in_reply_to"] == second["id"]
        assert len(await balls(store, "restart", "run")) == 1  # never recomputed
    finally:
        await group.close()
        await client.close()
        await server.stop()


# ----------------------------------------------------------------------------- storage outage
def _mictlanx(router: FakeRouter) -> MictlanXStore:
    return MictlanXStore(
        parse_mictlanx_uri(router.uri),
        "rory",
        timeout=2.0,
        retry=RetryPolicy(max_retries=1, delay=0.05, jitter=False),
    )


def _result_keys(router: FakeRouter, key: str) -> list[str]:
    stored = router.keys()  # chunk keys "<ball>_<i>"
    return [k for k in stored if k.startswith(f"{key}-result-")]


async def test_storage_outage_is_ridden_out_with_naks(workers: Workers, nc: Client) -> None:
    settings = workers.settings(jetstream_ack_wait=1.0, jetstream_max_deliver=6)
    async with FakeRouter() as router:
        store = _mictlanx(router)
        try:
            worker = await workers.start(settings, store=store)
            collector = await results(nc, settings)
            router.fail_next(10**6, status=503)  # the router is down ...
            await publish(nc, settings, command("outage"))
            await wait_for(lambda: worker._intake is not None and worker._intake.counters["naked"] >= 2, 8)
            assert not _result_keys(router, "outage")
            router.reset_faults()  # ... and back
            (reply,) = await collector.wait(1, timeout=15)
            assert reply["ok"]
            assert len({k.rsplit("_", 1)[0] for k in _result_keys(router, "outage")}) == 1
            await wait_for(lambda: _empty(nc, settings.jetstream_stream), 3)
        finally:
            await store.aclose()


async def test_storage_outage_beyond_the_retry_budget_ends_in_the_dlq(workers: Workers, nc: Client) -> None:
    settings = workers.settings(jetstream_ack_wait=1.0, jetstream_max_deliver=3)
    async with FakeRouter() as router:
        store = _mictlanx(router)
        try:
            await workers.start(settings, store=store)
            collector = await results(nc, settings)
            router.fail_next(10**6, status=503)
            body = command("down")
            await publish(nc, settings, body, node=settings.node_id)
            (reply,) = await collector.wait(1, timeout=15)
            error = reply["error"]
            assert error["code"] == 503 and error["type"] == "STORAGE_UNAVAILABLE" and error["retryable"]
            (dead,) = await dead_letters(nc.jetstream(), settings)
            assert dead.headers[jetstream.DLQ_CODE] == "503"
            assert dead.headers[jetstream.DLQ_REASON].startswith("503 STORAGE_UNAVAILABLE")
            assert dead.headers[jetstream.DLQ_DELIVERIES] == "3"
            assert dead.subject == (f"{settings.rory_subject_prefix}.dlq.{settings.node_id}.fault.work")
            assert dead.headers[jetstream.DLQ_SUBJECT] == subjects.jobs_node(
                settings.rory_subject_prefix, settings.node_id, "fault.work"
            )
            assert not _result_keys(router, "down")  # never a half-written result
            await wait_for(lambda: _empty(nc, settings.jetstream_stream), 3)
        finally:
            await store.aclose()
