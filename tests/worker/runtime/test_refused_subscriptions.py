"""A worker whose subscriptions the server's permissions refuse reports ``degraded``.

A real nats-server with user/password authorization: the worker's user may subscribe to everything
except the pool command subject, so the worker serves its own node's commands but never receives a
pool command. Its health reply and heartbeats must say ``degraded`` and name the refused subject;
once the server's configuration is reloaded (SIGHUP) without the deny, the worker's periodic recheck
(``RefusedSubscriptions`` in worker/runtime/health.py) subscribes it and health says ``ready`` again.
The reverse, a reload that takes a subject away, is checked too.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from schemas import codec, subjects
from tests.conftest import settings_for
from tests.faults.support import wait_for
from tests.ops import command, request
from worker.embedded import EmbeddedNats
from worker.runtime.health import refused_subscription
from worker.runtime.service import WorkerService

PREFIX = "refusal"
WORKER_USER, WORKER_PASSWORD = "worker", "worker-secret"
CLIENT_USER, CLIENT_PASSWORD = "client", "client-secret"
POOL = subjects.pool_cmd_all(PREFIX)


def server_conf(deny: list[str]) -> str:
    """The worker may publish anything and subscribe to anything but ``deny``; the client may do all."""
    denied = ", ".join(json.dumps(subject) for subject in deny)
    return (
        "authorization {\n"
        "  users = [\n"
        f'    {{ user: "{WORKER_USER}", password: "{WORKER_PASSWORD}", permissions: {{\n'
        '      publish: ">"\n'
        f'      subscribe: {{ allow: [">"], deny: [{denied}] }}\n'
        "    }}\n"
        f'    {{ user: "{CLIENT_USER}", password: "{CLIENT_PASSWORD}" }}\n'
        "  ]\n"
        "}\n"
    )


class Server:
    """One nats-server started from a config file that the test may rewrite and reload."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "server.conf"
        self.embedded = EmbeddedNats(
            directory, jetstream=False, monitoring=False, extra_args=["-c", str(self.conf)]
        )

    async def start(self, deny: list[str]) -> Server:
        self.conf.write_text(server_conf(deny))
        await self.embedded.start()
        return self

    def reload(self, deny: list[str]) -> None:
        """Rewrite the config and send SIGHUP: nats-server reloads it without dropping connections."""
        self.conf.write_text(server_conf(deny))
        assert self.embedded.process is not None
        self.embedded.process.send_signal(signal.SIGHUP)

    @property
    def url(self) -> str:
        return self.embedded.url


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Callable[[list[str]], Awaitable[Server]]]:
    started: list[Server] = []

    async def start(deny: list[str]) -> Server:
        server = await Server(tmp_path / f"nats{len(started)}").start(deny)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.embedded.stop()


async def _worker(start_worker, server: Server, tmp_path: Path) -> WorkerService:
    settings = settings_for(
        server.url,
        tmp_path / "worker",
        rory_subject_prefix=PREFIX,
        nats_user=WORKER_USER,
        nats_password=WORKER_PASSWORD,
    )
    return await start_worker(settings=settings)


async def _client(server: Server) -> Client:
    return await nats.connect(server.url, user=CLIENT_USER, password=CLIENT_PASSWORD, name="refusal-test")


async def _health(nc: Client, worker: WorkerService) -> dict[str, Any]:
    reply = await nc.request(subjects.health(PREFIX, worker.node_id), b"", timeout=5)
    return json.loads(reply.data)


async def _wait_health(nc: Client, worker: WorkerService, status: str) -> dict[str, Any]:
    """Ask health until it says ``status`` (bounded); return that answer."""
    seen: dict[str, Any] = {}

    async def says() -> bool:
        seen.clear()
        seen.update(await _health(nc, worker))
        return seen["status"] == status

    await wait_for(says, 30, interval=0.1)
    return seen


async def _heartbeat(nc: Client, worker: WorkerService, status: str) -> dict[str, Any]:
    """The next heartbeat that says ``status`` (bounded wait)."""
    beats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_beat(msg: Any) -> None:
        beats.put_nowait(codec.decode(msg.data, json_mode=False))

    sub = await nc.subscribe(subjects.heartbeat(PREFIX, worker.node_id), cb=on_beat)
    try:
        async with asyncio.timeout(30):
            while True:
                beat = await beats.get()
                if beat["status"] == status:
                    return beat
    finally:
        await sub.unsubscribe()


async def _pool_answers(nc: Client) -> bool:
    """Whether a pool command is answered (the pool subscription is registered at the server)."""
    try:
        reply, _ = await request(nc, subjects.pool_cmd(PREFIX, "test.echo"), command("test.echo"), timeout=1)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return bool(reply["ok"])


def test_the_server_text_names_the_subject() -> None:
    plain = Exception('nats: Permissions Violation for Subscription to "a.pool.cmd.>"')
    queued = Exception('nats: Permissions Violation for Subscription to "a.b" using queue "q"')
    assert refused_subscription(plain) == "a.pool.cmd.>"
    assert refused_subscription(queued) == "a.b"
    assert refused_subscription(Exception('nats: Permissions Violation for Publish to "a.b"')) is None
    assert refused_subscription(Exception("nats: stale connection")) is None


async def test_refused_subscription_degrades_and_recovers(server, start_worker, tmp_path: Path) -> None:
    nats_server = await server([POOL])
    worker = await _worker(start_worker, nats_server, tmp_path)
    nc = await _client(nats_server)
    try:
        health = await _wait_health(nc, worker, "degraded")
        assert health["refused_subscriptions"] == [POOL]
        assert health["storage"]["reachable"] is True  # nothing else is wrong
        beat = await _heartbeat(nc, worker, "degraded")
        assert beat["refused_subscriptions"] == [POOL]
        # the node's own commands are still served; pool commands reach nobody
        node_echo = subjects.node_cmd(PREFIX, worker.node_id, "test.echo")
        reply, _ = await request(nc, node_echo, command("test.echo"))
        assert reply["ok"]
        assert not await _pool_answers(nc)

        nats_server.reload(deny=[])
        health = await _wait_health(nc, worker, "ready")
        assert "refused_subscriptions" not in health
        beat = await _heartbeat(nc, worker, "ready")
        assert "refused_subscriptions" not in beat
        await wait_for(lambda: _pool_answers(nc), 30)  # the recheck really subscribed it
    finally:
        await nc.close()


async def test_a_reload_that_refuses_a_subscription_degrades(server, start_worker, tmp_path: Path) -> None:
    nats_server = await server([])
    worker = await _worker(start_worker, nats_server, tmp_path)
    nc = await _client(nats_server)
    try:
        health = await _wait_health(nc, worker, "ready")
        assert "refused_subscriptions" not in health
        nats_server.reload(deny=[POOL])  # the server drops the live subscription and says so
        health = await _wait_health(nc, worker, "degraded")
        assert health["refused_subscriptions"] == [POOL]
        assert not await _pool_answers(nc)
    finally:
        await nc.close()
