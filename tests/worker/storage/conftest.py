"""Fixtures for the storage suite: the fake router and one store per backend.

Other suites can reuse the router with ``from tests.fakes.mictlanx_router import FakeRouter``
(``async with FakeRouter() as router: router.uri``) or copy the ``fake_router`` fixture below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.mictlanx_router import FakeRouter
from worker.storage import LocalStore, MictlanXStore, ObjectStore, RetryPolicy, parse_mictlanx_uri

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
    return MictlanXStore(parse_mictlanx_uri(router.uri), "rory", **options)  # type: ignore[arg-type]


@dataclass
class Backend:
    """A store plus what a test needs to damage its bytes behind its back."""

    name: str
    store: ObjectStore
    router: FakeRouter
    root: Path

    def corrupt_chunk(self, ball_id: str, index: int = 0, offset: int = 0) -> None:
        key = f"{ball_id}_{index}"
        if self.name == "mictlanx":
            self.router.corrupt(key, offset=offset)
            return
        bucket = self.root / "rory"
        version = (bucket / f"{ball_id}.ref").read_text().strip()
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
