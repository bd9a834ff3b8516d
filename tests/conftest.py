"""Session fixtures: a real nats-server, NATS clients, and in-process workers.

* ``nats_server`` (session): an :class:`~worker.embedded.EmbeddedNats` on a random loopback port,
  JetStream on, data under a session temp dir. ``nats_url`` is its URL.
* ``nc``: a connected nats-py client (closed after the test).
* ``make_settings(**overrides)``: Settings pointing at the session server, with a unique subject
  prefix and node id per call (tests never see each other's workers), short heartbeats (0.2 s),
  capacity 2, temp paths.
* ``start_worker(registry=None, store=None, settings=None, connect_options=None, **overrides)``:
  builds settings like ``make_settings``, starts a :class:`WorkerService` in-process (test
  operations and a MemoryStore by default) and stops it after the test.
* ``workers``: a :class:`tests.faults.support.Workers` group of JetStream-mode workers (fault
  operations, private stream names), closed after the test; shared by ``tests/faults`` and
  ``tests/worker/runtime/test_jetstream.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import pytest
from nats.aio.client import Client

from tests.ops import MemoryStore, test_registry
from worker.embedded import EmbeddedNats
from worker.runtime.pool import ComputePool
from worker.runtime.registry import Registry
from worker.runtime.service import WorkerService
from worker.settings import Settings, load_settings

if TYPE_CHECKING:
    from tests.faults.support import Workers

_counter = itertools.count(1)


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url, name="pytest-client")
    yield client
    if not client.is_closed:
        await client.close()


def settings_for(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test worker on ``url`` (unique prefix and node id unless given)."""
    unique = f"{next(_counter)}-{uuid.uuid4().hex[:6]}"
    values: dict[str, Any] = {
        "nats_urls": [url],
        "node_id": f"node-{unique}",
        "rory_subject_prefix": f"t{unique.replace('-', '_')}",
        "heartbeat_interval": 0.2,
        "worker_capacity": 2,
        "shutdown_grace_period": 5.0,
        "nats_connect_timeout": 5.0,
        "log_path": str(tmp_path / "log"),
        "sink_path": str(tmp_path / "sink"),
        "source_path": str(tmp_path / "source"),
        "keys_path": str(tmp_path / "keys"),
        "storage_backend": "local",
        "storage_path": str(tmp_path / "css"),
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def make_settings(nats_url: str, tmp_path: Path) -> Callable[..., Settings]:
    return lambda **overrides: settings_for(nats_url, tmp_path, **overrides)


async def start_in_process(
    settings: Settings,
    registry: Registry | None = None,
    store: Any | None = None,
    connect_options: dict[str, Any] | None = None,
) -> WorkerService:
    """Start a :class:`WorkerService` in this process (test operations and a MemoryStore unless given).

    Every in-process test worker is started here (also tests/security/conftest.py and
    tests/faults/support.py), so they all reconnect as fast (0.2 s) after a server restart.
    """
    worker = WorkerService(
        settings,
        registry if registry is not None else test_registry(),
        store=store if store is not None else MemoryStore(),
        connect_options={"reconnect_time_wait": 0.2, **(connect_options or {})},
    )
    await worker.start()
    return worker


@contextlib.asynccontextmanager
async def running_pool(slots: int, preload: list[str], ready_timeout: float) -> AsyncIterator[ComputePool]:
    """A started :class:`ComputePool` whose slots have loaded ``preload``; shut down on exit.

    The ``pool`` fixtures of tests/worker/runtime/test_pool.py and test_shared.py differ only in what
    their slots preload (the module that defines their compute functions).
    """
    pool = ComputePool(slots, preload=preload)
    pool.start()
    try:
        await pool.wait_ready(timeout=ready_timeout)
        yield pool
    finally:
        await pool.shutdown()


StartWorker = Callable[..., Awaitable[WorkerService]]


@pytest.fixture
async def start_worker(nats_url: str, tmp_path: Path) -> AsyncIterator[StartWorker]:
    started: list[WorkerService] = []

    async def start(
        *,
        registry: Registry | None = None,
        store: Any | None = None,
        settings: Settings | None = None,
        connect_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> WorkerService:
        worker = await start_in_process(
            settings or settings_for(nats_url, tmp_path, **overrides), registry, store, connect_options
        )
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        await worker.stop(grace=2.0)


@pytest.fixture
async def workers(nats_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    # Imported here: tests.faults.support imports this module (settings_for), so a top-level
    # import would be circular.
    from tests.faults.support import Workers

    group = Workers(nats_url, tmp_path)
    yield group
    await group.close()
