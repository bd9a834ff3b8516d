"""Node isolation in JetStream mode, with the permissions ``scripts/nats_auth.py`` generates.

A real nats-server with JetStream includes the generated ``accounts.conf`` for ``node-a``, ``node-b``
and the manager. The manager provisions the topology (stream RORY_JOBS, DLQ, consumers, result
bucket); the workers run with their own nkeys and ``JETSTREAM_ENSURE=false``. With node-a's
credentials, nothing of node-b's can be read, deleted, answered or forged:

* its queued command (params included): not by ``$JS.API.STREAM.MSG.GET``, ``$JS.API.DIRECT.GET``
  (by sequence or by subject), a subscription to ``<p>.jobs.node-b.>``, a consumer created on that
  filter (named or ephemeral), a pull from ``worker-node-b`` or its ack subjects;
* deleting it: not by ``$JS.API.STREAM.MSG.DELETE`` nor a purge;
* its result records: not read (direct get by key, by sequence, ``MSG.GET`` on the bucket's stream)
  nor written (so node-b never answers its Manager from a record node-a forged);
* its results and dead letters: no publish on ``<p>.results.node-b.<job>`` or ``<p>.dlq.node-b.>``.

Each refusal is a permissions violation the server reports to node-a; afterwards node-b's command
is still queued, and node-b computes it and answers its Manager with the true result. The last
tests run the worker's JetStream mode end to end under the same (narrower) credentials, dead letters
included, with the MAX_DELIVERIES mover under the manager's identity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from schemas import codec, subjects
from scripts.nats_auth import MANAGER, inbox_prefix, write_auth_material
from tests.conftest import settings_for
from tests.ops import Collector
from tests.ops import command as op_command
from tests.security.util import ErrorLog, client
from worker.runtime import jetstream
from worker.runtime.jetstream import DeadLetterMover, Topology, ensure_topology, publish_job

P = "rory"
STREAM = subjects.JOBS_STREAM
BUCKET = subjects.results_bucket(STREAM)
ACK_WAIT, MAX_DELIVER = 1.5, 2
REFUSED_WAIT = 1.0  # s: a refused JetStream request gets no answer; give up after this long


def _js_overrides(node: str, auth) -> dict[str, Any]:
    return {
        "node_id": node,
        "rory_subject_prefix": P,
        "rory_jobs_mode": "jetstream",
        "jetstream_ensure": False,
        "jetstream_ack_wait": ACK_WAIT,
        "jetstream_max_deliver": MAX_DELIVER,
        "nats_nkey_seed": str(auth.seed_path(node)),
        "nats_inbox_prefix": inbox_prefix(node),
    }


class Cluster:
    """The server, the generated auth material, the manager's connection and the node workers."""

    def __init__(self, url: str, auth, tmp_path, worker_on, manager: Client) -> None:
        self.url = url
        self.auth = auth
        self.tmp_path = tmp_path
        self.worker_on = worker_on
        self.manager = manager
        self.worker_errors: dict[str, ErrorLog] = {}
        self.clients: list[Client] = [manager]

    async def provision(self) -> None:
        """The manager creates the topology of both nodes (the workers only verify it)."""
        js = self.manager.jetstream(timeout=5.0)
        for node in ("node-a", "node-b"):
            settings = settings_for(
                self.url,
                self.tmp_path / "provision",
                **{**_js_overrides(node, self.auth), "jetstream_ensure": True},
            )
            await ensure_topology(js, Topology.from_settings(settings), settings)

    async def worker(self, node: str):
        errors = self.worker_errors.setdefault(node, ErrorLog())
        return await self.worker_on(
            self.url, connect_options={"error_cb": errors.callback}, **_js_overrides(node, self.auth)
        )

    async def as_user(self, user: str, errors: ErrorLog | None = None) -> Client:
        options: dict[str, Any] = {"nkeys_seed": str(self.auth.seed_path(user))}
        if user != MANAGER:
            options["inbox_prefix"] = inbox_prefix(user)
        nc = await client(self.url, errors=errors, **options)
        self.clients.append(nc)
        return nc

    def worker_violations(self) -> list[str]:
        return [v for errors in self.worker_errors.values() for v in errors.violations()]

    async def close(self) -> None:
        for nc in self.clients:
            if not nc.is_closed:
                await nc.close()


@pytest.fixture
async def cluster(configured_nats, worker_on, tmp_path):
    auth = write_auth_material(tmp_path / "nats", ["node-a", "node-b"], prefix=P)
    server = await configured_nats('include "accounts.conf"\n', jetstream=True)
    manager = await client(server.url, nkeys_seed=str(auth.seed_path(MANAGER)))
    group = Cluster(server.url, auth, tmp_path, worker_on, manager)
    await group.provision()
    yield group
    await group.close()


def _command(message: str, **extra: Any) -> dict[str, Any]:
    return op_command("test.echo", {"message": message}, **extra)


async def _refused(call) -> bool:
    """True when a request got no answer (the server dropped it as a violation) or an error."""
    try:
        await asyncio.wait_for(call, REFUSED_WAIT + 1)
    except Exception:
        return True
    return False


async def _settle(nc: Client) -> None:
    await nc.flush()
    await asyncio.sleep(0.3)  # the server's -ERR for a violation arrives asynchronously


async def _pending(manager: Client, consumer: str, expected: int) -> int:
    """The consumer's pending count once it reaches ``expected`` (or the last one seen, after 10 s).

    The server acknowledges a publish when the stream has stored it and tells the consumers after,
    on its own goroutine: on a loaded machine ``consumer_info`` right after the ack can still count
    one message fewer. Polling waits for the count without trusting the scheduler."""
    js = manager.jetstream()
    for _ in range(200):
        info = await js.consumer_info(STREAM, consumer)
        if info.num_pending == expected:
            break
        await asyncio.sleep(0.05)
    assert info.num_ack_pending == 0, f"{consumer}: delivered into a pull nobody holds: {info}"
    return info.num_pending


async def _no_open_pulls(manager: Client, consumer: str) -> None:
    """Wait (bounded) until the server has dropped every pull request of a stopped worker: a message
    published while one is still open would be delivered into it instead of staying queued."""
    js = manager.jetstream()
    for _ in range(200):
        if not (await js.consumer_info(STREAM, consumer)).num_waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{consumer}: pull requests still open 10 s after its worker stopped")


# ----------------------------------------------------------------------------- node-a against node-b
async def test_a_node_can_neither_read_delete_nor_answer_another_nodes_commands(cluster: Cluster) -> None:
    manager = cluster.manager
    mjs = manager.jetstream()
    answers = await Collector.on(manager, subjects.results_all(P))

    # node-b runs one command (so it has a result record), then goes away; a second one waits.
    worker_b = await cluster.worker("node-b")
    done = _command("done-by-b", job_id="job-done")
    await publish_job(mjs, P, "node-b", done)
    (first,) = await answers.wait(1, timeout=10)
    assert first["ok"] and first["node_id"] == "node-b"
    await worker_b.stop(grace=1.0)
    await _no_open_pulls(manager, "worker-node-b")
    secret = _command("node-b's secret parameters", job_id="job-secret")
    ack = await publish_job(mjs, P, "node-b", secret)
    assert await _pending(manager, "worker-node-b", 1) == 1
    delivered = (await mjs.consumer_info(STREAM, "worker-node-b")).delivered.consumer_seq

    errors = ErrorLog()
    node_a = await cluster.as_user("node-a", errors)
    ajs = node_a.jetstream(timeout=REFUSED_WAIT)
    stolen: list[Any] = []

    async def steal(msg) -> None:
        stolen.append(msg)

    b_jobs = subjects.jobs_node_filter(P, "node-b")
    b_record = subjects.record_key(P, "node-b", done["id"])
    record_seq = (await (await mjs.key_value(BUCKET)).get(b_record)).revision
    forged = codec.encode({**first, "result": {"message": "forged by node-a"}, "in_reply_to": secret["id"]})

    # -- read the queued command
    await node_a.subscribe(b_jobs, cb=steal)
    await node_a.subscribe(subjects.dlq_source_all(P, "node-b"), cb=steal)
    reads = {
        "msg.get": ajs.get_msg(STREAM, ack.seq),
        "direct.get by sequence": ajs.get_msg(STREAM, ack.seq, direct=True),
        "direct.get by subject": ajs.get_msg(
            STREAM, subject=subjects.jobs_node(P, "node-b", "test.echo"), direct=True
        ),
        "named consumer on node-b's filter": ajs.add_consumer(
            STREAM,
            config=ConsumerConfig(
                name="spy", durable_name="spy", filter_subject=b_jobs, ack_policy=AckPolicy.EXPLICIT
            ),
        ),
        "ephemeral consumer on node-b's filter": ajs.add_consumer(
            STREAM, config=ConsumerConfig(filter_subject=b_jobs, ack_policy=AckPolicy.NONE)
        ),
        "pull from node-b's durable": node_a.request(
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.worker-node-b", b'{"batch": 1}', timeout=REFUSED_WAIT
        ),
        # -- delete it
        "msg.delete": ajs.delete_msg(STREAM, ack.seq),
        "purge node-b's subjects": ajs.purge_stream(STREAM, subject=b_jobs),
        # -- read node-b's result record
        "record by key": node_a.request(subjects.kv_direct_get(BUCKET, b_record), b"", timeout=REFUSED_WAIT),
        "record by sequence": ajs.get_msg(f"KV_{BUCKET}", record_seq, direct=True),
        "record by msg.get": ajs.get_msg(f"KV_{BUCKET}", record_seq),
        # -- write a result record under node-b's key for its queued command
        "record write": ajs.publish(
            subjects.kv_subject(BUCKET, subjects.record_key(P, "node-b", secret["id"])), forged
        ),
    }
    outcomes = dict(
        zip(reads, await asyncio.gather(*(_refused(call) for call in reads.values())), strict=True)
    )
    assert all(outcomes.values()), {name: refused for name, refused in outcomes.items() if not refused}

    # -- answer in node-b's name, ack/term its deliveries, inject its dead letters (fire and forget)
    await node_a.publish(subjects.results(P, "node-b", secret["job_id"]), forged)
    await node_a.publish(f"$JS.ACK.{STREAM}.worker-node-b.1.{ack.seq}.1.0.0", b"+TERM")
    await node_a.publish(subjects.dlq_subject(P, "node-b", "test.echo"), b"{}")
    await node_a.publish(subjects.kv_subject(BUCKET, f"{P}.{secret['id']}"), forged)  # the old key format
    await _settle(node_a)

    violations = "\n".join(v.lower() for v in errors.violations())
    for fragment in (
        f'subscription to "{b_jobs}"',
        f'subscription to "{subjects.dlq_source_all(P, "node-b")}"',
        f'publish to "$js.api.stream.msg.get.{STREAM.lower()}"',
        f'publish to "$js.api.direct.get.{STREAM.lower()}"',
        f'publish to "$js.api.direct.get.{STREAM.lower()}.{P}.jobs.node-b.test.echo"',
        f'publish to "$js.api.consumer.create.{STREAM.lower()}',
        f'publish to "$js.api.consumer.msg.next.{STREAM.lower()}.worker-node-b"',
        f'publish to "$js.api.stream.msg.delete.{STREAM.lower()}"',
        f'publish to "$js.api.stream.purge.{STREAM.lower()}"',
        f'publish to "{subjects.kv_direct_get(BUCKET, b_record).lower()}"',
        f'publish to "$js.api.direct.get.kv_{BUCKET.lower()}"',
        f'publish to "$js.api.stream.msg.get.kv_{BUCKET.lower()}"',
        f'publish to "$kv.{BUCKET.lower()}.{P}.node-b.{secret["id"]}"',
        f'publish to "$kv.{BUCKET.lower()}.{P}.{secret["id"]}"',
        f'publish to "{P}.results.node-b.{secret["job_id"]}"',
        f'publish to "$js.ack.{STREAM.lower()}.worker-node-b.',
        f'publish to "{P}.dlq.node-b.test.echo"',
    ):
        assert fragment in violations, (fragment, violations)
    assert node_a.is_connected, "violations are reported; the connection stays up"
    assert stolen == []

    # Nothing changed for node-b: its command is still queued, no record was forged, nothing was
    # published in its name, and node-b computes the command and answers with the true result.
    assert await _pending(manager, "worker-node-b", 1) == 1
    # never delivered meanwhile (a pull that got it and nak'ed it back would leave the count alone)
    assert (await mjs.consumer_info(STREAM, "worker-node-b")).delivered.consumer_seq == delivered
    assert (await mjs.stream_info(STREAM)).state.messages == 1
    with pytest.raises(Exception):  # noqa: B017 - KeyNotFoundError (or its parent, by nats-py version)
        await (await mjs.key_value(BUCKET)).get(subjects.record_key(P, "node-b", secret["id"]))
    assert [body["in_reply_to"] for body in answers.bodies] == [done["id"]]
    worker_b = await cluster.worker("node-b")
    (reply,) = (await answers.wait(2, timeout=10))[1:]
    assert reply["ok"] and reply["in_reply_to"] == secret["id"] and reply["node_id"] == "node-b"
    assert reply["result"]["message"] == "node-b's secret parameters"
    assert answers.messages[1].subject == subjects.results(P, "node-b", secret["job_id"])
    assert worker_b._intake is not None and worker_b._intake.counters["answered_from_record"] == 0
    assert cluster.worker_violations() == []


async def test_a_node_reads_and_writes_its_own_and_the_pools_records_only(cluster: Cluster) -> None:
    """What a node may touch in the results bucket: ``<p>.<node>.*`` and ``<p>.pool.*``."""
    errors = ErrorLog()
    node_a = await cluster.as_user("node-a", errors)
    kv = await node_a.jetstream(timeout=REFUSED_WAIT).key_value(BUCKET)  # STREAM.INFO is allowed
    own, pool = subjects.record_key(P, "node-a", "c1"), subjects.record_key(P, "pool", "c2")
    await kv.create(own, b"mine")
    await kv.create(pool, b"pooled")
    assert (await kv.get(own)).value == b"mine"
    assert (await kv.get(pool)).value == b"pooled"
    assert errors.violations() == []
    assert await _refused(kv.create(subjects.record_key(P, "node-b", "c3"), b"forged"))
    assert await _refused(kv.get(subjects.record_key(P, "node-b", "c1")))
    await _settle(node_a)
    assert len(errors.violations()) == 2, errors.violations()


async def test_a_node_publishes_results_under_its_own_token_only(cluster: Cluster) -> None:
    errors = ErrorLog()
    node_a = await cluster.as_user("node-a", errors)
    manager = cluster.manager
    results = await Collector.on(manager, subjects.results_of_job(P, "job-1"))
    await node_a.publish(subjects.results(P, "node-b", "job-1"), codec.encode({"forged": True}))
    await node_a.publish(subjects.results(P, "node-a", "job-1"), codec.encode({"own": True}))
    await _settle(node_a)
    bodies = await results.wait(1)
    await asyncio.sleep(0.2)
    assert bodies == [{"own": True}]
    assert [v.lower() for v in errors.violations()] == [
        f'nats: permissions violation for publish to "{P}.results.node-b.job-1"'
    ]


# ----------------------------------------------------------------------------- JetStream mode end to end
async def test_jetstream_mode_works_end_to_end_with_the_generated_credentials(cluster: Cluster) -> None:
    manager = cluster.manager
    mjs = manager.jetstream()
    answers = await Collector.on(manager, subjects.results_all(P))
    mover = DeadLetterMover(manager, prefix=P)  # stream-wide access: the manager's identity only
    await mover.start()
    try:
        worker_a = await cluster.worker("node-a")
        worker_b = await cluster.worker("node-b")
        to_a, to_pool = _command("for a", job_id="job-a"), _command("for anyone", job_id="job-pool")
        await publish_job(mjs, P, "node-a", to_a)
        await publish_job(mjs, P, None, to_pool)
        replies = {reply["job_id"]: reply for reply in await answers.wait(2, timeout=10)}
        assert replies["job-a"]["ok"] and replies["job-a"]["node_id"] == "node-a"
        assert replies["job-pool"]["ok"] and replies["job-pool"]["node_id"] in ("node-a", "node-b")
        by_job = {
            body["job_id"]: msg.subject for body, msg in zip(answers.bodies, answers.messages, strict=True)
        }
        assert by_job["job-a"] == subjects.results(P, "node-a", "job-a")
        assert by_job["job-pool"] == subjects.results(P, replies["job-pool"]["node_id"], "job-pool")

        # a redelivery (the same command, another Nats-Msg-Id) is answered from node-a's own record
        subject = subjects.jobs_node(P, "node-a", "test.echo")
        await mjs.publish(subject, codec.encode(to_a), headers={"Nats-Msg-Id": to_a["id"] + "-again"})
        again = (await answers.wait(3, timeout=10))[2]
        assert again == replies["job-a"]
        assert worker_a._intake is not None and worker_a._intake.counters["answered_from_record"] == 1

        # a poison command: every run fails, node-b dead-letters it from the message it holds
        poison = op_command("test.fail", {"kind": "runtime"}, job_id="job-poison")
        await publish_job(mjs, P, "node-b", poison)
        failed = (await answers.wait(4, timeout=15))[3]
        assert not failed["ok"] and failed["node_id"] == "node-b"
        assert worker_b._intake is not None and worker_b._intake.counters["dead_lettered"] == 1

        # an abandoned command (every delivery taken and never answered): the manager's mover moves it
        await worker_b.stop(grace=1.0)
        ghost = _command("ghost", job_id="job-ghost")
        await publish_job(mjs, P, "node-b", ghost)
        thief = await mjs.pull_subscribe_bind("worker-node-b", STREAM)
        for _ in range(MAX_DELIVER + 1):  # every delivery the server makes, never acked
            await thief.fetch(1, timeout=ACK_WAIT + 3)
        await thief.unsubscribe()
        # The server gives up (and advises) when the consumer is pulled again: node-b comes back.
        await cluster.worker("node-b")
        moved = (await answers.wait(5, timeout=15))[4]
        assert moved["job_id"] == "job-ghost" and moved["error"]["type"] == "MAX_DELIVERIES"
        assert answers.messages[4].subject == subjects.results(P, jetstream.MOVER_ID, "job-ghost")
        assert mover.moved == 1

        dlq = (await mjs.stream_info("RORY_DLQ")).state
        dead = [await mjs.get_msg("RORY_DLQ", seq) for seq in range(dlq.first_seq, dlq.last_seq + 1)]
        assert [m.subject for m in dead] == [
            subjects.dlq_subject(P, "node-b", "test.fail"),
            subjects.dlq_subject(P, "node-b", "test.echo"),
        ]
        assert json.loads(json.dumps(codec.decode(dead[1].data)))["id"] == ghost["id"]
        assert (await mjs.stream_info(STREAM)).state.messages == 0
    finally:
        await mover.close()
    assert cluster.worker_violations() == []


async def test_the_mover_runs_as_the_manager_from_the_inspection_commands(cluster: Cluster) -> None:
    """``worker.inspect.dlq_mover``: what an operator runs (with the manager's credentials)."""
    import io

    from worker import inspect

    out = io.StringIO()
    assert await inspect.dlq_mover(cluster.manager, P, duration=0.2, out=out) == 0
    assert out.getvalue().splitlines() == [
        f"moving abandoned commands of {STREAM} to RORY_DLQ",
        "moved 0 command(s)",
    ]
    errors = ErrorLog()
    node_a = await cluster.as_user("node-a", errors)
    await inspect.dlq_mover(node_a, P, duration=0.3, out=io.StringIO())  # a node may not run it
    assert any("subscription to" in v.lower() and "max_deliveries" in v.lower() for v in errors.violations())


async def test_a_worker_with_node_credentials_does_not_run_the_mover(cluster: Cluster) -> None:
    """JETSTREAM_ENSURE=false (node credentials): no advisory subscription, so no violation either."""
    worker = await cluster.worker("node-a")
    assert worker._intake is not None and worker._intake._mover is None
    await asyncio.sleep(0.3)
    assert cluster.worker_violations() == []


async def test_a_permissions_violation_is_logged_as_a_warning(cluster: Cluster, caplog) -> None:
    """The worker's own error callback names a refused action (here a publish in node-b's name)."""
    worker = await cluster.worker_on(cluster.url, **_js_overrides("node-a", cluster.auth))
    assert worker.nc is not None
    logger = logging.getLogger("rory.worker.nats")  # "rory" may not propagate (setup_logging)
    logger.addHandler(caplog.handler)
    try:
        caplog.set_level(logging.WARNING, logger="rory.worker.nats")
        job = uuid.uuid4().hex
        await worker.nc.publish(subjects.results(P, "node-b", job), b"{}")
        await worker.nc.flush()
        for _ in range(40):
            if any("permissions violation" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    finally:
        logger.removeHandler(caplog.handler)
    # (each record may be seen twice: by the handler added above and, if "rory" propagates, by caplog's)
    records = [r for r in caplog.records if "permissions violation" in r.getMessage()]
    assert records and all(r.levelno == logging.WARNING for r in records)
    assert {r.__dict__["error"].lower() for r in records} == {
        f'nats: permissions violation for publish to "{P}.results.node-b.{job}"'
    }
