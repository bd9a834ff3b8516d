"""The NATS connection: options from settings, a bounded first connect, reconnect forever after.

nats-py 2.16 facts this relies on (read in ``nats/aio/client.py``, verified in nats.md):
``max_reconnect_attempts`` is only enforced when ``> 0``, so both ``0`` and ``-1`` mean "forever";
we pass ``-1`` (the documented spelling). With it, the *first* connect also retries forever, so it
is bounded from outside with ``asyncio.wait_for`` (NATS_CONNECT_TIMEOUT) and fails with a message
naming the servers and the last error.

nats-py only starts TLS when the server's INFO says ``tls_required``, even for a ``tls://`` URL and a
configured SSL context: a plaintext server (or anyone in the path who rewrites INFO) gets a plaintext
connection. When TLS is expected (a ``tls://`` URL or NATS_TLS_CA/NATS_TLS_CERT set) we therefore check
the live transport after the first connect and after every reconnect and refuse a plaintext one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
        last_error.append(error)  # a few recent ones: a refused login is often followed by a reset
        del last_error[:-8]
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


def _recording(
    last_error: list[BaseException], inner: Callable[[Exception], Awaitable[None]]
) -> Callable[[Exception], Awaitable[None]]:
    """Wrap a caller's error_cb so a failed first connect can still say why."""

    async def error_cb(error: Exception) -> None:
        last_error.append(error)
        del last_error[:-8]
        await inner(error)

    return error_cb


def _redacted_urls(settings: Settings) -> str:
    """The server list for messages, without any ``user:password@`` part of a URL."""
    return ", ".join(safe_url(urlparse(url)) or url for url in settings.nats_urls)


_AUTH_MARKERS = ("authorization violation", "authentication", "user authentication expired")
_CLIENT_CERT_MARKERS = ("certificate required", "bad certificate", "unknown ca", "certificate unknown")


def _is_credentials_error(error: BaseException) -> bool:
    return any(marker in str(error).lower() for marker in _AUTH_MARKERS)


def _most_telling(errors: list[BaseException]) -> BaseException | None:
    """The newest refused-login or TLS error if any (they explain the failure), else the newest."""
    for error in reversed(errors):
        if _is_credentials_error(error) or isinstance(error, ssl.SSLError):
            return error
    return errors[-1] if errors else None


def failure_message(settings: Settings, cause: BaseException, limit: float) -> str:
    """Why the first connect failed, naming the variables to check.

    A refused login or a failed TLS handshake is not "no server answered": the server did answer, and
    the operator has to fix credentials or certificates, not the network, so the message says which.
    """
    reason = f"{type(cause).__name__}: {cause}".rstrip(": ") if str(cause) else type(cause).__name__
    lowered = str(cause).lower()
    urls = _redacted_urls(settings)
    if _is_credentials_error(cause):
        return (
            f"the NATS server at {urls} refused this worker's credentials ({reason}); check "
            "NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED or NATS_CREDS"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of the NATS server at {urls} could not be verified ({reason}); "
            "set NATS_TLS_CA to the CA bundle that signed it"
        )
    if isinstance(cause, ssl.SSLError):
        hint = (
            "the server wants a client certificate it trusts: set NATS_TLS_CERT and NATS_TLS_KEY"
            if any(marker in lowered for marker in _CLIENT_CERT_MARKERS)
            else "check NATS_TLS_CA, NATS_TLS_CERT and NATS_TLS_KEY"
        )
        return f"TLS handshake with the NATS server at {urls} failed ({reason}); {hint}"
    return (
        f"no NATS server answered at {urls} within {limit:g}s "
        f"(NATS_URLS, NATS_CONNECT_TIMEOUT; last error: {reason})"
    )


def tls_expected(settings: Settings) -> bool:
    """True when the operator asked for TLS: a ``tls://`` URL, or a CA / client certificate to use."""
    schemes = {urlparse(url).scheme for url in settings.nats_urls}
    return "tls" in schemes or bool(settings.nats_tls_ca or settings.nats_tls_cert)


def transport_is_tls(client: Client) -> bool | None:
    """Whether the live connection is TLS; None when the transport cannot tell (websockets)."""
    transport = getattr(client, "_transport", None)
    writer = getattr(transport, "_io_writer", None)
    if writer is None or not hasattr(writer, "get_extra_info"):
        return None
    return writer.get_extra_info("ssl_object") is not None


def _tls_guard(client: Client, inner: Callable[[], Awaitable[None]] | None) -> Callable[[], Awaitable[None]]:
    """A reconnected_cb that drops a reconnection which came up without TLS, then calls ``inner``."""

    async def reconnected_cb() -> None:
        if transport_is_tls(client) is False:
            log.error(
                "nats reconnected without TLS although TLS is configured; dropping that connection",
                extra={"server": safe_url(client.connected_url)},
            )
            # Not from inside this callback: it runs in the reconnect task that force_reconnect cancels.
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(client.force_reconnect()))
            return
        if inner is not None:
            await inner()

    return reconnected_cb


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
    callbacks = _callbacks(last_error, on_reconnected)
    for key, value in callbacks.items():
        options.setdefault(key, value)
    if options["error_cb"] is not callbacks["error_cb"]:  # the caller's own: still note the errors
        options["error_cb"] = _recording(last_error, options["error_cb"])
    limit = settings.nats_connect_timeout if timeout is None else timeout
    client = Client()
    require_tls = tls_expected(settings)
    if require_tls:
        options["reconnected_cb"] = _tls_guard(client, options.get("reconnected_cb"))
    try:
        await asyncio.wait_for(client.connect(**options), limit)
    except (TimeoutError, nats.errors.NoServersError, OSError) as error:
        with contextlib.suppress(Exception):
            await client.close()
        cause = _most_telling(last_error) or error
        raise NatsUnavailable(failure_message(settings, cause, limit)) from None
    if require_tls and transport_is_tls(client) is False:
        server = safe_url(client.connected_url)
        with contextlib.suppress(Exception):
            await client.close()
        raise NatsUnavailable(
            f"the NATS server at {server} did not start TLS although TLS is configured (tls:// URL or "
            "NATS_TLS_CA/NATS_TLS_CERT); refusing a plaintext connection. Enable tls {} on the server, "
            "or remove the TLS settings if plaintext is intended"
        )
    log.info("nats connected", extra={"server": safe_url(client.connected_url)})
    return client


__all__ = [
    "NatsUnavailable",
    "connect",
    "connect_options",
    "failure_message",
    "tls_context",
    "tls_expected",
    "transport_is_tls",
]
