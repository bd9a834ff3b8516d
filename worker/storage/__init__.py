"""Cloud storage ("CSS") for the worker: a bucket of chunked balls, locally or on MictlanX.

``open_store(settings)`` picks the backend from ``settings.resolved_storage_backend``:
``STORAGE_BACKEND=local``, ``mictlanx`` or ``nats`` forces one; ``auto`` (the default) uses MictlanX only
when ``MICTLANX_URI`` or ``MICTLANX_ROUTERS`` was set explicitly, else the embedded local store in
``STORAGE_PATH``. See docs/storage.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from nats.aio.client import Client

    #: Opens a NATS connection for the ``nats`` backend (see :func:`open_store`).
    NatsConnect = Callable[[], Awaitable[Client]]

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


def open_store(settings: Settings, *, nats_connect: NatsConnect | None = None, **options: Any) -> ObjectStore:
    """Build the configured store (no I/O happens until the first call; close it with ``aclose``).

    ``options`` go to the backend's constructor (e.g. ``fsync=True`` for the local store).
    ``nats_connect`` opens the ``nats`` backend's own connection on first use; the caller builds it
    from the same settings (the worker's own connect function: credentials, TLS),
    so storage never decides how to log in.
    """
    if settings.resolved_storage_backend is StorageBackend.MICTLANX:
        return MictlanXStore.from_settings(settings, **options)
    if settings.resolved_storage_backend is StorageBackend.NATS:
        from worker.storage.nats_objects import NatsObjectStore

        if nats_connect is not None:
            options.setdefault("connect", nats_connect)
        return NatsObjectStore.from_settings(settings, **options)
    return LocalStore.from_settings(settings, **options)


def open_guarded_store(
    settings: Settings, breaker: CircuitBreaker | None = None, *, nats_connect: NatsConnect | None = None
) -> GuardedStore:
    """The configured store behind a storage circuit breaker (the worker's store; see guarded.py)."""
    breaker = breaker or CircuitBreaker()
    if settings.resolved_storage_backend is StorageBackend.MICTLANX:
        return GuardedStore(open_store(settings, breaker=breaker), breaker)
    return GuardedStore(open_store(settings, nats_connect=nats_connect), breaker)
