"""Fixtures for the security suite: nats-servers started with a config written in the test's tmp dir,
a throw-away PKI, and helpers to run a real worker against them.

* ``configured_nats(conf, jetstream=False)``: start a ``nats-server -c <tmp>/server.conf`` (loopback, random
  port) and return the :class:`EmbeddedNats`; every server is stopped after the test.
* ``pki``: a CA, a server certificate for 127.0.0.1/localhost and a client certificate, all fresh.
* ``worker_on(url, **settings)``: start a worker (test operations, in-memory store) on ``url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import settings_for, start_in_process
from tests.security.pki import Authority, CertFiles, issue, make_ca
from worker.embedded import EmbeddedNats
from worker.runtime.service import WorkerService

StartServer = Callable[..., Awaitable[EmbeddedNats]]
StartWorkerOn = Callable[..., Awaitable[WorkerService]]


@pytest.fixture
async def configured_nats(tmp_path: Path) -> AsyncIterator[StartServer]:
    servers: list[EmbeddedNats] = []

    async def start(conf: str, *, name: str = "nats", jetstream: bool = False) -> EmbeddedNats:
        directory = tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "server.conf"
        path.write_text(conf)
        server = EmbeddedNats(directory, jetstream=jetstream, monitoring=False, extra_args=["-c", str(path)])
        servers.append(server)
        return await server.start()

    yield start
    for server in reversed(servers):
        await server.stop()


@dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: CertFiles
    client: CertFiles
    rogue_client: CertFiles  # signed by a CA the server does not trust

    def tls_block(self, *, verify: bool, handshake_first: bool = True) -> str:
        """The server's ``tls {}`` block (``verify: true`` demands a client certificate).

        ``handshake_first: true`` (the default) makes the server expect TLS before any NATS byte, as
        the worker does by default when TLS is configured (NATS_TLS_HANDSHAKE_FIRST); test clients of
        such a server pass ``tls_handshake_first=True``.
        """
        return (
            "tls {\n"
            f'  cert_file: "{self.server.cert}"\n'
            f'  key_file: "{self.server.key}"\n'
            f'  ca_file: "{self.ca.files.cert}"\n'
            f"  verify: {'true' if verify else 'false'}\n"
            f"  handshake_first: {'true' if handshake_first else 'false'}\n"
            "  timeout: 2\n"
            "}\n"
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory / "ca")
    other = make_ca(directory / "other", "untrusted-ca")
    return Pki(
        ca=ca,
        other_ca=other,
        server=issue(ca, directory / "leaf", "nats-server", server=True),
        client=issue(ca, directory / "leaf", "rory-worker", server=False),
        rogue_client=issue(other, directory / "leaf", "rogue-worker", server=False),
    )


@pytest.fixture
async def worker_on(tmp_path: Path) -> AsyncIterator[StartWorkerOn]:
    """Start a real WorkerService (test operations, in-memory store) against a given server URL."""
    started: list[WorkerService] = []

    async def start(
        url: str, *, connect_options: dict[str, Any] | None = None, **overrides: Any
    ) -> WorkerService:
        overrides.setdefault("nats_connect_timeout", 5.0)
        settings = settings_for(url, tmp_path / f"w{len(started)}", **overrides)
        worker = await start_in_process(settings, connect_options=connect_options)
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        await worker.stop(grace=2.0)
