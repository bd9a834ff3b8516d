"""Fixtures for the handler tests: a real nats-server (session), a worker serving the non-CKKS
operations in-process on a real local store, and a small client to send commands to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.worker.handlers.owner import Rig
from worker.runtime.registry import Registry
from worker.settings import Settings
from worker.storage.local import LocalStore


def handler_registry() -> Registry:
    """Exactly the operations these modules own (the lead wires them into register_all)."""
    from worker.handlers import classification, clustering, ml

    return Registry([*clustering.OPERATIONS, *classification.OPERATIONS, *ml.OPERATIONS])


@pytest.fixture
def registry() -> Registry:
    return handler_registry()


@pytest.fixture
async def local_store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    store = LocalStore(tmp_path / "css")
    yield store
    await store.aclose()


@pytest.fixture
async def rig(
    start_worker: Any, nc: Any, local_store: LocalStore, make_settings: Callable[..., Settings]
) -> Rig:
    """Worker + client + the store the data owner writes to (the same bucket the worker reads)."""
    settings = make_settings(storage_path=str(local_store.root))
    worker = await start_worker(registry=handler_registry(), store=local_store, settings=settings)
    await worker.pool.wait_ready(timeout=60)
    return Rig(nc=nc, settings=settings, store=local_store, worker=worker)
