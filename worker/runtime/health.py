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
    """Cached ``store.ping()`` with a short timeout."""

    def __init__(self, store: Any, *, ttl: float = 2.0, timeout: float = 0.5) -> None:
        self._store = store
        self.ttl = ttl
        self.timeout = timeout
        self.backend = backend_name(store)
        self.reachable: bool | None = None
        self._checked = 0.0
        self._inflight: asyncio.Task[bool] | None = None

    async def _ping(self) -> bool:
        ping = getattr(self._store, "ping", None)
        if ping is None:
            return True
        try:
            result = ping()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.timeout)
            ok = result is not False
        except Exception as error:  # any failure means "not reachable", never a crash
            log.debug("storage ping failed", extra={"error": repr(error)})
            ok = False
        self.reachable = ok
        self._checked = time.monotonic()
        return ok

    def _refresh(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._ping())
        return self._inflight

    async def check(self) -> bool:
        """Last known reachability; refreshes in the background when stale."""
        if self.reachable is None:
            return await asyncio.shield(self._refresh())
        if time.monotonic() - self._checked > self.ttl:
            self._refresh()
        return self.reachable

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
