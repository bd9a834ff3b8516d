"""The NATS connection: options from settings, a bounded first connect, reconnect forever after.

nats-py 2.16 facts this relies on (read in ``nats/aio/client.py``; docs/original-rory.md, NATS client):
``max_reconnect_attempts`` is only enforced when ``> 0``, so both ``0`` and ``-1`` mean "forever";
we pass ``-1`` (the documented spelling). With it, the *first* connect also retries forever, so it
is bounded from outside with ``asyncio.wait_for`` (NATS_CONNECT_TIMEOUT) and fails with a message
naming the servers and the last error.

nats-py only starts TLS when the server's INFO says ``tls_required``, even for a ``tls://`` URL and a
configured SSL context: a plaintext server (or anyone in the path who rewrites INFO) gets a plaintext
connection. Checking the transport afterwards is too late on a reconnect: nats-py sends CONNECT,
replays every subscription and flushes pending publishes (replies included) *before* it calls the
reconnected callback, so a plaintext server on the same address learns the subscriptions, receives a
reply and can push a command in the meantime.

So whenever TLS is configured (a ``tls://`` URL or NATS_TLS_CA/CERT/KEY) the worker starts TLS
*before any NATS protocol byte* (nats-py's ``tls_handshake_first``, NATS_TLS_HANDSHAKE_FIRST; the
server needs ``tls { handshake_first: true }``): in ``_process_connect_init`` the TLS handshake is the
first thing on every connection, first connect and reconnect alike, and a peer that does not speak
TLS fails that handshake before it has seen a single byte of NATS protocol. An explicit
NATS_TLS_HANDSHAKE_FIRST=false (servers without ``handshake_first``) keeps the older behaviour, where
the transport check below (after the first connect and after every reconnect) is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nats
from nats.aio.client import DEFAULT_BUFFER_SIZE, Client
from nats.aio.transport import TcpTransport

from worker.runtime.health import safe_url
from worker.settings import Settings, SettingsError

log = logging.getLogger("rory.worker.nats")

RECONNECT_TIME_WAIT = 1.0
PING_INTERVAL = 20
MAX_OUTSTANDING_PINGS = 3
DRAIN_TIMEOUT = 5


class NatsUnavailable(RuntimeError):
    """No NATS server accepted the first connection in time."""


class TlsHandshakeTimeout(TimeoutError):
    """The peer accepted the TCP connection but did not complete a TLS handshake in time."""


class _TcpTransport(TcpTransport):
    """nats-py's TCP transport, minus a hang after a failed TLS handshake.

    ``loop.start_tls`` hands the socket to its TLS protocol; when the handshake fails it closes the
    socket, but the plain ``StreamWriter`` nats-py keeps never hears of it (its protocol is no longer
    attached), so a later ``close()`` of the client waits forever in ``wait_closed()``. With
    handshake first every reconnect attempt against a peer that does not speak TLS ends that way, and
    stopping the worker then would hang. After a failed handshake this transport forgets the dead
    streams: ``close()`` has nothing left to wait for, and the next attempt opens a new connection.
    """

    async def connect_tls(
        self, uri: Any, ssl_context: ssl.SSLContext, buffer_size: int, connect_timeout: int
    ) -> None:
        try:
            await super().connect_tls(uri, ssl_context, buffer_size, connect_timeout)
        except BaseException as error:
            writer = self._bare_io_writer
            self._io_reader = self._io_writer = self._bare_io_reader = self._bare_io_writer = None
            if writer is not None:
                writer.transport.close()  # start_tls closed it already; never leave a socket open
            if isinstance(error, TimeoutError):  # say which step timed out (failure_message)
                raise TlsHandshakeTimeout(f"no TLS handshake within {connect_timeout:g}s") from None
            raise


class _Client(Client):
    """nats-py's client with :class:`_TcpTransport` for nats:// and tls:// servers.

    ``_connect_to_server`` is nats-py 2.16's, except for the transport class (nats-py creates one
    when there is none, or when the current one is not connected, which an unconnected transport of
    ours would be too, so the method cannot simply defer to nats-py after setting it).
    """

    async def _connect_to_server(self, s: Any) -> None:
        if s.uri.scheme in ("ws", "wss"):
            await super()._connect_to_server(s)
            return
        s.last_attempt = time.monotonic()
        if not isinstance(self._transport, _TcpTransport):
            self._transport = _TcpTransport()
        await self._transport.connect(
            s.uri, buffer_size=DEFAULT_BUFFER_SIZE, connect_timeout=self.options["connect_timeout"]
        )


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
    options["tls_handshake_first"] = tls_handshake_first(settings)
    options.update(overrides)
    return options


def _schemes(settings: Settings) -> set[str]:
    return {urlparse(url).scheme for url in settings.nats_urls}


def tls_handshake_first(settings: Settings) -> bool:
    """Whether to start TLS before any NATS protocol byte (NATS_TLS_HANDSHAKE_FIRST).

    Unset means on whenever TLS is configured: a ``tls://`` URL or NATS_TLS_CA/CERT/KEY. WebSocket
    URLs never use it: ``wss://`` is TLS from its first byte anyway, and a ``ws://`` connection cannot
    start TLS (an explicit ``true`` with a ``ws://`` URL is a settings error).
    """
    schemes = _schemes(settings)
    explicit = settings.nats_tls_handshake_first
    if schemes and schemes <= {"ws", "wss"}:
        if explicit and "ws" in schemes:
            raise SettingsError(
                "NATS_TLS_HANDSHAKE_FIRST: a ws:// URL cannot start TLS; use wss:// (TLS from the first byte)"
            )
        return False
    if explicit is not None:
        return explicit
    return "tls" in schemes or bool(settings.nats_tls_ca or settings.nats_tls_cert or settings.nats_tls_key)


def _callbacks(
    last_error: list[BaseException],
    on_reconnected: Callable[[], Awaitable[None]] | None,
    on_error: Callable[[BaseException], None] | None = None,
) -> dict[str, Any]:
    async def error_cb(error: Exception) -> None:
        last_error.append(error)  # a few recent ones: a refused login is often followed by a reset
        del last_error[:-8]
        if on_error is not None:
            on_error(error)
        if not _log_violation(error):
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
    last_error: list[BaseException],
    inner: Callable[[Exception], Awaitable[None]],
    on_error: Callable[[BaseException], None] | None = None,
) -> Callable[[Exception], Awaitable[None]]:
    """Wrap a caller's error_cb so a failed first connect can still say why."""

    async def error_cb(error: Exception) -> None:
        last_error.append(error)
        del last_error[:-8]
        if on_error is not None:
            on_error(error)
        _log_violation(error)
        await inner(error)

    return error_cb


def _log_violation(error: BaseException) -> bool:
    """Log a warning when the server refused a publish or subscription (a permissions violation).

    The server answers ``-ERR 'Permissions Violation for Publish to "<subject>"'`` and keeps the
    connection: the refused action silently did not happen. A worker with correct credentials never
    triggers one, so each is worth a warning naming the subject (a misconfiguration, or a bug).
    """
    text = str(error)
    if "permissions violation" not in text.lower():
        return False
    log.warning("nats permissions violation: the server refused an action", extra={"error": text})
    return True


def _redacted_urls(settings: Settings) -> str:
    """The server list for messages, without any ``user:password@`` part of a URL."""
    return ", ".join(safe_url(urlparse(url)) or url for url in settings.nats_urls)


_AUTH_MARKERS = ("authorization violation", "authentication", "user authentication expired")
_CLIENT_CERT_MARKERS = ("certificate required", "bad certificate", "unknown ca", "certificate unknown")
#: OpenSSL's words for "the peer answered the ClientHello with something that is not TLS" (e.g. INFO).
_NOT_TLS_MARKERS = ("wrong version number", "packet length too long", "record layer failure", "http request")


def _is_credentials_error(error: BaseException) -> bool:
    return any(marker in str(error).lower() for marker in _AUTH_MARKERS)


def _most_telling(errors: list[BaseException]) -> BaseException | None:
    """The newest refused-login or TLS error if any (they explain the failure), else the newest."""
    for error in reversed(errors):
        if _is_credentials_error(error) or isinstance(error, ssl.SSLError | TlsHandshakeTimeout):
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
    handshake_first = tls_handshake_first(settings)
    if handshake_first and (
        isinstance(cause, TlsHandshakeTimeout)
        or (isinstance(cause, ssl.SSLError) and any(marker in lowered for marker in _NOT_TLS_MARKERS))
    ):
        return (
            f"the NATS server at {urls} did not answer with TLS ({reason}): the worker starts TLS before "
            "any NATS byte (NATS_TLS_HANDSHAKE_FIRST, on whenever TLS is configured), so the server needs "
            "tls { handshake_first: true }; refusing a plaintext connection. A TLS server without "
            "handshake_first needs that line (or NATS_TLS_HANDSHAKE_FIRST=false, which leaves a "
            "downgrade window on reconnects)"
        )
    if not handshake_first and tls_expected(settings) and "expecting info" in lowered:
        return (
            f"the NATS server at {urls} sent nothing before TLS ({reason}): it probably has "
            "tls { handshake_first: true }; leave NATS_TLS_HANDSHAKE_FIRST unset or set it to true"
        )
    if isinstance(cause, ssl.SSLError):
        hint = (
            "the server wants a client certificate it trusts: set NATS_TLS_CERT and NATS_TLS_KEY"
            if any(marker in lowered for marker in _CLIENT_CERT_MARKERS)
            else "check NATS_TLS_CA, NATS_TLS_CERT and NATS_TLS_KEY"
        )
        return f"TLS handshake with the NATS server at {urls} failed ({reason}); {hint}"
    # A TLS mode mismatch can also look like silence (each side waiting for the other to speak).
    if handshake_first:
        mode = (
            "; TLS starts before any NATS byte (NATS_TLS_HANDSHAKE_FIRST, on whenever TLS is "
            "configured): the server needs tls { handshake_first: true }"
        )
    elif tls_expected(settings):
        mode = "; a server with tls { handshake_first: true } needs NATS_TLS_HANDSHAKE_FIRST unset or true"
    else:
        mode = ""
    return (
        f"no NATS server answered at {urls} within {limit:g}s "
        f"(NATS_URLS, NATS_CONNECT_TIMEOUT; last error: {reason}){mode}"
    )


def tls_expected(settings: Settings) -> bool:
    """True when the operator asked for TLS: a ``tls://`` URL, a CA / client certificate to use, or
    NATS_TLS_HANDSHAKE_FIRST=true."""
    schemes = _schemes(settings)
    return (
        "tls" in schemes
        or bool(settings.nats_tls_ca or settings.nats_tls_cert)
        or tls_handshake_first(settings)
    )


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
    on_error: Callable[[BaseException], None] | None = None,
    **overrides: Any,
) -> Client:
    """Connect to NATS_URLS; raise :class:`NatsUnavailable` if no server answers within the timeout.

    ``on_error``: called synchronously with every error the client reports, before any other error
    handling (the service tracks refused subscriptions with it, whatever ``error_cb`` a caller passes).
    """
    options = connect_options(settings, **overrides)
    last_error: list[BaseException] = []
    callbacks = _callbacks(last_error, on_reconnected, on_error)
    for key, value in callbacks.items():
        options.setdefault(key, value)
    if options["error_cb"] is not callbacks["error_cb"]:  # the caller's own: still note the errors
        options["error_cb"] = _recording(last_error, options["error_cb"], on_error)
    limit = settings.nats_connect_timeout if timeout is None else timeout
    client = _Client()
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
    "tls_handshake_first",
    "transport_is_tls",
]
