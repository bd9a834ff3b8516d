"""The TLS downgrade window on reconnect (NATS_TLS_HANDSHAKE_FIRST), checked on the wire.

Without handshake first, nats-py reads the server's INFO in plaintext and only starts TLS when INFO
says ``tls_required``. On a reconnect it then sends CONNECT, replays every subscription and flushes
the publishes that waited during the outage (replies included) *before* the worker's reconnected
callback can look at the transport: a plaintext server that takes over the address learns the
subscriptions, receives the replies and can push commands in the meantime.

With TLS configured the worker now starts TLS before any NATS byte. The tests replace a TLS
(``handshake_first: true``) nats-server under a connected worker by

* a raw recorder that speaks just enough NATS (an INFO line, PONG to PING) and keeps every byte it
  receives: it must only ever see a TLS ClientHello, never CONNECT/SUB/PUB text, although a reply was
  waiting to be flushed when the server went away;
* a plaintext nats-server with an attacker client on it: the worker never joins it (no subscription,
  no message), and a command the attacker injects is not run.

The default (on whenever TLS material or a ``tls://`` URL is configured) and an explicit ``false`` are
checked at the settings level and, for ``false``, on the wire (the old behaviour, now opt-in).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from schemas import codec, subjects
from tests.conftest import settings_for
from tests.faults.support import wait_for as until
from tests.ops import MemoryStore, command, test_registry
from tests.security.util import client, echo_through
from worker.embedded import EmbeddedNats
from worker.runtime.connection import connect_options, tls_expected, tls_handshake_first, transport_is_tls
from worker.runtime.service import WorkerService
from worker.settings import SettingsError

TLS_RECORD_HANDSHAKE = 0x16
#: NATS protocol verbs a client sends; none may reach a plaintext peer.
PROTOCOL = (b"CONNECT", b"SUB ", b"PUB ", b"HPUB ", b"UNSUB ", b"PING", b"PONG")


class Recorder:
    """A plaintext impostor on a fixed port: INFO on connect, PONG to PING, every byte recorded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[bytearray] = []
        self.closed = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Recorder:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # the stopped server's port may take a moment to be free again
            try:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
                return self
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def info(self) -> bytes:
        body = {
            "server_id": "IMPOSTOR",
            "server_name": "impostor",
            "version": "2.15.1",
            "proto": 1,
            "host": "127.0.0.1",
            "port": self.port,
            "headers": True,
            "max_payload": 1 << 20,
        }
        return b"INFO " + json.dumps(body).encode() + b"\r\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        self.connections.append(data)
        try:
            writer.write(self.info())
            await writer.drain()
            while chunk := await reader.read(65536):
                data += chunk
                if b"PING\r\n" in chunk:  # keep a plaintext client talking (it would replay its SUBs)
                    writer.write(b"PONG\r\n")
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self.closed += 1

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[Any]]:
    """Servers and recorders a test started; all stopped afterwards."""
    started: list[Any] = []
    yield started
    for server in reversed(started):
        await server.stop()


def _server(tmp_path: Path, name: str, conf: str, *, port: int | None = None) -> EmbeddedNats:
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.conf"
    path.write_text(conf)
    return EmbeddedNats(directory, port=port, jetstream=False, monitoring=True, extra_args=["-c", str(path)])


ATTACKER = "attacker"


async def _connections(server: EmbeddedNats) -> list[dict[str, Any]]:
    """Every client connection the server has seen (open and closed), with its subscriptions."""
    url = f"{server.monitor_url}/connz?state=all&subs=1&limit=1000"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return (await response.json())["connections"] or []


def _others(connections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in connections if c.get("name") != ATTACKER]


def _tls_url(server: EmbeddedNats) -> str:
    return server.url.replace("nats://", "tls://")


def _context(pki: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca.files.cert))


async def _start_worker(url: str, tmp_path: Path, store: MemoryStore, **overrides: Any) -> WorkerService:
    settings = settings_for(url, tmp_path / f"w-{uuid.uuid4().hex[:6]}", **overrides)
    worker = WorkerService(
        settings, test_registry(), store=store, connect_options={"reconnect_time_wait": 0.1}
    )
    await worker.start()
    return worker


async def _leave_a_reply_pending(manager: Any, worker: WorkerService, seconds: float) -> None:
    """Send ``test.sleep``: the worker answers ``seconds`` later, when its server will be gone."""
    inbox = manager.new_inbox()
    await manager.subscribe(inbox)
    subject = subjects.node_cmd(worker.prefix, worker.node_id, "test.sleep")
    await manager.publish(subject, codec.encode(command("test.sleep", {"seconds": seconds})), reply=inbox)
    await manager.flush()
    await until(lambda: worker.inflight == 1, 10, "the worker to take the command")


def _assert_only_tls(connections: list[bytearray]) -> None:
    assert connections, "the worker never knocked on the impostor's port"
    for data in connections:
        raw = bytes(data)
        if raw:
            assert raw[0] == TLS_RECORD_HANDSHAKE, f"not a TLS record first: {raw[:80]!r}"
        for verb in PROTOCOL:
            assert verb not in raw, f"{verb!r} crossed in plaintext: {raw[:200]!r}"


async def test_no_plaintext_byte_reaches_an_impostor(pki, tmp_path, servers) -> None:
    """TLS server -> raw recorder -> plaintext nats-server with an attacker -> TLS server again."""
    tls_conf = pki.tls_block(verify=False)
    first = await _server(tmp_path, "tls1", tls_conf).start()
    servers.append(first)
    port = first.port
    store = MemoryStore()
    worker = await _start_worker(_tls_url(first), tmp_path, store, nats_tls_ca=str(pki.ca.files.cert))
    try:
        assert worker.nc is not None and transport_is_tls(worker.nc) is True
        manager = await client(_tls_url(first), tls=_context(pki), tls_handshake_first=True)
        await _leave_a_reply_pending(manager, worker, seconds=0.5)
        await manager.close()
        await first.stop()

        # 1. A raw recorder on the same address: a ClientHello at most, never a NATS verb.
        recorder = await Recorder(port).start()
        servers.append(recorder)
        await until(lambda: worker.inflight == 0, 10, "the command to finish (its reply is now pending)")
        seen = len(recorder.connections)
        await until(lambda: recorder.closed >= seen + 2, 15, "two more reconnect attempts")
        await recorder.stop()
        _assert_only_tls(recorder.connections)

        # 2. A plaintext nats-server there instead, with an attacker who listens and injects commands.
        plain = await _server(tmp_path, "plain", "# plaintext\n", port=port).start()
        servers.append(plain)
        attacker = await client(plain.url, name=ATTACKER)
        heard: list[str] = []

        async def overhear(msg: Any) -> None:
            heard.append(msg.subject)

        await attacker.subscribe(">", cb=overhear)
        injected = command("test.store", {"key": "injected", "values": [6.0, 6.0, 6.0]})
        target = subjects.node_cmd(worker.prefix, worker.node_id, "test.store")

        async def worker_knocked_three_times() -> bool:
            await attacker.publish(target, codec.encode(injected), reply="attacker.replies")
            await attacker.flush()
            return len(_others(await _connections(plain))) >= 3

        await until(worker_knocked_three_times, 15, "three connection attempts of the worker")
        others = _others(await _connections(plain))
        await attacker.close()
        await plain.stop()
        for connection in others:  # the worker's attempts: no CONNECT, no subscription, no message
            assert not connection.get("name") and not connection.get("lang"), connection
            assert connection["subscriptions"] == 0 and connection["in_msgs"] == 0, connection
        assert set(heard) <= {target}, f"the worker published on the plaintext server: {set(heard)}"
        assert "injected" not in store.objects, "the worker ran a command injected in plaintext"
        assert "put_ndarray" not in store.calls

        # 3. TLS is back on the same address: the worker returns and answers again.
        second = await _server(tmp_path, "tls2", tls_conf, port=port).start()
        servers.append(second)
        manager = await client(_tls_url(second), tls=_context(pki), tls_handshake_first=True)
        try:
            await until(lambda: worker.nc.is_connected, 15, "the worker to reconnect over TLS")
            assert transport_is_tls(worker.nc) is True
            await echo_through(manager, worker)
        finally:
            await manager.close()
        assert "injected" not in store.objects
    finally:
        await worker.stop(grace=2.0)


async def test_explicit_false_is_honoured_on_the_wire(pki, tmp_path, servers) -> None:
    """NATS_TLS_HANDSHAKE_FIRST=false: NATS protocol first, as before (CONNECT reaches the impostor in
    plaintext; the reconnect guard of connection.py drops that connection afterwards)."""
    first = await _server(tmp_path, "tls1", pki.tls_block(verify=False, handshake_first=False)).start()
    servers.append(first)
    worker = await _start_worker(
        _tls_url(first),
        tmp_path,
        MemoryStore(),
        nats_tls_ca=str(pki.ca.files.cert),
        nats_tls_handshake_first=False,
    )
    try:
        assert worker.nc is not None and transport_is_tls(worker.nc) is True
        port = first.port
        await first.stop()
        recorder = await Recorder(port).start()
        servers.append(recorder)
        await until(lambda: any(b"CONNECT" in data for data in recorder.connections), 15, "a CONNECT")
        await recorder.stop()
        assert any(bytes(data).startswith(b"CONNECT") for data in recorder.connections)
    finally:
        await worker.stop(grace=2.0)


async def test_stop_while_an_impostor_refuses_tls(pki, tmp_path, servers) -> None:
    """Stopping a worker whose reconnects keep failing the TLS handshake returns promptly (nats-py
    alone would wait forever on the socket of the failed handshake: connection._TcpTransport)."""
    first = await _server(tmp_path, "tls1", pki.tls_block(verify=False)).start()
    servers.append(first)
    worker = await _start_worker(_tls_url(first), tmp_path, MemoryStore(), nats_tls_ca=str(pki.ca.files.cert))
    stopped = False
    try:
        port = first.port
        await first.stop()
        recorder = await Recorder(port).start()
        servers.append(recorder)
        await until(lambda: recorder.closed >= 2, 15, "two failed handshakes")
        await recorder.stop()  # the next attempts are refused; the last transport is a failed handshake
        await asyncio.wait_for(worker.stop(grace=1.0), 15)
        stopped = True
        _assert_only_tls(recorder.connections)
    finally:
        if not stopped:
            await worker.pool.shutdown()


# ----------------------------------------------------------------------------- the setting
def _settings(tmp_path: Path, url: str = "nats://127.0.0.1:4222", **overrides: Any) -> Any:
    return settings_for(url, tmp_path, **overrides)


@pytest.fixture
def ca_file(pki) -> str:
    return str(pki.ca.files.cert)


@pytest.mark.parametrize(
    ("url", "material", "expected"),
    [
        ("nats://127.0.0.1:4222", {}, False),
        ("tls://127.0.0.1:4222", {}, True),
        ("nats://127.0.0.1:4222", {"ca": True}, True),
        ("nats://127.0.0.1:4222", {"cert": True}, True),
        ("tls://127.0.0.1:4222", {"ca": True, "cert": True}, True),
        ("wss://127.0.0.1:443", {"ca": True}, False),  # TLS from the first byte anyway
    ],
)
def test_default_is_on_when_tls_is_configured(tmp_path, pki, url, material, expected) -> None:
    overrides: dict[str, Any] = {}
    if material.get("ca"):
        overrides["nats_tls_ca"] = str(pki.ca.files.cert)
    if material.get("cert"):
        overrides["nats_tls_cert"] = str(pki.client.cert)
        overrides["nats_tls_key"] = str(pki.client.key)
    settings = _settings(tmp_path, url, **overrides)
    assert settings.nats_tls_handshake_first is None
    assert tls_handshake_first(settings) is expected
    assert connect_options(settings)["tls_handshake_first"] is expected


def test_explicit_false_is_honoured(tmp_path, ca_file) -> None:
    for url in ("tls://127.0.0.1:4222", "nats://127.0.0.1:4222"):
        settings = _settings(tmp_path, url, nats_tls_ca=ca_file, nats_tls_handshake_first=False)
        assert connect_options(settings)["tls_handshake_first"] is False
        assert tls_expected(settings)  # the transport check still refuses a plaintext connection


def test_explicit_false_from_the_environment(tmp_path, ca_file, monkeypatch) -> None:
    monkeypatch.setenv("NATS_TLS_HANDSHAKE_FIRST", "false")
    settings = _settings(tmp_path, "tls://127.0.0.1:4222", nats_tls_ca=ca_file)
    assert settings.nats_tls_handshake_first is False
    assert connect_options(settings)["tls_handshake_first"] is False


def test_explicit_true_means_tls_even_without_material(tmp_path) -> None:
    settings = _settings(tmp_path, nats_tls_handshake_first=True)
    assert connect_options(settings)["tls_handshake_first"] is True
    assert tls_expected(settings)


def test_true_with_a_plain_websocket_is_an_error(tmp_path) -> None:
    settings = _settings(tmp_path, "ws://127.0.0.1:8080", nats_tls_handshake_first=True)
    with pytest.raises(SettingsError, match="NATS_TLS_HANDSHAKE_FIRST"):
        connect_options(settings)
