"""The three-server cluster and the per-node permissions, with plain nats-py clients standing in for workers.

These need only nats-server; test_cluster_workers.py repeats the checks with real ``rory-worker`` processes.
"""

from __future__ import annotations

import asyncio

import pytest

from schemas import subjects
from scripts.cluster import LocalCluster
from scripts.nats_auth import MANAGER
from tests.deploy.natsutil import ErrorLog, connect_as, expect_no_responder, request_when_ready

NODES = ["rory-worker-0", "rory-worker-1"]
P = "rory"


@pytest.fixture(scope="module")
def auth_cluster():
    with LocalCluster(3, 0, jetstream=True, auth=True, nodes=NODES) as cluster:
        yield cluster


@pytest.fixture
def plain_cluster():
    with LocalCluster(3, 0, jetstream=False) as cluster:
        yield cluster


async def _serve(nc, node: str) -> None:
    """Answer the node's health subject and commands the way a worker does (queue group per node)."""

    async def answer(msg) -> None:
        await msg.respond(f"{node}:{msg.subject}".encode())

    await nc.subscribe(subjects.health(P, node), cb=answer)
    await nc.subscribe(subjects.node_cmd_all(P, node), queue=subjects.node_queue(P, node), cb=answer)
    await nc.flush()


def test_full_mesh_of_routes(auth_cluster):
    names = {s.name for s in auth_cluster.servers}
    assert names == {"node-a", "node-b", "node-c"}
    for server in auth_cluster.servers:
        assert server.route_peers() == names - {server.name}


async def test_requests_cross_servers_with_node_users(auth_cluster):
    """Each stand-in worker sits on its own server; the manager asks through every other server."""
    workers = [await connect_as(auth_cluster, node, i) for i, node in enumerate(NODES)]
    managers = [await connect_as(auth_cluster, MANAGER, i) for i in range(3)]
    try:
        for nc, node in zip(workers, NODES, strict=True):
            await _serve(nc, node)
        for i, node in enumerate(NODES):
            for j, manager in enumerate(managers):
                if j == i:
                    continue
                reply = await request_when_ready(manager, subjects.health(P, node))
                assert reply.data == f"{node}:{subjects.health(P, node)}".encode()
                subject = subjects.node_cmd(P, node, "clustering.kmeans")
                assert (await request_when_ready(manager, subject)).data == f"{node}:{subject}".encode()
    finally:
        for nc in workers + managers:
            await nc.close()


async def test_node_user_cannot_take_another_nodes_commands(auth_cluster):
    """rory-worker-0's user may not subscribe to (or publish as) rory-worker-1, nor snoop on inboxes."""
    errors = ErrorLog()
    intruder = await connect_as(auth_cluster, "rory-worker-0", 0, errors=errors)
    manager = await connect_as(auth_cluster, MANAGER, 2)
    try:
        await _serve(intruder, "rory-worker-1")  # what a worker started as NODE_ID=rory-worker-1 would do
        await intruder.subscribe("_INBOX.>")
        await intruder.publish(subjects.heartbeat(P, "rory-worker-1"), b"{}")
        await intruder.flush()
        await asyncio.sleep(0.2)
        violations = [v.lower() for v in errors.violations()]  # nats-py lower-cases the server's text
        assert any("subscription" in v and "rory-worker-1.health" in v for v in violations)
        assert any("subscription" in v and "rory-worker-1.cmd.>" in v for v in violations)
        assert any("subscription" in v and "_inbox.>" in v for v in violations)
        assert any("publish" in v and "rory-worker-1.heartbeat" in v for v in violations)
        await expect_no_responder(manager, subjects.health(P, "rory-worker-1"))
        await expect_no_responder(manager, subjects.node_cmd(P, "rory-worker-1", "clustering.kmeans"))
        assert intruder.is_connected, "a violation is reported, the connection stays up"
        # Its own subjects still work for the same connection.
        await _serve(intruder, "rory-worker-0")
        reply = await request_when_ready(manager, subjects.health(P, "rory-worker-0"))
        assert reply.data.startswith(b"rory-worker-0:")
    finally:
        await intruder.close()
        await manager.close()


async def test_node_user_allowed_subjects_raise_no_violation(auth_cluster):
    errors = ErrorLog()
    nc = await connect_as(auth_cluster, "rory-worker-1", 1, errors=errors)
    try:
        await nc.subscribe(
            subjects.node_cmd_all(P, "rory-worker-1"), queue=subjects.node_queue(P, "rory-worker-1")
        )
        await nc.subscribe(subjects.pool_cmd_all(P), queue=subjects.pool_queue(P))
        for subject in subjects.srv_subjects(subjects.SERVICE_NAME, "abc123"):
            await nc.subscribe(subject)
        for subject in (
            subjects.heartbeat(P, "rory-worker-1"),
            subjects.started(P, "rory-worker-1"),
            subjects.stopped(P, "rory-worker-1"),
            subjects.results(P, "rory-worker-1", "job-1"),
        ):
            await nc.publish(subject, b"{}")
        await nc.flush()
        await asyncio.sleep(0.2)
        assert errors.violations() == []
    finally:
        await nc.close()


async def test_unknown_nkey_is_refused(auth_cluster, tmp_path):
    from scripts.nats_auth import generate_user, write_seed

    stranger = write_seed(tmp_path / "stranger.nk", generate_user("stranger").seed or b"")
    with pytest.raises(Exception):  # noqa: B017 - nats-py raises auth errors of several types
        await connect_as(auth_cluster, None, 0, nkeys_seed=str(stranger), allow_reconnect=False)


async def test_client_reconnects_to_the_rest_when_its_server_dies(plain_cluster):
    """A stand-in worker given only server b's URL learns the others from the cluster and moves on."""
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    worker = await connect_as(plain_cluster, None, 1, max_reconnect_attempts=-1, reconnected_cb=on_reconnect)
    manager = await connect_as(plain_cluster, None, 0)
    try:
        await _serve(worker, "rory-worker-0")
        assert (await request_when_ready(manager, subjects.health(P, "rory-worker-0"))).data
        plain_cluster.kill_server(1)
        await asyncio.wait_for(reconnected.wait(), 15)
        assert worker.connected_url.port != plain_cluster.servers[1].ports.client
        reply = await request_when_ready(manager, subjects.health(P, "rory-worker-0"))
        assert reply.data.startswith(b"rory-worker-0:")
    finally:
        await worker.close()
        await manager.close()


def test_cluster_start_survives_a_stolen_port(monkeypatch):
    """Ports are picked before nats-server binds them; a port taken meanwhile means a retry, not a failure."""
    import socket

    import scripts.cluster as cluster_module

    real = cluster_module.free_ports
    calls = []
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        stolen = thief.getsockname()[1]

        def first_one_stolen(count: int, host: str = "127.0.0.1") -> list[int]:
            calls.append(count)
            ports = real(count, host)
            return [stolen, *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(cluster_module, "free_ports", first_one_stolen)
        with LocalCluster(3, 0, jetstream=False) as cluster:
            assert len(calls) == 2
            assert all(s.running for s in cluster.servers)
            assert stolen not in {s.ports.client for s in cluster.servers}
