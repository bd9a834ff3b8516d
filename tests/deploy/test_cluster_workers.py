"""Real ``rory-worker run`` processes on a three-server cluster with per-node nkey users.

- health and commands sent through one server reach workers attached to the others;
- the HEALTHCHECK command (``rory-worker health NODE``) works with the manager's and the node's own user;
- a worker logged in as another node's user cannot take that node's commands;
- a server dies: its workers reconnect to the rest and keep answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from schemas import codec, subjects
from scripts.cluster import LocalCluster, WorkerProcess, wait_until
from scripts.nats_auth import MANAGER, inbox_prefix
from tests.deploy.natsutil import connect_as, expect_no_responder, request_when_ready
from tests.deploy.util import REPO, WORKER_VARS, runtime_available

RUNTIME_AVAILABLE, WHY_NOT = runtime_available()
pytestmark = pytest.mark.skipif(not RUNTIME_AVAILABLE, reason=WHY_NOT)

P = "rory"
NODES = ["rory-worker-0", "rory-worker-1", "rory-worker-2"]  # rory-worker-2 has a user but no worker
JSON_HEADERS = {codec.CONTENT_TYPE: codec.JSON}


def _health_ok(cluster: LocalCluster, node: str, server: int) -> bool:
    return _cli_health(cluster, node, server, MANAGER).returncode == 0


def _cli_health(
    cluster: LocalCluster, node: str, server: int | None, user: str, *, urls: str | None = None
) -> subprocess.CompletedProcess:
    """``rory-worker health NODE [--server URL]`` as the container HEALTHCHECK runs it."""
    env = {k: v for k, v in os.environ.items() if k not in WORKER_VARS}
    assert cluster.auth is not None
    env.update(
        NATS_NKEY_SEED=str(cluster.auth.seed_path(user)),
        ENV_FILE_PATH=str(cluster.base_dir / "no-worker.env"),
        PYTHONPATH=str(REPO),
    )
    if user != MANAGER:
        env["NATS_INBOX_PREFIX"] = inbox_prefix(user)
    if urls:
        env["NATS_URLS"] = urls
    args = [sys.executable, "-m", "worker.cli", "health", node]
    if server is not None:
        args += ["--server", cluster.servers[server].client_url]
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


def _wait_answering(cluster: LocalCluster, worker: WorkerProcess, via: int, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if not worker.running:
            raise AssertionError(f"{worker.node_id} exited:\n{worker.log_tail()}")
        return _health_ok(cluster, worker.node_id, via)

    wait_until(ready, timeout, f"{worker.node_id} answering health", interval=0.2)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(3, 0, jetstream=True, auth=True, nodes=NODES)
    try:
        c.start_servers()
        w0 = c.start_worker("rory-worker-0", 0)
        w1 = c.start_worker("rory-worker-1", 1)
        _wait_answering(c, w0, via=2)
        _wait_answering(c, w1, via=2)
        yield c
    finally:
        c.stop()


def _command(op: str) -> tuple[str, bytes]:
    command_id = uuid.uuid4().hex
    body = {"v": 1, "id": command_id, "job_id": command_id, "op": op, "ts": time.time(), "params": {}}
    return command_id, json.dumps(body).encode()


async def test_health_and_commands_reach_workers_through_other_servers(cluster):
    managers = [await connect_as(cluster, MANAGER, i) for i in range(3)]
    try:
        for attached, node in enumerate(NODES[:2]):
            for via, manager in enumerate(managers):
                if via == attached:
                    continue
                reply = await request_when_ready(manager, subjects.health(P, node))
                health = json.loads(reply.data)
                assert health["component_type"] == "worker"
                assert health["node_id"] == node
                assert health["status"] in {"ready", "busy"}
                assert health["nats"]["connected_url"] == cluster.servers[attached].client_url
                command_id, body = _command("clustering.kmeans")
                subject = subjects.node_cmd(P, node, "clustering.kmeans")
                answer = await request_when_ready(manager, subject, body, headers=JSON_HEADERS)
                envelope = json.loads(answer.data)
                assert envelope["node_id"] == node and envelope["in_reply_to"] == command_id
    finally:
        for manager in managers:
            await manager.close()


def test_healthcheck_command(cluster):
    """The Dockerfile's HEALTHCHECK: exit 0 while the worker answers, with either user; 1 otherwise."""
    for user in (MANAGER, "rory-worker-0"):
        url = cluster.servers[2].client_url
        result = _cli_health(cluster, "rory-worker-0", None, user, urls=url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["status"] in {"ready", "busy"}
    result = _cli_health(cluster, "rory-worker-2", 2, MANAGER)  # nobody serves rory-worker-2
    assert result.returncode != 0


async def test_worker_with_another_nodes_user_cannot_take_its_commands(cluster):
    """NODE_ID=rory-worker-2 logged in as rory-worker-0: the server refuses its subscriptions."""
    impostor = cluster.start_worker("rory-worker-2", 1, credentials="rory-worker-0")
    manager = await connect_as(cluster, MANAGER, 2)
    try:
        server = cluster.servers[1]

        def connected_or_gone() -> bool:
            names = [c.get("name") for c in server.monitor("/connz").get("connections", [])]
            return not impostor.running or "rory-worker-rory-worker-2" in names

        wait_until(connected_or_gone, 30, "the impostor to log in", interval=0.1)
        await asyncio.sleep(1.0)  # give it time to (try to) subscribe
        await expect_no_responder(manager, subjects.health(P, "rory-worker-2"))
        await expect_no_responder(manager, subjects.node_cmd(P, "rory-worker-2", "clustering.kmeans"))
        impostor.stop()
        assert "violation" in (cluster.base_dir / f"{server.name}.log").read_text().lower()
        # Control: the same node with its own user is served.
        honest = cluster.start_worker("rory-worker-2", 1)
        _wait_answering(cluster, honest, via=2)
        honest.stop()
        # The legitimate node the impostor borrowed credentials from was never disturbed.
        reply = await request_when_ready(manager, subjects.health(P, "rory-worker-0"))
        assert json.loads(reply.data)["node_id"] == "rory-worker-0"
    finally:
        await manager.close()
        impostor.stop()


async def test_workers_survive_the_death_of_their_server(cluster):
    """Kill node-a (rory-worker-0's only URL): it reconnects to a server it learned from the cluster."""
    manager = await connect_as(cluster, MANAGER, 2)
    try:
        cluster.kill_server(0)
        dead_url = cluster.servers[0].client_url
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = await manager.request(subjects.health(P, "rory-worker-0"), b"", timeout=1.0)
                health = json.loads(reply.data)
                if health["nats"]["connected_url"] != dead_url:
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
        assert health["status"] in {"ready", "busy"}
        for node in ("rory-worker-0", "rory-worker-1"):
            command_id, body = _command("clustering.kmeans")
            subject = subjects.node_cmd(P, node, "clustering.kmeans")
            answer = await request_when_ready(manager, subject, body, headers=JSON_HEADERS)
            envelope = json.loads(answer.data)
            assert envelope["node_id"] == node and envelope["in_reply_to"] == command_id
        assert all(w.running for w in cluster.workers if w.node_id != "rory-worker-2")
    finally:
        await manager.close()
