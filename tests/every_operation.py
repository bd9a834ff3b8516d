"""A worker serving every Rory operation (``worker.handlers.register_all``) on a given local store.

Why one helper: the tests that send real commands of all 15 operations (tests/security/test_hostile_params.py;
tests/worker/handlers/test_legacy_fields.py and tests/fuzz/test_worker_fuzz.py start the same worker)
need it wired the same way: the store they filled, and a key directory that does not exist, so the
CKKS operations get past validation and only then miss their keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.handlers import register_all
from worker.runtime.registry import Registry
from worker.runtime.service import WorkerService
from worker.settings import Settings
from worker.storage.local import LocalStore


async def start_every_operation(
    start_worker: Any, make_settings: Callable[..., Settings], store: LocalStore, tmp_path: Path
) -> tuple[WorkerService, Settings]:
    """Start the worker (tests/conftest.py's ``start_worker``) and wait until its compute pool is ready."""
    registry = Registry()
    register_all(registry)
    settings = make_settings(storage_path=str(store.root), keys_path=str(tmp_path / "no-keys"))
    worker = await start_worker(registry=registry, store=store, settings=settings)
    await worker.pool.wait_ready(timeout=60)
    return worker, settings
