"""Fixtures for the storage suite: the fake router and one store per backend.

Other suites can reuse the router with ``from tests.fakes.mictlanx_router import FakeRouter``
(``async with FakeRouter() as router: router.uri``) or copy the ``fake_router`` fixture below.
``backend`` covers the local and MictlanX stores; ``contract_backend`` adds the ``nats`` store (a
fresh JetStream object-store bucket on the session's nats-server for every test).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from tests.fakes.mictlanx_router import FakeRouter
from worker.storage import LocalStore, MictlanXStore, ObjectStore, RetryPolicy, parse_mictlanx_uri
from worker.storage.breaker import CircuitBreaker
from worker.storage.nats_objects import NatsObjectStore

#: Tiny delays so fault tests finish in milliseconds (5 attempts, sleeps of 2..16 ms).
FAST_RETRY = RetryPolicy(max_retries=4, delay=0.002, backoff_factor=1.0, max_delay=0.02, jitter=False)


@pytest.fixture
async def fake_router() -> AsyncIterator[FakeRouter]:
    """A running fake MictlanX router with two replicas per key (so listings repeat entries)."""
    async with FakeRouter(replicas=2) as router:
        yield router


@pytest.fixture
async def fake_router_uri(fake_router: FakeRouter) -> str:
    """``mictlanx://fake-router-0@127.0.0.1:<port>?api_version=4&protocol=http``."""
    return fake_router.uri


def mictlanx_store(router: FakeRouter, **options: object) -> MictlanXStore:
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("timeout", 5.0)
    # These tests measure the retry loop; a breaker at its default threshold would open inside the
    # first retry schedule and hide it. The breaker's own behaviour is tested in test_breaker.py.
    options.setdefault("breaker", CircuitBreaker(failure_threshold=1_000_000))
    return MictlanXStore(parse_mictlanx_uri(router.uri), "rory", **options)  # type: ignore[arg-type]


@dataclass
class Backend:
    """A store plus what a test needs to damage its bytes behind its back."""

    name: str
    store: ObjectStore
    router: FakeRouter
    root: Path
    nc: Client | None = None

    async def corrupt_chunk(self, ball_id: str, index: int = 0, offset: int = 0) -> None:
        key = f"{ball_id}_{index}"
        if self.name == "mictlanx":
            self.router.corrupt(key, offset=offset)
            return
        if self.name == "nats":
            assert isinstance(self.store, NatsObjectStore) and self.nc is not None
            await corrupt_nats_object(self.nc, self.store.bucket, key, offset)
            return
        bucket = self.root / "rory"
        version = (bucket / f"{ball_id}.ref").read_text().split()[0]  # current, then previous
        path = bucket / f"{ball_id}.{version}" / key
        data = bytearray(path.read_bytes())
        data[offset % len(data)] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.fixture(params=["local", "mictlanx"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, fake_router: FakeRouter
) -> AsyncIterator[Backend]:
    store: ObjectStore
    if request.param == "local":
        store = LocalStore(tmp_path, "rory", max_workers=4)
    else:
        store = mictlanx_store(fake_router, max_workers=4)
    try:
        yield Backend(request.param, store, fake_router, tmp_path)
    finally:
        await store.aclose()


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


async def corrupt_nats_object(nc: Client, bucket: str, key: str, offset: int) -> None:
    """Flip one byte of an object behind the store's back: republish its data messages (same subject,
    so its meta record and digest stay) with the byte changed."""
    js = nc.jetstream()
    obs = await js.object_store(bucket)
    info = await obs.get_info(key)
    data = bytearray((await obs.get(key)).data or b"")
    data[offset % len(data)] ^= 0xFF
    subject = f"$O.{bucket}.C.{info.nuid}"
    await js.purge_stream(f"OBJ_{bucket}", subject=subject)
    await js.publish(subject, bytes(data))


def nats_store(nc: Client, bucket: str | None = None, **options: object) -> NatsObjectStore:
    """A store on its own new bucket (so tests never see each other's balls)."""
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("timeout", 5.0)
    return NatsObjectStore(bucket or f"t-{uuid.uuid4().hex[:12]}", nc=nc, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "mictlanx", "nats"])
async def contract_backend(
    request: pytest.FixtureRequest, tmp_path: Path, fake_router: FakeRouter, nats_url: str
) -> AsyncIterator[Backend]:
    """Every backend, for the ObjectStore contract tests."""
    nc: Client | None = None
    store: ObjectStore
    if request.param == "local":
        store = LocalStore(tmp_path, "rory", max_workers=4)
    elif request.param == "mictlanx":
        store = mictlanx_store(fake_router, max_workers=4)
    else:
        nc = await nats.connect(nats_url, name="pytest-nats-store")
        store = nats_store(nc, max_workers=4)
    try:
        yield Backend(request.param, store, fake_router, tmp_path, nc)
    finally:
        await store.aclose()
        if nc is not None:
            assert isinstance(store, NatsObjectStore)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_object_store(store.bucket)
            await nc.close()
