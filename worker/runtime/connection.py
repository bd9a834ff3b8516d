"""The NATS connection: options from settings, a bounded first connect, reconnect forever after.

nats-py 2.16 facts this relies on (read in ``nats/aio/client.py``, verified in nats.md):
``max_reconnect_attempts`` is only enforced when ``> 0``, so both ``0`` and ``-1`` mean "forever";
we pass ``-1`` (the documented spelling). With it, the *first* connect also retries forever, so it
is bounded from outside with ``asyncio.wait_for`` (NATS_CONNECT_TIMEOUT) and fails with a message
naming the servers and the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from worker.runtime.health import safe_url
from worker.settings import Settings, SettingsError

log = logging.getLogger("rory.worker.nats")

RECONNECT_TIME_WAIT = 1.0
PING_INTERVAL = 20
MAX_OUTSTANDING_PINGS = 3
DRAIN_TIMEOUT = 5


class NatsUnavailable(RuntimeError):
    """No NATS server accepted the first connection in time."""


def _file(variable: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise SettingsError(f"{variable}: file not found: {value}")
    return str(path)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """An SSL context when any NATS_TLS_* variable is set (CA to verify, cert/key for mTLS)."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert or settings.nats_tls_key):
        return None
    if settings.nats_tls_key and not settings.nats_tls_cert:
        raise SettingsError("NATS_TLS_KEY: set NATS_TLS_CERT too (client certificate for mTLS)")
    cafile = _file("NATS_TLS_CA", settings.nats_tls_ca) if settings.nats_tls_ca else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if settings.nats_tls_cert:
        cert = _file("NATS_TLS_CERT", settings.nats_tls_cert)
        key = _file("NATS_TLS_KEY", settings.nats_tls_key) if settings.nats_tls_key else None
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(f"NATS_TLS_CERT: cannot load certificate/key: {error}") from None
    return context


def connect_options(settings: Settings, *, name: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from settings (credentials, TLS, inbox prefix)."""
    options: dict[str, Any] = {
        "servers": list(settings.nats_urls),
        "name": name or f"rory-worker-{settings.node_id}",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_TIME_WAIT,
        "connect_timeout": min(2.0, settings.nats_connect_timeout),
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "drain_timeout": DRAIN_TIMEOUT,
        "inbox_prefix": settings.nats_inbox_prefix,
    }
    if settings.nats_user or settings.nats_password:
        if not settings.nats_user:
            raise SettingsError("NATS_USER: required when NATS_PASSWORD is set")
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_nkey_seed:
        options["nkeys_seed"] = _file("NATS_NKEY_SEED", settings.nats_nkey_seed)
    if settings.nats_creds:
        options["user_credentials"] = _file("NATS_CREDS", settings.nats_creds)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    options.update(overrides)
    return options


def _callbacks(
    last_error: list[BaseException], on_reconnected: Callable[[], Awaitable[None]] | None
) -> dict[str, Any]:
    async def error_cb(error: Exception) -> None:
        last_error[:] = [error]
        log.warning("nats error", extra={"error": repr(error)})

    async def disconnected_cb() -> None:
        log.warning("nats disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected")
        if on_reconnected is not None:
            await on_reconnected()

    async def closed_cb() -> None:
        log.info("nats connection closed")

    return {
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
    }


async def connect(
    settings: Settings,
    *,
    timeout: float | None = None,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    **overrides: Any,
) -> Client:
    """Connect to NATS_URLS; raise :class:`NatsUnavailable` if no server answers within the timeout."""
    options = connect_options(settings, **overrides)
    last_error: list[BaseException] = []
    for key, value in _callbacks(last_error, on_reconnected).items():
        options.setdefault(key, value)
    limit = settings.nats_connect_timeout if timeout is None else timeout
    client = Client()
    try:
        await asyncio.wait_for(client.connect(**options), limit)
    except (TimeoutError, nats.errors.NoServersError, OSError) as error:
        with contextlib.suppress(Exception):
            await client.close()
        cause = last_error[0] if last_error else error
        reason = f"{type(cause).__name__}: {cause}".rstrip(": ") if str(cause) else type(cause).__name__
        raise NatsUnavailable(
            f"no NATS server answered at {', '.join(settings.nats_urls)} within {limit:g}s "
            f"(NATS_URLS, NATS_CONNECT_TIMEOUT; last error: {reason})"
        ) from None
    log.info("nats connected", extra={"server": safe_url(client.connected_url)})
    return client


__all__ = ["NatsUnavailable", "connect", "connect_options", "tls_context"]
