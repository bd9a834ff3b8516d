"""The worker rides out a server restart on the same port (a dedicated server, not the session one)."""

from __future__ import annotations

import asyncio

import nats

from schemas import subjects
from tests.ops import Collector, command, request
from worker.embedded import EmbeddedNats


async def test_reconnects_after_server_restart(start_worker, make_settings, tmp_path) -> None:
    server = await EmbeddedNats(tmp_path / "own-nats").start()
    try:
        worker = await start_worker(settings=make_settings(nats_urls=[server.url], heartbeat_interval=0.1))
        subject = subjects.node_cmd(worker.prefix, worker.node_id, "test.echo")
        client = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        reply, _ = await request(client, subject, command("test.echo", {"message": "before"}))
        assert reply["ok"]
        port = server.port
        await server.stop()
        await asyncio.sleep(0.3)
        assert not worker.nc.is_connected
        await server.restart()
        assert server.port == port
        loop = asyncio.get_running_loop()
        until = loop.time() + 10
        while not (worker.nc.is_connected and client.is_connected):
            assert loop.time() < until, "worker did not reconnect"
            await asyncio.sleep(0.05)
        beats = await Collector.on(client, subjects.heartbeat(worker.prefix, worker.node_id))
        await client.flush()
        reply, _ = await request(client, subject, command("test.echo", {"message": "after"}))
        assert reply["ok"] and reply["result"]["message"] == "after"
        await beats.wait(2)
        assert worker.status() == "ready"
        await client.close()
        await worker.stop(grace=1)
    finally:
        await server.stop()
