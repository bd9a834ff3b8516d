"""nats-py helpers shared by the cluster tests: log in as a cluster user, request until interest arrives."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from scripts.cluster import LocalCluster
from scripts.nats_auth import MANAGER, inbox_prefix


class ErrorLog:
    """Collects the asynchronous errors (permission violations) a connection reports."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def callback(self, error: Exception) -> None:
        """The ``error_cb`` (nats-py wants a coroutine function, not a callable object)."""
        self.errors.append(str(error))

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]


async def connect_as(
    cluster: LocalCluster, user: str | None, server: int, *, errors: ErrorLog | None = None, **options: Any
) -> Client:
    """Connect to one server of ``cluster``; ``user`` names an nkey from its auth material (or None)."""
    kwargs: dict[str, Any] = {
        "servers": [cluster.servers[server].client_url],
        "name": f"test-{user or 'anonymous'}",
        "connect_timeout": 2,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "error_cb": (errors or ErrorLog()).callback,
    }
    if user is not None and cluster.auth is not None:
        kwargs["nkeys_seed"] = str(cluster.auth.seed_path(user))
        if user != MANAGER:
            kwargs["inbox_prefix"] = inbox_prefix(user)
    kwargs.update(options)
    return await asyncio.wait_for(nats.connect(**kwargs), 10)


async def request_when_ready(
    nc: Client, subject: str, payload: bytes = b"", *, timeout: float = 10.0, headers: dict | None = None
) -> Any:
    """Request, retrying while the responder's interest has not yet reached this server over the routes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nc.request(subject, payload, timeout=1.0, headers=headers)
        except (NoRespondersError, NatsTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def expect_no_responder(nc: Client, subject: str, payload: bytes = b"", *, settle: float = 0.3) -> None:
    """Assert nobody takes ``subject``: after ``settle`` seconds of route propagation, still no answer."""
    await asyncio.sleep(settle)
    try:
        reply = await nc.request(subject, payload, timeout=1.0)
    except (NoRespondersError, NatsTimeoutError):
        return
    raise AssertionError(f"{subject} was answered: {reply.data[:200]!r}")
