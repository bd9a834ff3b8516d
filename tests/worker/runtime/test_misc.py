"""Logging, the embedded server, discovery helpers, and WorkerService fallbacks."""

from __future__ import annotations

import io
import json
import logging

from worker.embedded import EmbeddedNats, find_nats_server
from worker.runtime.discovery import EndpointStats, endpoint_name
from worker.runtime.health import StorageProbe, safe_url
from worker.runtime.logs import setup_logging
from worker.runtime.service import UnavailableStore, open_default_store


def test_structured_logging_to_stream_and_file(make_settings, tmp_path) -> None:
    settings = make_settings(log_path=str(tmp_path / "logs"), log_level="DEBUG")
    stream = io.StringIO()
    log_file = setup_logging(settings, stream=stream)
    logging.getLogger("rory.worker.test").info("hello", extra={"op": "a.b", "job_id": "j1"})
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["msg"] == "hello" and line["op"] == "a.b" and line["job_id"] == "j1"
    assert line["level"] == "info" and line["node_id"] == settings.node_id
    assert log_file is not None and json.loads(log_file.read_text().splitlines()[-1])["msg"] == "hello"
    unwritable = make_settings(log_path="/proc/no-such-dir/logs")
    assert setup_logging(unwritable, stream=io.StringIO()) is None
    for handler in list(logging.getLogger("rory").handlers):
        logging.getLogger("rory").removeHandler(handler)
    logging.getLogger("rory").propagate = True


async def test_embedded_server_start_stop_restart(tmp_path) -> None:
    assert find_nats_server().endswith("nats-server")
    server = EmbeddedNats(tmp_path / "srv")
    await server.start()
    assert server.running and server.url.startswith("nats://127.0.0.1:") and server.port > 0
    assert server.monitor_url.startswith("http://127.0.0.1:")
    assert (tmp_path / "srv" / "jetstream").is_dir()
    port = server.port
    await server.restart()
    assert server.port == port
    await server.stop()
    assert not server.running
    await server.stop()  # idempotent


def test_discovery_helpers() -> None:
    assert endpoint_name("clustering.pqc.skmeans") == "clustering_pqc_skmeans"
    stats = EndpointStats("e", "s", None)
    for ms in range(1, 101):
        stats.record(ms / 1000, error="500 INTERNAL: x" if ms == 100 else None)
    body = stats.stats()
    assert body["num_requests"] == 100 and body["num_errors"] == 1 and "queue_group" not in body
    assert body["data"]["latency_ms"]["p50"] == 51.0 and body["data"]["latency_ms"]["max"] == 100.0
    assert body["average_processing_time"] == body["processing_time"] // 100


def test_safe_url_drops_credentials() -> None:
    from urllib.parse import urlparse

    assert safe_url(urlparse("nats://user:secret@10.0.0.1:4222")) == "nats://10.0.0.1:4222"
    assert safe_url(None) is None


async def test_storage_probe_and_unavailable_store(make_settings) -> None:
    store = UnavailableStore("not configured")
    probe = StorageProbe(store)
    assert probe.backend == "none" and await probe.check() is False

    class Hanging:
        backend = "slow"

        async def ping(self) -> bool:
            import asyncio

            await asyncio.sleep(10)
            return True

    probe = StorageProbe(Hanging(), timeout=0.05)
    assert await probe.check() is False
    opened = await open_default_store(make_settings())
    assert getattr(opened, "backend", None) == "local"
    await opened.aclose()
