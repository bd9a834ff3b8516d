"""Cloud storage ("CSS") for the worker: a bucket of chunked balls, locally or on MictlanX.

``open_store(settings)`` picks the backend from ``settings.resolved_storage_backend``:
``STORAGE_BACKEND=local``, ``mictlanx`` or ``nats`` forces one; ``auto`` (the default) uses MictlanX only
when ``MICTLANX_URI`` or ``MICTLANX_ROUTERS`` was set explicitly, else the embedded local store in
``STORAGE_PATH``. See docs/storage.md.
"""

from __future__ import annotations

from typing import Any

from worker.settings import Settings, StorageBackend
from worker.storage.base import BallInfo, Kind, ObjectStore
from worker.storage.breaker import CircuitBreaker
from worker.storage.guarded import GuardedStore
from worker.storage.local import LocalStore
from worker.storage.mictlanx import (
    MictlanXStore,
    RouterEndpoint,
    parse_mictlanx_routers,
    parse_mictlanx_uri,
    router_endpoints,
)
from worker.storage.retry import RetryPolicy

__all__ = [
    "BallInfo",
    "CircuitBreaker",
    "GuardedStore",
    "Kind",
    "LocalStore",
    "MictlanXStore",
    "ObjectStore",
    "RetryPolicy",
    "RouterEndpoint",
    "open_guarded_store",
    "open_store",
    "parse_mictlanx_routers",
    "parse_mictlanx_uri",
    "router_endpoints",
]


def open_store(settings: Settings, **options: Any) -> ObjectStore:
    """Build the configured store (no I/O happens until the first call; close it with ``aclose``).

    ``options`` go to the backend's constructor (e.g. ``fsync=True`` for the local store).
    """
    if settings.resolved_storage_backend is StorageBackend.MICTLANX:
        return MictlanXStore.from_settings(settings, **options)
    if settings.resolved_storage_backend is StorageBackend.NATS:
        from worker.storage.nats_objects import NatsObjectStore

        return NatsObjectStore.from_settings(settings, **options)
    return LocalStore.from_settings(settings, **options)


def open_guarded_store(settings: Settings, breaker: CircuitBreaker | None = None) -> GuardedStore:
    """The configured store behind a storage circuit breaker (the worker's store; see guarded.py)."""
    breaker = breaker or CircuitBreaker()
    if settings.resolved_storage_backend is StorageBackend.MICTLANX:
        return GuardedStore(open_store(settings, breaker=breaker), breaker)
    return GuardedStore(open_store(settings), breaker)
