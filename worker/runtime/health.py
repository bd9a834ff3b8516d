"""Health answers: status, storage reachability, NATS connection, refused subscriptions.

Health must answer in milliseconds even when every compute slot is busy and storage is slow, so
storage reachability is cached: a request older than ``ttl`` starts one background ping (single
flight, bounded by ``timeout``) and is answered from the last known value; only the very first
request waits for a ping.

A subscription the server's permissions refuse is not an error the worker sees on its own: the
server answers the SUB with ``-ERR 'Permissions Violation for Subscription to "<subject>"'``, keeps
the connection, and the subscription silently receives nothing. So a worker whose credentials miss a
subject would report ``ready`` while, say, no pool command ever reaches it.
:class:`RefusedSubscriptions` collects those refusals from the connection's error callback
(worker/runtime/connection.py) so health and heartbeats say ``degraded`` and name the subjects, and
re-subscribes them now and then, so the worker recovers to ``ready`` once the permissions allow them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
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


_REFUSED_SUBSCRIPTION = re.compile(r'permissions violation for subscription to "([^"]+)"', re.IGNORECASE)


def refused_subscription(error: BaseException) -> str | None:
    """The subject of a refused subscription when ``error`` is the server saying so, else None.

    nats-server's text is ``Permissions Violation for Subscription to "<subject>"``, followed by
    `` using queue "<queue>"`` for a queue subscription; nats-py 2.16 passes it to the error
    callback as ``nats: <that text>`` and keeps the connection.
    """
    match = _REFUSED_SUBSCRIPTION.search(str(error))
    return match.group(1) if match else None


class RefusedSubscriptions:
    """The subjects this connection may not subscribe to, as the server last said.

    :meth:`note` is the connection's error hook. While any subject is refused, :meth:`watch` checks
    again after ``interval`` seconds, doubling up to ``max_interval`` while they stay refused (each
    check is one more violation the server logs): :meth:`recheck` sends the SUB of every live
    subscription on a refused subject again and flushes. The server handles a connection's protocol
    in order, so a refusal of that SUB arrives before the flush's PONG, and nats-py 2.16 awaits the
    error callback in its read loop before it handles the PONG: a subject with no new refusal once
    the flush returns is subscribed now, and is forgiven. A subject with no live subscription any
    more (the pool gate, worker/runtime/pool_gate.py, withdrew it) is forgiven as well.
    """

    def __init__(self, *, interval: float = 5.0, max_interval: float = 60.0, timeout: float = 5.0) -> None:
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.timeout = timeout
        self._refused: dict[str, int] = {}  # subject -> number of its latest refusal
        self._count = 0
        self._pending = asyncio.Event()

    def note(self, error: BaseException) -> None:
        """The connection's error hook: remember a refused subscription (other errors: ignored)."""
        subject = refused_subscription(error)
        if subject is None:
            return
        self._count += 1
        self._refused[subject] = self._count
        self._pending.set()

    @property
    def subjects(self) -> list[str]:
        """The refused subjects, sorted (empty: nothing refused)."""
        return sorted(self._refused)

    async def recheck(self, nc: Any) -> None:
        """Subscribe the refused subjects again; keep only those the server refuses again.

        Sends the SUB of nats-py's own subscription objects again (``Client._send_subscribe`` and
        ``Client._subs``, nats-py 2.16 internals): the server ignores a SUB whose id it already has, and
        registers one it refused before, so no subscription is duplicated or replaced.
        """
        if not self._refused or not nc.is_connected:
            return
        mark = self._count
        refused = set(self._refused)
        live = [
            sub
            for sub in list(getattr(nc, "_subs", {}).values())
            if sub.subject in refused and not getattr(sub, "_closed", False)  # drained: leave it gone
        ]
        for sub in live:
            await nc._send_subscribe(sub)
        await nc.flush(timeout=self.timeout)
        subscribed = {sub.subject for sub in live}
        for subject in refused:
            if subject not in subscribed or self._refused.get(subject, 0) <= mark:
                self._refused.pop(subject, None)
                log.info("subscription no longer refused", extra={"subject": subject})

    async def watch(self, nc: Any) -> None:
        """Recheck while anything is refused (run as a task; cancel it to stop)."""
        delay = self.interval
        while True:
            await self._pending.wait()
            await asyncio.sleep(delay)
            try:
                await self.recheck(nc)
            except Exception as error:  # disconnected meanwhile, flush timed out: try again later
                log.debug("refused subscriptions not rechecked", extra={"error": repr(error)})
            if self._refused:
                delay = min(delay * 2, self.max_interval)
            else:
                self._pending.clear()
                delay = self.interval


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


__all__ = [
    "RefusedSubscriptions",
    "StorageProbe",
    "backend_name",
    "nats_status",
    "refused_subscription",
    "safe_url",
]
