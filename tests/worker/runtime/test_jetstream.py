"""The durable intake (RORY_JOBS_MODE=jetstream) against the session's real nats-server.

Each test has its own streams, bucket and subject prefix. Executions and results are counted from
storage (``tests/faults/ops.py`` marks every run and every stored result), deliveries from the
server's consumer state, answers from ``<p>.results.>``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from nats.aio.client import Client

from schemas import codec, subjects
from schemas.envelopes import Reply
from tests.faults import ops as fault_ops
from tests.faults.support import (
    Workers,
    balls,
    command,
    consumer_info,
    dead_letters,
    peer,
    publish,
    results,
    stream_empty,
    stream_messages,
    wait_for,
)
from tests.ops import Collector
from tests.ops import command as op_command
from worker.runtime import jetstream
from worker.runtime.jetstream import nak_delay, record_key
from worker.runtime.service import WorkerService
from worker.settings import Settings


async def _one_worker(workers: Workers, nc: Client) -> tuple[Settings, WorkerService, Collector]:
    """A worker on this test's own streams, and a Collector of every answer on its prefix."""
    settings = workers.settings()
    worker = await workers.start(settings)
    return settings, worker, await results(nc, settings)


# ----------------------------------------------------------------------------- happy path
async def test_job_runs_once_is_recorded_and_acked(workers: Workers, nc: Client) -> None:
    settings, worker, collector = await _one_worker(workers, nc)
    body = command("happy", values=[1.5, 2.5])
    ack = await publish(nc, settings, body, node=settings.node_id)
    assert ack.stream == settings.jetstream_stream
    (reply,) = await collector.wait(1)
    Reply.model_validate(reply)
    assert reply["ok"] and reply["in_reply_to"] == body["id"] and reply["result"]["sum"] == 4.0
    prefix = settings.rory_subject_prefix
    assert collector.messages[0].subject == subjects.results(prefix, settings.node_id, body["id"])
    store = workers.store(settings)
    assert len(await balls(store, "happy", "run")) == 1
    assert len(await balls(store, "happy", "result")) == 1
    js = nc.jetstream()
    await wait_for(stream_empty(js, settings.jetstream_stream), 3)
    kv = await js.key_value(jetstream.results_bucket(settings.jetstream_stream))
    entry = await kv.get(record_key(prefix, settings.node_id, body["id"]))  # keyed by the addressee
    assert codec.decode(entry.value, json_mode=False)["id"] == reply["id"]
    assert worker._intake is not None and worker._intake.counters["acked"] == 1


# ----------------------------------------------------------------------------- dedupe
async def test_same_msg_id_runs_once_and_redelivery_is_answered_from_the_record(
    workers: Workers, nc: Client
) -> None:
    settings, worker, collector = await _one_worker(workers, nc)
    body = command("dedupe")
    first = await publish(nc, settings, body)
    second = await publish(nc, settings, body)
    assert not first.duplicate and second.duplicate and first.seq == second.seq
    (reply,) = await collector.wait(1)
    # the same command again under another Nats-Msg-Id: as a redelivery after the window looks
    js = nc.jetstream()
    subject = subjects.jobs_pool(settings.rory_subject_prefix, "fault.work")
    await js.publish(subject, codec.encode(body), headers={"Nats-Msg-Id": body["id"] + "-again"})
    replies = await collector.wait(2)
    assert replies[1] == reply  # the stored Reply, byte for byte the same answer
    store = workers.store(settings)
    assert len(await balls(store, "dedupe", "run")) == 1
    assert worker._intake is not None and worker._intake.counters["answered_from_record"] == 1
    await wait_for(stream_empty(js, settings.jetstream_stream), 3)


async def _publish_copy(nc: Client, settings, body: dict, node: str | None, copy: str) -> None:
    """The same command as a separate stream message (as after the duplicate window)."""
    prefix, op = settings.rory_subject_prefix, body["op"]
    subject = subjects.jobs_pool(prefix, op) if node is None else subjects.jobs_node(prefix, node, op)
    await nc.jetstream().publish(subject, codec.encode(body), headers={"Nats-Msg-Id": f"{body['id']}-{copy}"})


async def test_a_second_delivery_joins_the_running_command(workers: Workers, nc: Client) -> None:
    settings = workers.settings(worker_capacity=4)
    worker = await workers.start(settings)
    await wait_for(lambda: worker.dispatcher.reserved == 2, 3)  # idle: one long poll per lane
    collector = await results(nc, settings)
    body = command("joined", seconds=0.8)
    await _publish_copy(nc, settings, body, None, "a")
    await _publish_copy(nc, settings, body, None, "b")
    (reply,) = await collector.wait(1, timeout=5)
    assert reply["ok"]
    await wait_for(stream_empty(nc.jetstream(), settings.jetstream_stream), 3)  # both messages acked
    assert worker._intake is not None and worker._intake.counters["joined_running"] == 1
    assert len(await balls(workers.store(settings), "joined", "run")) == 1
    await asyncio.sleep(0.3)
    assert len(collector.bodies) == 1


async def test_another_command_reusing_a_running_id_is_not_answered_with_its_result(
    workers: Workers, nc: Client
) -> None:
    """Same id, another job: it must neither join the running command nor get its result; it gets
    409 CONFLICT and never runs, and the first command is answered with its own result."""
    settings = workers.settings(worker_capacity=4)
    worker = await workers.start(settings)
    await wait_for(lambda: worker.dispatcher.reserved == 2, 3)
    collector = await results(nc, settings)
    first = command("collidea", seconds=0.8)
    second = {**command("collideb"), "id": first["id"], "job_id": "another-job"}
    await _publish_copy(nc, settings, first, None, "a")
    await _publish_copy(nc, settings, second, None, "b")
    replies = await collector.wait(2, timeout=30)
    by_job = {reply.get("job_id"): reply for reply in replies}
    assert by_job[first["id"]]["ok"], replies
    assert not by_job["another-job"]["ok"] and by_job["another-job"]["error"]["type"] == "CONFLICT"
    assert len(await balls(workers.store(settings), "collideb", "run")) == 0
    assert worker._intake is not None and worker._intake.counters["joined_running"] == 0


async def test_concurrent_duplicates_on_two_workers_record_one_result(workers: Workers, nc: Client) -> None:
    """Two instances of one node (one durable, one record key ``<p>.<node>.<id>``) each run a copy."""
    settings = workers.settings(worker_capacity=1)
    a = await workers.start(settings)
    b = await workers.start(peer(settings, node_id=settings.node_id))
    collector = await results(nc, settings)
    body = command("race", seconds=0.5)
    await _publish_copy(nc, settings, body, settings.node_id, "a")
    await _publish_copy(nc, settings, body, settings.node_id, "b")
    first, second = await collector.wait(2, timeout=5)
    assert first == second  # the later run answers with the recorded result
    assert len(await balls(workers.store(settings), "race", "run")) == 2
    lost = sum(w._intake.counters["lost_record_race"] for w in (a, b))
    assert lost == 1
    kv = await nc.jetstream().key_value(jetstream.results_bucket(settings.jetstream_stream))
    key = record_key(settings.rory_subject_prefix, settings.node_id, body["id"])
    assert len(await kv.history(key)) == 1


async def test_a_reused_command_id_for_another_op_is_a_conflict(workers: Workers, nc: Client) -> None:
    settings, _, collector = await _one_worker(workers, nc)
    body = command("conflict")
    await publish(nc, settings, body)
    await collector.wait(1)
    other = op_command("test.noop", id=body["id"])
    await nc.jetstream().publish(
        subjects.jobs_pool(settings.rory_subject_prefix, "test.noop"),
        codec.encode(other),
        headers={"Nats-Msg-Id": "x" + body["id"]},
    )
    replies = await collector.wait(2)
    assert replies[1]["error"]["code"] == 409


async def _forge_record(nc: Client, settings, source: str, body: dict, **fields) -> None:
    """Store a result record for ``body`` under ``source``'s key, with ``fields`` changed."""
    record = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "in_reply_to": body["id"],
        "job_id": body.get("job_id") or body["id"],
        "op": body["op"],
        "node_id": source,
        "ok": True,
        "result": {"forged": True},
        "timings": dict.fromkeys(("queued", "storage_get", "compute", "storage_put", "total"), 0.0),
    }
    record.update(fields)
    kv = await nc.jetstream().key_value(jetstream.results_bucket(settings.jetstream_stream))
    await kv.put(record_key(settings.rory_subject_prefix, source, body["id"]), codec.encode(record))


async def test_a_record_that_is_not_the_commands_own_is_never_the_answer(
    workers: Workers, nc: Client
) -> None:
    """Answering from a record checks ``in_reply_to``, ``job_id`` and, for a node's command, ``node_id``."""
    settings, worker, collector = await _one_worker(workers, nc)
    node = settings.node_id
    cases = [
        (node, {"node_id": "someone-else"}),  # a node's command: only its own node's record counts
        (node, {"in_reply_to": "another-command"}),
        (None, {"job_id": "another-job"}),
        (None, {"in_reply_to": "another-command"}),
    ]
    for target, fields in cases:
        body = command("forged")
        await _forge_record(nc, settings, target or "pool", body, **fields)
        await publish(nc, settings, body, node=target)
    replies = await collector.wait(len(cases), timeout=8)
    assert all(reply["error"]["code"] == 409 for reply in replies), replies
    assert not any("forged" in (reply.get("result") or {}) for reply in replies)
    assert worker._intake is not None and worker._intake.counters["answered_from_record"] == 0
    # A pool record from whichever node ran it is the answer (node_id is not checked for the pool).
    body = command("pooled")
    await _forge_record(nc, settings, "pool", body, node_id="another-node")
    await publish(nc, settings, body)
    (reply,) = (await collector.wait(len(cases) + 1))[-1:]
    assert reply["ok"] and reply["result"] == {"forged": True}


# ----------------------------------------------------------------------------- invalid and poison
async def test_invalid_commands_get_an_error_reply_and_are_termed(workers: Workers, nc: Client) -> None:
    settings, worker, collector = await _one_worker(workers, nc)
    js = nc.jetstream()
    prefix = settings.rory_subject_prefix
    bad_params = command("bad", seconds=-1)
    await publish(nc, settings, bad_params)
    unknown = op_command("no.such-op")
    await js.publish(subjects.jobs_pool(prefix, "no.such-op"), codec.encode(unknown))
    replies = await collector.wait(2)
    by_id = {r["in_reply_to"]: r for r in replies}
    assert by_id[bad_params["id"]]["error"]["code"] == 400
    assert by_id[unknown["id"]]["error"]["type"] == "UNKNOWN_OPERATION"
    # unreadable: nobody to answer, so it is kept in the DLQ with the reason
    await js.publish(subjects.jobs_pool(prefix, "test.noop"), b"\xc1 not msgpack")
    await wait_for(lambda: _dlq_count(js, settings, 1), 5)
    (dead,) = await dead_letters(js, settings)
    assert dead.headers[jetstream.DLQ_CODE] == "400"
    assert dead.subject == f"{prefix}.dlq.pool.test.noop"
    await wait_for(stream_empty(js, settings.jetstream_stream), 3)
    await asyncio.sleep(settings.jetstream_ack_wait + 0.3)  # no redelivery after the ack wait
    pool = await consumer_info(nc, settings, "pool")
    assert pool.num_redelivered == 0 and pool.num_ack_pending == 0
    assert len(collector.bodies) == 2
    assert worker._intake is not None and worker._intake.counters["termed"] == 3


async def _dlq_count(js, settings, n: int) -> bool:
    return await stream_messages(js, settings.jetstream_dlq_stream) >= n


async def test_poison_command_lands_in_the_dlq_after_max_deliver(workers: Workers, nc: Client) -> None:
    settings = workers.settings(jetstream_ack_wait=1.0, jetstream_max_deliver=3)
    await workers.start(settings)
    collector = await results(nc, settings)
    js = nc.jetstream()
    body = op_command("test.fail", {"kind": "runtime", "message": "always broken"})
    subject = subjects.jobs_node(settings.rory_subject_prefix, settings.node_id, "test.fail")
    started = time.monotonic()
    await js.publish(subject, codec.encode(body), headers={"Nats-Msg-Id": body["id"]})
    (reply,) = await collector.wait(1, timeout=10)
    assert reply["error"]["code"] == 500 and reply["error"]["type"] == "INTERNAL"
    assert time.monotonic() - started >= nak_delay(1, 1.0) + nak_delay(2, 1.0) - 0.2  # backed off
    (dead,) = await dead_letters(js, settings)
    headers = dead.headers
    assert "always broken" in headers[jetstream.DLQ_REASON]
    assert headers[jetstream.DLQ_REASON].startswith("500 INTERNAL")
    assert headers[jetstream.DLQ_DELIVERIES] == "3"
    assert headers[jetstream.DLQ_SUBJECT] == subject
    assert headers[jetstream.DLQ_MSG_ID] == body["id"]
    assert dead.subject == f"{settings.rory_subject_prefix}.dlq.{settings.node_id}.test.fail"
    assert codec.decode(dead.data, json_mode=False) == body
    await wait_for(stream_empty(js, settings.jetstream_stream), 3)
    await asyncio.sleep(0.5)
    assert len(collector.bodies) == 1  # one final answer, not one per delivery


async def test_transient_failures_are_retried_until_they_pass(workers: Workers, nc: Client) -> None:
    settings = workers.settings(jetstream_ack_wait=1.0, jetstream_max_deliver=5)
    worker = await workers.start(settings)
    collector = await results(nc, settings)
    key = f"flaky{time.monotonic_ns()}"
    await publish(nc, settings, command(key, fail_first=2))
    (reply,) = await collector.wait(1, timeout=10)
    assert reply["ok"]
    assert fault_ops.FAILURES[key] == 2
    assert worker._intake is not None and worker._intake.counters["naked"] == 2
    assert len(await balls(workers.store(settings), key, "result")) == 1


async def _steal(nc: Client, settings, deliveries: int) -> None:
    """Take ``deliveries`` deliveries of the pool's next command and never answer: "the worker died"."""
    thief = await nc.jetstream().pull_subscribe_bind("pool", settings.jetstream_stream)
    try:
        for _ in range(deliveries):
            (msg,) = await thief.fetch(1, timeout=settings.jetstream_ack_wait + 2)
    finally:
        await thief.unsubscribe()
    assert msg.metadata.num_delivered == deliveries


async def test_a_command_whose_every_run_died_is_dead_lettered_by_the_next_worker(
    workers: Workers, nc: Client
) -> None:
    """Both runs (max_deliver 2) died with their worker: the extra delivery dead-letters it unrun."""
    settings = workers.settings(jetstream_ack_wait=1.0, jetstream_max_deliver=2)
    first = await workers.start(settings)
    await first.stop(grace=0)  # topology exists, nobody pulls now
    body = command("reaped")
    await publish(nc, settings, body)
    await _steal(nc, settings, 2)
    collector = await results(nc, settings)
    await workers.start(peer(settings))  # comes up later, gets delivery 3
    (reply,) = await collector.wait(1, timeout=8)
    assert reply["error"]["type"] == "MAX_DELIVERIES" and reply["in_reply_to"] == body["id"]
    (dead,) = await dead_letters(nc.jetstream(), settings)
    assert dead.headers[jetstream.DLQ_TYPE] == "MAX_DELIVERIES"
    assert dead.headers[jetstream.DLQ_DELIVERIES] == "3"
    assert not await balls(workers.store(settings), "reaped", "run")  # never run by the reaper
    await wait_for(stream_empty(nc.jetstream(), settings.jetstream_stream), 3)


async def test_an_abandoned_command_is_moved_by_the_max_deliveries_advisory(
    workers: Workers, nc: Client
) -> None:
    """Even the extra delivery went unanswered: the server gives up, and a running worker moves it."""
    settings = workers.settings(jetstream_ack_wait=2.0, jetstream_max_deliver=1)  # consumer: 2 deliveries
    first = await workers.start(settings)
    await first.stop(grace=0)
    body = command("ghost")
    await publish(nc, settings, body)
    await _steal(nc, settings, 2)  # both deliveries; the server gives up when the second's ack wait ends
    collector = await results(nc, settings)
    await workers.start(peer(settings))  # subscribed to the advisories well before that
    (reply,) = await collector.wait(1, timeout=8)
    assert reply["error"]["type"] == "MAX_DELIVERIES" and reply["in_reply_to"] == body["id"]
    (dead,) = await dead_letters(nc.jetstream(), settings)
    assert dead.headers[jetstream.DLQ_TYPE] == "MAX_DELIVERIES"
    assert "delivered 2 times" in dead.headers[jetstream.DLQ_REASON]  # the mover's wording
    await wait_for(stream_empty(nc.jetstream(), settings.jetstream_stream), 3)


# ----------------------------------------------------------------------------- capacity and flow
async def test_flood_beyond_capacity_is_neither_lost_nor_run_twice(workers: Workers, nc: Client) -> None:
    settings = workers.settings(worker_capacity=2)
    a = await workers.start(settings)
    b = await workers.start(peer(settings))
    collector = await results(nc, settings)
    key = f"flood{time.monotonic_ns() % 10**9}"
    bodies = [command(key, seconds=0.02) for _ in range(50)]
    js = nc.jetstream()
    await asyncio.gather(*(publish(nc, settings, body) for body in bodies))
    # What each worker holds: slots running a job plus slots its pull requests asked for. The consumer's
    # num_ack_pending is not sampled: it also counts a job whose run ended (its slot is free and may
    # already be pulled again) while its record, Reply and ack are still on their way, and hand-backs
    # nak'd with a delay, so it may exceed the slots without any job running beyond them
    # (docs/reliability.md, "How CI was checked under load").
    peak_held = {a.node_id: 0, b.node_id: 0}

    async def sample() -> None:
        while True:
            for worker in (a, b):
                slots = worker.dispatcher.slots
                held = slots.inflight + slots.reserved
                peak_held[worker.node_id] = max(peak_held[worker.node_id], held)
            await asyncio.sleep(0.005)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        replies = await collector.wait(50, timeout=30)
    finally:
        sampler.cancel()
    assert sorted(r["in_reply_to"] for r in replies) == sorted(b["id"] for b in bodies)
    assert all(r["ok"] for r in replies)
    store = workers.store(settings)
    assert len(await balls(store, key, "run")) == 50
    assert len(await balls(store, key, "result")) == 50
    # The real invariant: no node ever ran more jobs at once than its slots (fault_ops.PEAK counts the
    # executions themselves), and no worker ever asked for more than its slots could start.
    assert fault_ops.PEAK[a.node_id] <= 2 and fault_ops.PEAK[b.node_id] <= 2
    assert all(held <= 2 for held in peak_held.values()), peak_held
    assert {r["node_id"] for r in replies} == {a.node_id, b.node_id}
    await wait_for(stream_empty(js, settings.jetstream_stream), 3)
    await asyncio.sleep(0.3)
    assert len(collector.bodies) == 50


async def test_long_job_is_kept_alive_with_in_progress(workers: Workers, nc: Client) -> None:
    settings = workers.settings(jetstream_ack_wait=1.0)
    worker = await workers.start(settings)
    collector = await results(nc, settings)
    await publish(nc, settings, command("long", seconds=2.5))
    (reply,) = await collector.wait(1, timeout=8)
    assert reply["ok"]
    pool = await consumer_info(nc, settings, "pool")
    assert pool.num_redelivered == 0
    assert len(await balls(workers.store(settings), "long", "run")) == 1
    assert worker._intake is not None and worker._intake.counters["in_progress"] >= 5


async def test_core_commands_reclaim_idle_reservations_and_capacity_holds(
    workers: Workers, nc: Client
) -> None:
    """Idle pulls hold every free slot; a core command takes one back, and a durable job that
    arrives meanwhile waits (is handed back) instead of running beyond capacity."""
    settings = workers.settings(worker_capacity=1)
    worker = await workers.start(settings)
    dispatcher = worker.dispatcher
    await wait_for(lambda: dispatcher.reserved == 1, 3)  # the idle puller holds the only slot
    peak = 0
    overbooked = 0

    async def sample() -> None:
        nonlocal peak, overbooked
        while True:
            peak = max(peak, dispatcher.inflight)
            overbooked += dispatcher.inflight + dispatcher.reserved > 1
            await asyncio.sleep(0.005)

    sampler = asyncio.get_running_loop().create_task(sample())
    collector = await results(nc, settings)
    prefix = settings.rory_subject_prefix
    core = asyncio.ensure_future(
        nc.request(
            subjects.pool_cmd(prefix, "test.sleep"),
            codec.encode(op_command("test.sleep", {"seconds": 0.6})),
            timeout=5,
        )
    )
    await wait_for(lambda: dispatcher.inflight == 1, 2)
    await publish(nc, settings, command("reclaim"))
    msg = await core
    assert codec.decode(msg.data, json_mode=False)["ok"]
    bodies = await collector.wait(2, timeout=8)  # core Replies go to results too
    sampler.cancel()
    (reply,) = [body for body in bodies if body["op"] == "fault.work"]
    assert reply["ok"]
    assert peak == 1 and not overbooked
    assert len(await balls(workers.store(settings), "reclaim", "run")) == 1


# ----------------------------------------------------------------------------- stop
async def test_graceful_stop_hands_unfinished_jobs_to_another_worker(workers: Workers, nc: Client) -> None:
    # max_deliver 2: a hand-back that bounced into the stopping worker's own open pull would burn
    # the second delivery, and the second worker would never see the job
    settings = workers.settings(worker_capacity=2, jetstream_ack_wait=5.0, jetstream_max_deliver=2)
    first = await workers.start(settings)
    collector = await results(nc, settings)
    store = workers.store(settings)
    await publish(nc, settings, command("handover", seconds=20))
    await wait_for(lambda: _has(store, "handover", "run", 1), 5)
    started = time.monotonic()
    await first.stop(grace=0.3)
    stop_took = time.monotonic() - started
    assert stop_took < 4, stop_took  # no drain hang, no waiting for the 20 s job
    second = await workers.start(peer(settings))
    await wait_for(lambda: _has(store, "handover", "run", 2), 3)  # nak'd at once: no ack-wait delay
    assert second._intake is not None
    # the second worker now runs it; stop it too and check nothing was answered as done
    await second.stop(grace=0.1)
    assert not [r for r in collector.bodies if r.get("ok")]
    info = await nc.jetstream().stream_info(settings.jetstream_stream)
    assert info.state.messages == 1  # still there for the next worker


async def _has(store, key: str, kind: str, n: int) -> bool:
    return len(await balls(store, key, kind)) >= n


async def test_stop_does_not_hang_on_idle_pulls(workers: Workers) -> None:
    settings = workers.settings()
    worker = await workers.start(settings)
    await asyncio.sleep(jetstream.PULL_EXPIRES * 1.5)  # at least one pull has expired
    started = time.monotonic()
    await worker.stop(grace=1.0)
    assert time.monotonic() - started < jetstream.PULL_EXPIRES + jetstream.PULL_MARGIN + 1.5


async def test_json_commands_are_answered_in_msgpack_on_results(workers: Workers, nc: Client) -> None:
    settings, _, collector = await _one_worker(workers, nc)
    body = command("jsonish")
    await jetstream.publish_job(nc.jetstream(), settings.rory_subject_prefix, None, body, json_mode=True)
    (reply,) = await collector.wait(1)
    assert reply["ok"] and collector.messages[0].headers[codec.CONTENT_TYPE] == codec.MSGPACK
