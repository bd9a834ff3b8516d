"""The worker on a real nats-server: subjects, envelopes, health, heartbeats, announcements, $SRV."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterable
from pathlib import Path

import jsonschema
import pytest
from nats.errors import NoRespondersError

from schemas import codec, subjects
from schemas.envelopes import Announcement, Health, Heartbeat, Reply
from tests.ops import Collector, MemoryStore, command, request
from worker.inspect import gather
from worker.runtime.heartbeat import LoadSampler

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas" / "nats-micro-v1"


def _validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMA_DIR / f"{kind}_response.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def node_subject(worker, op: str) -> str:
    return subjects.node_cmd(worker.prefix, worker.node_id, op)


async def test_command_reply_and_results_copy(start_worker, nc) -> None:
    worker = await start_worker()
    results = await Collector.on(nc, subjects.results(worker.prefix, worker.node_id, "job-42"))
    body = command("test.echo", {"message": "hi", "n": 3}, job_id="job-42")
    reply, msg = await request(nc, node_subject(worker, "test.echo"), body)
    Reply.model_validate(reply)
    assert msg.headers[codec.CONTENT_TYPE] == codec.MSGPACK
    assert "Nats-Service-Error" not in msg.headers
    assert reply["ok"] is True
    assert reply["in_reply_to"] == body["id"] and reply["job_id"] == "job-42"
    assert reply["op"] == "test.echo" and reply["node_id"] == worker.node_id
    assert reply["result"] == {"message": "hi", "n": 3, "job_id": "job-42", "node_id": worker.node_id}
    assert reply["id"] != body["id"]
    assert set(reply["timings"]) == {"queued", "storage_get", "compute", "storage_put", "total"}
    assert reply["timings"]["total"] >= reply["timings"]["queued"] >= 0
    (copy,) = await results.wait(1)
    assert copy == reply
    assert results.messages[0].headers[codec.CONTENT_TYPE] == codec.MSGPACK


async def test_json_request_gets_json_reply(start_worker, nc) -> None:
    worker = await start_worker()
    body = command("test.echo", {"message": "json"})
    results = await Collector.on(nc, subjects.results_of_job(worker.prefix, body["id"]))
    reply, msg = await request(nc, subjects.pool_cmd(worker.prefix, "test.echo"), body, json_mode=True)
    assert msg.headers[codec.CONTENT_TYPE] == codec.JSON
    assert json.loads(msg.data)["result"]["message"] == "json"
    Reply.model_validate(reply)
    await results.wait(1)
    assert results.messages[0].headers[codec.CONTENT_TYPE] == codec.MSGPACK  # results stay msgpack


async def test_default_prefix_and_storage_timings(start_worker, nc) -> None:
    store = MemoryStore(delay=0.02)
    worker = await start_worker(rory_subject_prefix="rory", store=store)
    assert worker.prefix == "rory"
    reply, _ = await request(
        nc,
        f"rory.worker.{worker.node_id}.cmd.test.store",
        command("test.store", {"key": "k1", "values": [1, 2]}),
    )
    assert reply["ok"], reply
    assert reply["result"] == {"values": [1.0, 2.0], "sum": 3}
    timings = reply["timings"]
    assert timings["storage_put"] >= 0.015 and timings["storage_get"] >= 0.015 and timings["compute"] > 0
    assert timings["total"] >= timings["storage_get"] + timings["storage_put"] + timings["compute"]
    assert store.calls == ["put_ndarray", "get_ndarray"]


async def test_started_and_stopped_announcements(start_worker, make_settings, nc) -> None:
    settings = make_settings()
    started = await Collector.on(nc, subjects.started(settings.rory_subject_prefix, settings.node_id))
    stopped = await Collector.on(nc, subjects.stopped(settings.rory_subject_prefix, settings.node_id))
    worker = await start_worker(settings=settings)
    (hello,) = await started.wait(1)
    Announcement.model_validate(hello)
    assert hello["event"] == "started" and hello["instance_id"] == worker.instance_id
    assert hello["capacity"] == 2 and "test.echo" in hello["operations"]
    assert started.messages[0].headers[codec.CONTENT_TYPE] == codec.MSGPACK
    await worker.stop()
    (bye,) = await stopped.wait(1)
    Announcement.model_validate(bye)
    assert bye["event"] == "stopped" and bye["instance_id"] == worker.instance_id


async def test_heartbeats_sequence_and_interval(start_worker, make_settings, nc) -> None:
    settings = make_settings(heartbeat_interval=0.2)
    beats = await Collector.on(nc, subjects.heartbeat(settings.rory_subject_prefix, settings.node_id))
    worker = await start_worker(settings=settings)
    bodies = await beats.wait(4, timeout=5)
    for body in bodies:
        Heartbeat.model_validate(body)
        assert body["instance_id"] == worker.instance_id
        assert body["status"] == "ready" and body["capacity"] == 2
        assert body["load"]["rss_mb"] > 0
    seqs = [b["seq"] for b in bodies]
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1))
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(bodies)]
    assert 0.1 < sum(gaps) / len(gaps) < 0.6  # generous: the interval is 0.2 s


async def test_heartbeat_load_is_sampled_off_the_event_loop(
    start_worker, make_settings, nc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psutil reads /proc for each process (milliseconds): a beat must not hold up health answers."""
    threads: list[str] = []
    real = LoadSampler.sample

    def spy(self: LoadSampler, child_pids: Iterable[int] = ()) -> dict[str, float]:
        threads.append(threading.current_thread().name)
        return real(self, child_pids)

    monkeypatch.setattr(LoadSampler, "sample", spy)
    settings = make_settings(heartbeat_interval=0.2)
    beats = await Collector.on(nc, subjects.heartbeat(settings.rory_subject_prefix, settings.node_id))
    await start_worker(settings=settings)
    bodies = await beats.wait(2, timeout=5)
    assert all(body["load"]["rss_mb"] > 0 for body in bodies)
    assert threads and threading.main_thread().name not in threads


async def test_health_json_and_msgpack(start_worker, nc) -> None:
    worker = await start_worker()
    subject = subjects.health(worker.prefix, worker.node_id)
    msg = await nc.request(subject, b"", timeout=2)
    assert msg.headers[codec.CONTENT_TYPE] == codec.JSON
    body = json.loads(msg.data)
    assert next(iter(body)) == "component_type" and body["component_type"] == "worker"
    health = Health.model_validate(body)
    assert health.status == "ready" and health.instance_id == worker.instance_id
    assert health.storage.backend == "memory" and health.storage.reachable
    assert health.nats.connected_url and health.nats.connected_url.startswith("nats://127.0.0.1:")
    assert health.nats.rtt_ms is not None and health.operations == worker.registry.names()
    for headers in ({"Accept": codec.MSGPACK}, {"Content-Type": codec.MSGPACK}):
        msg = await nc.request(subject, b"", timeout=2, headers=headers)
        assert msg.headers[codec.CONTENT_TYPE] == codec.MSGPACK
        Health.model_validate(codec.decode(msg.data))


async def test_health_still_answers_when_its_probe_fails(start_worker, nc) -> None:
    """A broken probe must not look like a dead worker: the requester gets a degraded body."""
    worker = await start_worker()

    async def broken() -> dict:
        raise RuntimeError("probe exploded")

    worker.health_body = broken
    msg = await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=2)
    body = json.loads(msg.data)
    assert body["component_type"] == "worker" and body["status"] == "degraded"
    assert body["node_id"] == worker.node_id and "probe exploded" in body["error"]


async def test_health_degraded_when_storage_unreachable(start_worker, nc) -> None:
    worker = await start_worker(store=MemoryStore(reachable=False))
    msg = await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=2)
    body = json.loads(msg.data)
    assert body["status"] == "degraded" and body["storage"]["reachable"] is False


async def test_srv_replies_valid_against_schemas(start_worker, nc) -> None:
    worker = await start_worker()
    await request(nc, node_subject(worker, "test.echo"), command("test.echo"))
    await request(nc, node_subject(worker, "test.fail"), command("test.fail", {"code": 404}))
    validators = {verb: _validator(verb.lower()) for verb in subjects.SRV_VERBS}
    for subject in subjects.srv_subjects("rory-worker", worker.instance_id):
        verb = subject.split(".")[1]
        answers = await gather(nc, subject, window=0.15)
        bodies = [json.loads(msg.data) for msg, _ in answers]
        mine = [b for b in bodies if b["id"] == worker.instance_id]
        assert len(mine) == 1, subject
        body = mine[0]
        validators[verb].validate(body)
        assert body["name"] == "rory-worker" and body["metadata"]["node_id"] == worker.node_id
        if verb == "INFO":
            assert body["description"]
            by_name = {e["name"]: e for e in body["endpoints"]}
            for op in worker.registry.names():
                endpoint = by_name[op.replace(".", "_")]
                assert endpoint["subject"] == node_subject(worker, op)
                assert endpoint["queue_group"] == subjects.node_queue(worker.prefix, worker.node_id)
                assert endpoint["metadata"]["op"] == op
                assert endpoint["metadata"]["pool_subject"] == subjects.pool_cmd(worker.prefix, op)
            assert {"health", "unrouted"} <= set(by_name)
        if verb == "STATS":
            by_name = {e["name"]: e for e in body["endpoints"]}
            assert by_name["test_echo"]["num_requests"] == 1 and by_name["test_echo"]["num_errors"] == 0
            assert by_name["test_echo"]["data"]["latency_ms"]["count"] == 1
            fail = by_name["test_fail"]
            assert fail["num_errors"] == 1 and fail["last_error"].startswith("404 NOT_FOUND")
            assert fail["average_processing_time"] == fail["processing_time"] > 0


async def test_two_instances_of_one_node_reply_once(start_worker, make_settings, nc) -> None:
    settings = make_settings()
    first = await start_worker(settings=settings)
    second = await start_worker(settings=settings)
    inbox = nc.new_inbox()
    replies = await Collector.on(nc, inbox)
    results = await Collector.on(nc, subjects.results_all(settings.rory_subject_prefix))
    count = 20
    for _ in range(count):
        body = command("test.echo")
        await nc.publish(node_subject(first, "test.echo"), codec.encode(body), reply=inbox)
        await asyncio.sleep(0.005)
    await replies.wait(count)
    await results.wait(count)
    await asyncio.sleep(0.3)  # anything duplicated would arrive by now
    assert len(replies.bodies) == count and len(results.bodies) == count
    assert len({b["in_reply_to"] for b in replies.bodies}) == count
    served_by = {b["id"].rsplit("-", 1)[0] for b in replies.bodies}
    assert served_by == {first.instance_id, second.instance_id}


async def test_pool_queue_group_spreads_commands(start_worker, make_settings, nc) -> None:
    one = await start_worker(settings=make_settings())
    two = await start_worker(settings=make_settings(rory_subject_prefix=one.prefix))
    nodes = []
    for _ in range(20):
        reply, _ = await request(nc, subjects.pool_cmd(one.prefix, "test.noop"), command("test.noop"))
        assert reply["ok"]
        nodes.append(reply["node_id"])
    assert set(nodes) == {one.node_id, two.node_id}


async def _wait_until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while not predicate():
        assert loop.time() < until, "condition not reached"
        await asyncio.sleep(0.01)


async def test_busy_at_capacity_answers_503_at_once(start_worker, nc) -> None:
    worker = await start_worker(worker_capacity=1)
    slow = asyncio.create_task(
        request(nc, node_subject(worker, "test.sleep"), command("test.sleep", {"seconds": 0.5}))
    )
    await _wait_until(lambda: worker.inflight == 1)
    reply, msg = await request(nc, node_subject(worker, "test.noop"), command("test.noop"), timeout=0.4)
    assert reply["ok"] is False
    assert reply["error"]["code"] == 503 and reply["error"]["type"] == "BUSY" and reply["error"]["retryable"]
    assert msg.headers["Nats-Service-Error-Code"] == "503"
    health = json.loads(
        (await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=2)).data
    )
    assert health["status"] == "busy" and health["inflight"] == 1
    slow_reply, _ = await slow
    assert slow_reply["ok"]
    reply, _ = await request(nc, node_subject(worker, "test.noop"), command("test.noop"))
    assert reply["ok"]
    assert worker.discovery.by_op["test.noop"].num_errors == 1


async def test_deadline_gives_504_and_frees_the_slot(start_worker, nc) -> None:
    worker = await start_worker(worker_capacity=1)
    body = command("test.cpu-burn", {"seconds": 5}, deadline_s=0.3)
    reply, msg = await request(nc, node_subject(worker, "test.cpu-burn"), body, timeout=3)
    assert reply["error"]["code"] == 504 and reply["error"]["type"] == "DEADLINE_EXCEEDED"
    assert msg.headers["Nats-Service-Error-Code"] == "504"
    assert worker.pool.kills == 1
    reply, _ = await request(
        nc,
        node_subject(worker, "test.sleep"),
        command("test.sleep", {"seconds": 2}, deadline_s=0.1),
        timeout=3,
    )
    assert reply["error"]["code"] == 504
    reply, _ = await request(
        nc, node_subject(worker, "test.cpu-burn"), command("test.cpu-burn", {"seconds": 0.01})
    )
    assert reply["ok"], reply  # the killed slot was replaced


async def test_crashed_pool_process_gives_500_and_worker_keeps_serving(start_worker, nc) -> None:
    worker = await start_worker()
    reply, msg = await request(nc, node_subject(worker, "test.crash"), command("test.crash"))
    assert reply["error"]["code"] == 500 and reply["error"]["type"] == "COMPUTE_CRASHED"
    assert msg.headers["Nats-Service-Error-Code"] == "500"
    assert worker.pool.restarts == 1
    for _ in range(3):
        reply, _ = await request(
            nc, node_subject(worker, "test.cpu-burn"), command("test.cpu-burn", {"seconds": 0.01})
        )
        assert reply["ok"], reply


@pytest.mark.parametrize(
    ("params", "code", "kind"),
    [
        ({"code": 404}, 404, "NOT_FOUND"),
        ({"code": 409}, 409, "CONFLICT"),
        ({"code": 422}, 422, "VALIDATION_FAILED"),
        ({"code": 503}, 503, "BUSY"),
        ({"code": 504}, 504, "DEADLINE_EXCEEDED"),
        ({"kind": "value"}, 400, "BAD_REQUEST"),
        ({"kind": "runtime"}, 500, "INTERNAL"),
        ({"kind": "compute_value", "message": "core said no"}, 400, "BAD_REQUEST"),
    ],
)
async def test_handler_errors_map_to_codes(start_worker, nc, params, code, kind) -> None:
    worker = await start_worker()
    reply, msg = await request(nc, node_subject(worker, "test.fail"), command("test.fail", params))
    Reply.model_validate(reply)
    assert (reply["error"]["code"], reply["error"]["type"]) == (code, kind)
    assert msg.headers["Nats-Service-Error-Code"] == str(code)
    assert msg.headers["Nats-Service-Error"]


async def test_graceful_stop_finishes_inflight_command(start_worker, nc) -> None:
    worker = await start_worker()
    stopped = await Collector.on(nc, subjects.stopped(worker.prefix, worker.node_id))
    slow = asyncio.create_task(
        request(nc, node_subject(worker, "test.sleep"), command("test.sleep", {"seconds": 0.6}), timeout=5)
    )
    await _wait_until(lambda: worker.inflight == 1)
    stopping = asyncio.create_task(worker.stop())
    await _wait_until(lambda: worker.status() == "draining")
    health = json.loads(
        (await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=2)).data
    )
    assert health["status"] == "draining"
    try:  # once the command subjects are drained: no responders (or a 503 if it raced the UNSUB)
        late, _ = await request(nc, node_subject(worker, "test.noop"), command("test.noop"), timeout=0.5)
    except NoRespondersError:
        late = None
    assert late is None or late["error"]["code"] == 503
    reply, _ = await slow
    assert reply["ok"] and reply["result"]["slept"] == 0.6
    await stopping
    (bye,) = await stopped.wait(1)
    assert bye["event"] == "stopped"
    assert worker.nc.is_closed


async def test_stop_after_grace_answers_503(start_worker, nc) -> None:
    worker = await start_worker()
    slow = asyncio.create_task(
        request(nc, node_subject(worker, "test.sleep"), command("test.sleep", {"seconds": 10}), timeout=5)
    )
    await _wait_until(lambda: worker.inflight == 1)
    await worker.stop(grace=0.2)
    reply, msg = await slow
    assert reply["error"]["code"] == 503 and reply["error"]["retryable"]
    assert msg.headers["Nats-Service-Error-Code"] == "503"


async def test_health_answers_while_every_slot_burns_cpu(start_worker, nc) -> None:
    worker = await start_worker(worker_capacity=2)
    burns = [
        asyncio.create_task(
            request(
                nc,
                node_subject(worker, "test.cpu-burn"),
                command("test.cpu-burn", {"seconds": 1.5}),
                timeout=10,
            )
        )
        for _ in range(2)
    ]
    await _wait_until(lambda: worker.pool.busy == 2)
    msg = await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=1.0)
    assert json.loads(msg.data)["status"] == "busy"
    pings = await gather(nc, subjects.srv("PING", "rory-worker", worker.instance_id), window=1.0)
    assert len(pings) == 1
    for task in burns:
        reply, _ = await task
        assert reply["ok"]
