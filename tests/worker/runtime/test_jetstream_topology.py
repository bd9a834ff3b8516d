"""The durable intake's topology (streams, consumers, results bucket) against the session's real
nats-server: created, verified only, repaired, refused when it belongs to another prefix, and served
by a worker with only the documented permissions; plus the pure helpers it is built from.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, RetentionPolicy

from schemas import codec, subjects
from tests.faults import support
from tests.ops import command as op_command
from worker.embedded import EmbeddedNats
from worker.runtime import jetstream
from worker.runtime.jetstream import (
    DeadLetterMover,
    JetStreamUnavailable,
    nak_delay,
    subject_covers,
)


# ----------------------------------------------------------------------------- pure helpers
def test_subject_covers() -> None:
    assert subject_covers("p.jobs.>", "p.jobs.n1.>")
    assert subject_covers("p.jobs.>", "p.jobs.pool.op.x")
    assert subject_covers("p.*.x", "p.a.x")
    assert not subject_covers("p.jobs.n1.>", "p.jobs.>")
    assert not subject_covers("p.jobs.*", "p.jobs.a.b")
    assert not subject_covers("q.jobs.>", "p.jobs.>")


def test_nak_delay_grows_and_is_bounded() -> None:
    delays = [nak_delay(n, 60.0) for n in range(1, 8)]
    assert delays[:4] == [6.0, 12.0, 24.0, 48.0]
    assert max(delays) <= jetstream.NAK_MAX_DELAY
    assert nak_delay(1, 1.5) == 1.0 and nak_delay(2, 1.5) == 2.0


def test_results_bucket_name() -> None:
    assert jetstream.results_bucket("RORY_JOBS") == "RORY_RESULTS"
    assert jetstream.results_bucket("OTHER") == "OTHER_RESULTS"


# ----------------------------------------------------------------------------- topology
async def test_topology_is_created_and_core_paths_keep_working(workers: support.Workers, nc: Client) -> None:
    settings = workers.settings()
    worker = await workers.start(settings)
    js = nc.jetstream()
    prefix = settings.rory_subject_prefix
    info = await js.stream_info(settings.jetstream_stream)
    assert info.config.retention == RetentionPolicy.WORK_QUEUE
    assert info.config.subjects == [f"{prefix}.jobs.>"]
    assert info.config.duplicate_window == jetstream.DUPLICATE_WINDOW
    node = await support.consumer_info(nc, settings, f"worker-{settings.node_id}")
    pool = await support.consumer_info(nc, settings, "pool")
    assert node.config.filter_subject == f"{prefix}.jobs.{settings.node_id}.>"
    assert pool.config.filter_subject == f"{prefix}.jobs.pool.>"
    for consumer in (node, pool):
        assert consumer.config.ack_policy == AckPolicy.EXPLICIT
        assert consumer.config.ack_wait == settings.jetstream_ack_wait
        assert consumer.config.max_deliver == settings.jetstream_max_deliver + 1  # +1: the reaper delivery
    dlq = await js.stream_info(settings.jetstream_dlq_stream)
    assert dlq.config.subjects == [f"{prefix}.dlq.>"]
    kv = await js.key_value(jetstream.results_bucket(settings.jetstream_stream))
    assert (await kv.status()).ttl == settings.jetstream_result_ttl  # JETSTREAM_RESULT_TTL

    # health, $SRV and core request-reply stay on in JetStream mode
    msg = await nc.request(subjects.health(prefix, settings.node_id), b"", timeout=2)
    assert codec.decode(msg.data, json_mode=True)["status"] == "ready"
    stats = await nc.request(subjects.srv("STATS", subjects.SERVICE_NAME, worker.instance_id), b"", timeout=2)
    health_stats = next(
        e for e in codec.decode(stats.data, json_mode=True)["endpoints"] if e["name"] == "health"
    )
    assert health_stats["data"]["jobs_mode"] == "jetstream"
    assert health_stats["data"]["jetstream"]["stream"] == settings.jetstream_stream
    reply = await nc.request(
        subjects.pool_cmd(prefix, "test.echo"),
        codec.encode(op_command("test.echo", {"message": "hi"})),
        timeout=5,
    )
    assert codec.decode(reply.data, json_mode=False)["result"]["message"] == "hi"


async def test_the_result_ttl_setting_is_applied_to_an_existing_bucket(
    workers: support.Workers, nc: Client
) -> None:
    settings = workers.settings(jetstream_result_ttl=600.0)
    await workers.start(settings)
    kv = await nc.jetstream().key_value(jetstream.results_bucket(settings.jetstream_stream))
    assert (await kv.status()).ttl == 600.0
    # a second instance of the node, verify-only (its consumers exist)
    await workers.start(
        support.peer(settings, node_id=settings.node_id, jetstream_result_ttl=900.0, jetstream_ensure=False)
    )
    assert (await kv.status()).ttl == 600.0  # verify-only: the bucket's own TTL stays
    await workers.start(support.peer(settings, jetstream_result_ttl=900.0))
    assert (await kv.status()).ttl == 900.0


async def test_verify_only_mode(workers: support.Workers) -> None:
    settings = workers.settings(jetstream_ensure=False)
    with pytest.raises(JetStreamUnavailable, match="does not exist"):
        await workers.start(settings)
    await workers.start(support.peer(settings, jetstream_ensure=True))  # an admin-capable worker creates them
    with pytest.raises(JetStreamUnavailable, match="consumer worker-"):
        await workers.start(settings)  # this node's own consumer is still missing: nobody made it
    other = support.peer(settings, node_id=workers.started[0].node_id, jetstream_ensure=False)
    worker = await workers.start(other)  # a second instance of a provisioned node only verifies
    assert worker.status() == "ready"


async def test_a_server_without_jetstream_fails_the_start_clearly(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "plain", jetstream=False) as server:
        group = support.Workers(server.url, tmp_path)
        try:
            with pytest.raises(JetStreamUnavailable, match="JetStream is not available"):
                await group.start(group.settings())
        finally:
            await group.close()


async def test_a_stream_of_another_prefix_is_refused(workers: support.Workers) -> None:
    first = workers.settings()
    await workers.start(first)
    second = workers.settings(jetstream_stream=first.jetstream_stream)
    with pytest.raises(JetStreamUnavailable, match="another subject prefix"):
        await workers.start(second)


async def test_a_deleted_consumer_is_recreated(workers: support.Workers, nc: Client) -> None:
    settings = workers.settings()
    await workers.start(settings)
    js = nc.jetstream()
    await js.delete_consumer(settings.jetstream_stream, "pool")
    collector = await support.results(nc, settings)
    await support.wait_for(lambda: _exists(js, settings.jetstream_stream, "pool"), 8)
    await support.publish(nc, settings, support.command("recreated"))
    (reply,) = await collector.wait(1, timeout=8)
    assert reply["ok"]


async def _exists(js, stream: str, consumer: str) -> bool:
    try:
        await js.consumer_info(stream, consumer)
    except Exception:
        return False
    return True


def _restricted_config(settings, password: str) -> str:
    """An accounts config: ``admin`` may do anything, ``worker`` only what docs/reliability.md lists.

    No stream-wide message access (``$JS.API.STREAM.MSG.GET``/``DELETE``), no advisories: results,
    records and dead letters under the node's own token (and the pool's) only.
    """
    p, node = settings.rory_subject_prefix, settings.node_id
    stream, dlq = settings.jetstream_stream, settings.jetstream_dlq_stream
    bucket = jetstream.results_bucket(stream)
    consumers = [f"worker-{node}", "pool"]
    publish = [
        f"{p}.worker.{node}.heartbeat",
        f"{p}.worker.{node}.started",
        f"{p}.worker.{node}.stopped",
        f"{p}.results.{node}.*",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.INFO.{dlq}",
        f"$JS.API.STREAM.INFO.KV_{bucket}",
        *[f"$JS.API.CONSUMER.INFO.{stream}.{c}" for c in consumers],
        *[f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{c}" for c in consumers],
        *[f"$JS.ACK.{stream}.{c}.>" for c in consumers],
        f"{p}.dlq.{node}.>",
        f"{p}.dlq.pool.>",
        f"$KV.{bucket}.{p}.{node}.*",
        f"$KV.{bucket}.{p}.pool.*",
        f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{p}.{node}.*",
        f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{p}.pool.*",
    ]
    subscribe = [
        f"{p}.worker.{node}.cmd.>",
        f"{p}.worker.{node}.health",
        f"{p}.pool.cmd.>",
        "$SRV.>",
        f"_INBOX_{node}.>",
    ]

    def allow(items: list[str]) -> str:
        return ", ".join(f'"{item}"' for item in items)

    return f"""
accounts {{
  RORY {{
    jetstream: enabled
    users: [
      {{ user: admin, password: "{password}" }}
      {{ user: worker, password: "{password}", permissions: {{
          publish: {{ allow: [{allow(publish)}] }}
          subscribe: {{ allow: [{allow(subscribe)}] }}
          allow_responses: true
      }} }}
    ]
  }}
}}
"""


async def test_a_restricted_worker_serves_with_the_documented_permissions(tmp_path: Path) -> None:
    password = "pw-" + uuid.uuid4().hex[:8]
    group = support.Workers("nats://127.0.0.1:1", tmp_path)  # URL replaced below
    settings = group.settings(jetstream_ack_wait=1.5, jetstream_max_deliver=2)
    config = tmp_path / "auth.conf"
    config.write_text(_restricted_config(settings, password))
    violations: list[str] = []

    async def on_error(error: Exception) -> None:
        if "permissions violation" in str(error).lower():
            violations.append(str(error))

    async with EmbeddedNats(tmp_path / "auth-nats", extra_args=["-c", str(config)]) as server:
        admin = {"nats_urls": [server.url], "nats_user": "admin", "nats_password": password}
        restricted = settings.model_copy(
            update={
                "nats_urls": [server.url],
                "nats_user": "worker",
                "nats_password": password,
                "nats_inbox_prefix": f"_INBOX_{settings.node_id}",
                "jetstream_ensure": False,
            }
        )
        client = await nats.connect(server.url, user="admin", password=password)
        mover = DeadLetterMover(
            client,
            prefix=settings.rory_subject_prefix,
            stream=settings.jetstream_stream,
            dlq_stream=settings.jetstream_dlq_stream,
        )
        try:
            provisioner = await group.start(settings.model_copy(update=admin))  # creates everything
            await provisioner.stop(grace=0)
            worker = await group.start(restricted, error_cb=on_error)
            collector = await support.results(client, settings)
            good, again = support.command("perm"), None
            await support.publish(client, settings, good, node=settings.node_id)
            await collector.wait(1)
            again = dict(good)  # answered from the record (direct get) under the restricted user
            await client.jetstream().publish(
                subjects.jobs_node(settings.rory_subject_prefix, settings.node_id, "fault.work"),
                codec.encode(again),
                headers={"Nats-Msg-Id": good["id"] + "-2"},
            )
            poison = op_command("test.fail", {"kind": "runtime"})
            await client.jetstream().publish(
                subjects.jobs_pool(settings.rory_subject_prefix, "test.fail"), codec.encode(poison)
            )
            replies = await collector.wait(3, timeout=10)
            assert [r["ok"] for r in replies] == [True, True, False]
            assert replies[0] == replies[1]
            assert worker._intake is not None and worker._intake.counters["dead_lettered"] == 1
            assert worker._intake.counters["answered_from_record"] == 1
            # The advisory mover needs stream-wide access: it runs under the admin identity, not the
            # worker's (which does not even subscribe to the advisories with JETSTREAM_ENSURE=false).
            await mover.start()
            await worker.stop(grace=0)
            await support.publish(client, settings, support.command("permghost"))
            thief = await client.jetstream().pull_subscribe_bind("pool", settings.jetstream_stream)
            for _ in range(3):  # every delivery the server will make (2 runs + 1), never acked
                await thief.fetch(1, timeout=3)
            await thief.unsubscribe()
            await group.start(restricted, error_cb=on_error)
            replies = await collector.wait(4, timeout=10)
            assert replies[3]["error"]["type"] == "MAX_DELIVERIES"
            assert replies[3]["node_id"] == jetstream.MOVER_ID
            assert collector.messages[3].subject.startswith(
                f"{settings.rory_subject_prefix}.results.dlq-mover."
            )
            assert len(await support.dead_letters(client.jetstream(), settings)) == 2
            assert mover.moved == 1
            await support.wait_for(support.stream_empty(client.jetstream(), settings.jetstream_stream), 3)
            assert violations == []
        finally:
            await mover.close()
            await group.close()
            await client.close()
