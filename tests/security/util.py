"""Small helpers shared by the security tests."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.aio.client import Client

from schemas import subjects
from tests.deploy.natsutil import ErrorLog
from tests.ops import command, request
from worker.runtime.service import WorkerService

__all__ = ["ErrorLog", "client", "echo_through", "refused"]


async def client(url: str, *, errors: ErrorLog | None = None, **options: Any) -> Client:
    """A plain nats-py client that gives up quickly (tests of refusals must not wait for retries)."""
    kwargs: dict[str, Any] = {
        "servers": [url],
        "name": "security-test",
        "connect_timeout": 2,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "error_cb": (errors or ErrorLog()).callback,
    }
    kwargs.update(options)
    return await asyncio.wait_for(nats.connect(**kwargs), 10)


async def refused(url: str, **options: Any) -> str:
    """Assert that a client with ``options`` cannot connect; return the error text for further checks."""
    errors = ErrorLog()
    try:
        nc = await client(url, errors=errors, **options)
    except Exception as error:  # nats-py reports refusals as several exception types
        return " | ".join([*errors.errors, f"{type(error).__name__}: {error}"])
    await nc.close()
    raise AssertionError(f"a client with {sorted(options)} was let in")


async def echo_through(nc: Client, worker: WorkerService, message: str = "hello") -> dict[str, Any]:
    """Send ``test.echo`` to ``worker`` over ``nc`` and return the successful Reply."""
    subject = subjects.node_cmd(worker.prefix, worker.node_id, "test.echo")
    reply, _ = await request(nc, subject, command("test.echo", {"message": message}))
    assert reply["ok"], reply
    assert reply["result"]["message"] == message
    return reply
