"""Health answers: status, storage reachability, NATS connection.

Health must answer in milliseconds even when every compute slot is busy and storage is slow, so
storage reachability is cached: a request older than ``ttl`` starts one background ping (single
flight, bounded by ``timeout``) and is answered from the last known value; only the very first
request waits for a ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from typing import Any
from urllib.parse import ParseResult

from worker.storage.breaker import BreakerStatus

log = logging.getLogger("rory.worker.health")


def backend_name(store: Any) -> str:
    """A short name for the store's backend (``local``, ``mictlanx``...)."""
    for attr in ("backend", "backend_name", "name"):
        value = getattr(store, attr, None)
        if isinstance(value, str) and value:
            return value
        if value is not None and hasattr(value, "value") and isinstance(value.value, str):
            return value.value
    return type(store).__name__


class StorageProbe:
    """Cached ``store.ping()`` with a short timeout, and the store's circuit breaker when it has one.

    Storage counts as unreachable while the breaker is open, before its first successful ping, or
    after ``failures_to_degrade`` consecutive failed pings: one slow ping past ``timeout`` under a
    heavy load is not an outage, so health does not flap between ``ready`` and ``degraded``.
    """

    def __init__(
        self, store: Any, *, ttl: float = 2.0, timeout: float = 0.5, failures_to_degrade: int = 3
    ) -> None:
        self._store = store
        self.ttl = ttl
        self.timeout = timeout
        self.failures_to_degrade = max(1, failures_to_degrade)
        self.backend = backend_name(store)
        self._pinged: bool | None = None
        self._ping_failures = 0
        self._ever_reached = False
        self._ping_error: str | None = None
        self._checked = 0.0
        self._inflight: asyncio.Task[bool] | None = None

    def _breaker(self) -> BreakerStatus | None:
        status = getattr(self._store, "storage_status", None)
        return status if isinstance(status, BreakerStatus) else None

    @property
    def reachable(self) -> bool | None:
        """None before the first ping; False while the breaker is open or pings keep failing."""
        breaker = self._breaker()
        if breaker is not None and not breaker.reachable:
            return False
        if self._pinged is None:
            return None
        if not self._ever_reached:  # no evidence it ever worked: the first failure counts
            return self._pinged
        return self._ping_failures < self.failures_to_degrade

    @property
    def last_error(self) -> str | None:
        breaker = self._breaker()
        if breaker is not None and breaker.last_error:
            return breaker.last_error
        return self._ping_error

    async def _ping(self) -> bool:
        ping = getattr(self._store, "ping", None)
        error_text = None
        if ping is None:
            ok = True
        else:
            try:
                result = ping()
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self.timeout)
                ok = result is not False
                error_text = None if ok else "storage ping answered: not reachable"
            except Exception as error:  # any failure means "not reachable", never a crash
                log.debug("storage ping failed", extra={"error": repr(error)})
                ok = False
                error_text = f"storage ping: {type(error).__name__}: {error}".rstrip(": ")
        self._pinged = ok
        self._ever_reached = self._ever_reached or ok
        self._ping_failures = 0 if ok else self._ping_failures + 1
        self._ping_error = error_text if not ok else None
        self._checked = time.monotonic()
        return ok

    def _refresh(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._ping())
        return self._inflight

    async def check(self) -> bool:
        """Last known reachability; refreshes in the background when stale."""
        if self._pinged is None:
            await asyncio.shield(self._refresh())
        elif time.monotonic() - self._checked > self.ttl:
            self._refresh()
        return bool(self.reachable)

    def report(self) -> dict[str, object]:
        """The ``storage`` part of health and heartbeats."""
        return {
            "backend": self.backend,
            "reachable": self.reachable is not False,
            "last_error": self.last_error,
        }

    async def aclose(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(BaseException):
                await self._inflight


def safe_url(url: ParseResult | None) -> str | None:
    """The server URL without credentials."""
    if url is None:
        return None
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}"


async def nats_status(nc: Any, timeout: float = 0.5) -> dict[str, Any]:
    """``{"connected_url", "rtt_ms"}``; rtt is None when the server does not answer in time."""
    url = safe_url(getattr(nc, "connected_url", None))
    rtt_ms = None
    if url is not None:
        try:
            rtt_ms = round(await nc.rtt(timeout=timeout) * 1000, 3)
        except Exception:
            rtt_ms = None
    return {"connected_url": url, "rtt_ms": rtt_ms}


__all__ = ["StorageProbe", "backend_name", "nats_status", "safe_url"]
