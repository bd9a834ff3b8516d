"""Helpers for the durable-intake tests: settings, counting, DLQ reading, a worker subprocess.

Every test gets its own stream names (``T<uid>_JOBS``, ``T<uid>_DLQ``, bucket ``T<uid>_RESULTS``)
and subject prefix, so tests on the shared session server never see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, RawStreamMsg

from dataowner import demo
from schemas import codec, subjects
from tests.conftest import settings_for, start_in_process
from tests.ops import Collector
from worker.embedded import terminate
from worker.runtime import jetstream
from worker.settings import Settings
from worker.storage import LocalStore

REPO = Path(__file__).resolve().parents[2]


def js_settings(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of a JetStream-mode test worker with short ack waits and private stream names."""
    uid = uuid.uuid4().hex[:8].upper()
    values: dict[str, Any] = {
        "rory_jobs_mode": "jetstream",
        "jetstream_stream": f"T{uid}_JOBS",
        "jetstream_dlq_stream": f"T{uid}_DLQ",
        "jetstream_ack_wait": 1.5,
        "jetstream_max_deliver": 3,
        "worker_capacity": 2,
    }
    values.update(overrides)
    return settings_for(url, tmp_path, **values)


def peer(settings: Settings, **overrides: Any) -> Settings:
    """Another worker on the same prefix, streams and storage (a different node id by default)."""
    update = {"node_id": f"{settings.node_id}-{uuid.uuid4().hex[:4]}", **overrides}
    return settings.model_copy(update=update)


def command(key: str, *, seconds: float = 0.0, **params: Any) -> dict[str, Any]:
    """A ``fault.work`` command; ``job_id`` = ``id`` = a fresh uuid."""
    ident = uuid.uuid4().hex
    return {
        "v": 1,
        "id": ident,
        "op": "fault.work",
        "ts": 0.0,
        "params": {"key": key, "seconds": seconds, **params},
    }


async def publish(nc: Client, settings: Settings, body: dict[str, Any], *, node: str | None = None) -> Any:
    return await jetstream.publish_job(nc.jetstream(), settings.rory_subject_prefix, node, body)


async def results(nc: Client, settings: Settings) -> Collector:
    """Collects every Reply on ``<p>.results.>`` (every node's)."""
    return await Collector.on(nc, subjects.results_all(settings.rory_subject_prefix))


async def balls(store: LocalStore, key: str, kind: str) -> list[str]:
    """Balls ``<key>-<kind>-*`` in storage (kind: ``run`` or ``result``)."""
    return [ball for ball in await store.list_balls() if ball.startswith(f"{key}-{kind}-")]


async def wait_for(predicate: Any, timeout: float, what: str = "a condition", interval: float = 0.05) -> None:
    """Poll an async or sync predicate until it is true; fail naming ``what`` after ``timeout``.

    The one polling helper of the tests that watch real processes (also tests/security/test_orphans.py
    and tests/security/test_tls_downgrade.py).
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > until:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def stream_messages(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def consumer_info(nc: Client, settings: Settings, name: str) -> ConsumerInfo:
    """The server's view of the test stream's consumer ``name`` (pending, ack pending, waiting)."""
    return await nc.jetstream().consumer_info(settings.jetstream_stream, name)


def stream_empty(js: JetStreamContext, stream: str) -> Callable[[], Awaitable[bool]]:
    """A condition for :func:`wait_for`: ``stream`` holds no message."""

    async def check() -> bool:
        return await stream_messages(js, stream) == 0

    return check


async def dead_letters(js: JetStreamContext, settings: Settings) -> list[RawStreamMsg]:
    """Every message in the test's DLQ stream, oldest first."""
    stream = settings.jetstream_dlq_stream
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            found.append(await js.get_msg(stream, seq))
    return found


def decode(data: bytes) -> Any:
    return codec.decode(data, json_mode=False)


# ----------------------------------------------------------------------------- worker subprocess
_ENV = {
    "nats_urls": lambda s: ",".join(s.nats_urls),
    "node_id": lambda s: s.node_id,
    "rory_subject_prefix": lambda s: s.rory_subject_prefix,
    "rory_jobs_mode": lambda s: str(s.rory_jobs_mode),
    "jetstream_stream": lambda s: s.jetstream_stream,
    "jetstream_dlq_stream": lambda s: s.jetstream_dlq_stream,
    "jetstream_ensure": lambda s: str(s.jetstream_ensure).lower(),
    "jetstream_ack_wait": lambda s: str(s.jetstream_ack_wait),
    "jetstream_max_deliver": lambda s: str(s.jetstream_max_deliver),
    "worker_capacity": lambda s: str(s.worker_capacity),
    "shutdown_grace_period": lambda s: str(s.shutdown_grace_period),
    "heartbeat_interval": lambda s: str(s.heartbeat_interval),
    "storage_backend": lambda s: "local",
    "storage_path": lambda s: s.storage_path,
    "sink_path": lambda s: s.sink_path,
    "source_path": lambda s: s.source_path,
    "keys_path": lambda s: s.keys_path,
    "log_path": lambda s: s.log_path,
}


class WorkerProcess(demo.WorkerProcess):
    """``python -m worker run --operations OPERATIONS``, started and awaited as the demo starts its
    workers (dataowner/demo.py), configured from ``settings`` through the environment.

    ``operations`` defaults to the fault operations (tests.faults.ops:register). The process group is
    ours (its own session), so :meth:`kill` SIGKILLs the worker together with its compute processes by
    the group id, like a node losing power.
    """

    def __init__(
        self, settings: Settings, log_file: Path, operations: str = "tests.faults.ops:register"
    ) -> None:
        self.settings = settings
        super().__init__(settings.node_id, {}, log_file, args=("--operations", operations), cwd=REPO)
        self.env = self.environment()

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
        env.update({name.upper(): value(self.settings) for name, value in _ENV.items()})
        env["ENV_FILE_PATH"] = str(self.log_file.parent / "no-such.env")
        env["PYTHONPATH"] = str(REPO)
        return env

    async def start(  # type: ignore[override]  # returns itself, for ``await WorkerProcess(...).start(nc)``
        self, nc: Client, prefix: str | None = None, timeout: float = 60.0
    ) -> WorkerProcess:
        """Start it and wait for its ``started`` announcement; on failure nothing of it is left."""
        try:
            await super().start(nc, prefix or self.settings.rory_subject_prefix, timeout)
        except RuntimeError:
            await self.kill()
            raise
        return self

    async def kill(self) -> None:
        """SIGKILL the worker's process group (ours) and reap the worker."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful stop); SIGKILL if it does not exit in time, then the rest of the group."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            await terminate(process, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group, if any
        return process.returncode


# ----------------------------------------------------------------------------- in-process workers
class Workers:
    """Starts JetStream-mode workers in the test's process (fault operations, a shared LocalStore)."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.started: list[Any] = []
        self._stores: dict[str, LocalStore] = {}

    def settings(self, **overrides: Any) -> Settings:
        return js_settings(self.url, self.tmp_path, **overrides)

    def store(self, settings: Settings) -> LocalStore:
        """The LocalStore of ``settings.storage_path`` (one instance per path)."""
        if settings.storage_path not in self._stores:
            self._stores[settings.storage_path] = LocalStore(settings.storage_path)
        return self._stores[settings.storage_path]

    async def start(self, settings: Settings, *, store: Any | None = None, **options: Any) -> Any:
        from tests.faults.ops import fault_registry

        store = store if store is not None else self.store(settings)
        worker = await start_in_process(settings, fault_registry(), store, options)
        self.started.append(worker)
        return worker

    async def close(self) -> None:
        for worker in reversed(self.started):
            with contextlib.suppress(Exception):
                await worker.stop(grace=1.0)
        for store in self._stores.values():
            with contextlib.suppress(Exception):
                await store.aclose()
