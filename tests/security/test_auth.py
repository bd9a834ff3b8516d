"""Every credential option of the worker against a real nats-server configured for it.

Each test writes the server config into its tmp dir, starts ``nats-server -c``, then shows that (1) a
worker configured from settings connects and serves, (2) a client without credentials, or with wrong
ones, is refused, and (3) a worker with wrong credentials fails with a message naming the variables.
"""

from __future__ import annotations

import time

import pytest

from scripts.nats_auth import MANAGER, write_auth_material
from tests.conftest import settings_for
from tests.security.natsjwt import Operator
from tests.security.util import client, echo_through, refused
from worker.runtime.connection import NatsUnavailable, connect

CREDENTIAL_HINT = "NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED or NATS_CREDS"


async def _worker_refused(url: str, tmp_path, **overrides) -> str:
    """The worker's own connect path with these settings: it must fail, fast and clearly."""
    settings = settings_for(url, tmp_path, nats_connect_timeout=1.0, **overrides)
    started = time.perf_counter()
    with pytest.raises(NatsUnavailable) as caught:
        await connect(settings)
    assert time.perf_counter() - started < 5
    return str(caught.value)


async def test_user_and_password(configured_nats, worker_on, tmp_path) -> None:
    server = await configured_nats(
        'authorization { users: [ { user: "rory-worker", password: "w-secret" },'
        ' { user: "manager", password: "m-secret" } ] }\n'
    )
    worker = await worker_on(server.url, nats_user="rory-worker", nats_password="w-secret")
    manager = await client(server.url, user="manager", password="m-secret")
    try:
        await echo_through(manager, worker)
    finally:
        await manager.close()
    assert "authorization violation" in (await refused(server.url)).lower()
    assert "authorization violation" in (await refused(server.url, user="manager", password="nope")).lower()
    message = await _worker_refused(server.url, tmp_path, nats_user="rory-worker", nats_password="wrong")
    assert "refused this worker's credentials" in message and CREDENTIAL_HINT in message
    assert "wrong" not in message  # the password never appears in errors


async def test_password_in_url_is_not_echoed(configured_nats, tmp_path) -> None:
    server = await configured_nats('authorization { user: "u", password: "right" }\n')
    url = server.url.replace("nats://", "nats://u:leaked-secret@")
    message = await _worker_refused(url, tmp_path)
    assert "leaked-secret" not in message and "refused" in message


async def test_token(configured_nats, worker_on, tmp_path) -> None:
    server = await configured_nats('authorization { token: "t0k3n-for-rory" }\n')
    worker = await worker_on(server.url, nats_token="t0k3n-for-rory")
    manager = await client(server.url, token="t0k3n-for-rory")
    try:
        await echo_through(manager, worker)
    finally:
        await manager.close()
    await refused(server.url)
    await refused(server.url, token="guess")
    message = await _worker_refused(server.url, tmp_path, nats_token="guess")
    assert CREDENTIAL_HINT in message and "guess" not in message


async def test_nkey_seed_file(configured_nats, worker_on, tmp_path) -> None:
    """NATS_NKEY_SEED with the generated per-node permissions (scripts/nats_auth.py)."""
    auth = write_auth_material(tmp_path / "nats", ["node-a"])
    server = await configured_nats('include "accounts.conf"\n', jetstream=True)
    worker = await worker_on(
        server.url,
        node_id="node-a",
        rory_subject_prefix="rory",
        nats_nkey_seed=str(auth.seed_path("node-a")),
        nats_inbox_prefix="_INBOX_node-a",
    )
    manager = await client(server.url, nkeys_seed=str(auth.seed_path(MANAGER)))
    try:
        await echo_through(manager, worker)
    finally:
        await manager.close()
    await refused(server.url)
    stranger = write_auth_material(tmp_path / "elsewhere", ["node-a"])  # same name, another key
    await refused(server.url, nkeys_seed=str(stranger.seed_path("node-a")))
    message = await _worker_refused(server.url, tmp_path, nats_nkey_seed=str(stranger.seed_path("node-a")))
    assert CREDENTIAL_HINT in message


async def test_creds_file_operator_mode(configured_nats, worker_on, tmp_path) -> None:
    """NATS_CREDS: operator mode with user JWTs minted by tests/security/natsjwt.py (no nsc needed)."""
    from scripts.nats_auth import manager_permissions, worker_permissions

    operator = Operator()
    server = await configured_nats(operator.server_conf())
    perms = worker_permissions("node-c", "rory")
    worker_creds = operator.user_creds(
        tmp_path / "node-c.creds",
        "node-c",
        publish=perms["publish"],
        subscribe=perms["subscribe"],
        allow_responses=True,
    )
    mperms = manager_permissions("rory")
    manager_creds = operator.user_creds(
        tmp_path / "manager.creds", "manager", publish=mperms["publish"], subscribe=mperms["subscribe"]
    )
    worker = await worker_on(
        server.url,
        node_id="node-c",
        rory_subject_prefix="rory",
        nats_creds=str(worker_creds),
        nats_inbox_prefix="_INBOX_node-c",
    )
    manager = await client(server.url, user_credentials=str(manager_creds))
    try:
        await echo_through(manager, worker)
    finally:
        await manager.close()
    await refused(server.url)
    foreign = Operator().user_creds(tmp_path / "foreign.creds", "node-c")  # signed by another operator
    await refused(server.url, user_credentials=str(foreign))
    message = await _worker_refused(server.url, tmp_path, nats_creds=str(foreign))
    assert CREDENTIAL_HINT in message


async def test_refusal_is_explained_with_a_caller_error_cb(configured_nats, tmp_path) -> None:
    """The service may pass its own error_cb (tests do); the failure message still names the cause."""
    from tests.security.util import ErrorLog

    server = await configured_nats('authorization { token: "right" }\n')
    errors = ErrorLog()
    settings = settings_for(server.url, tmp_path, nats_connect_timeout=1.0, nats_token="wrong")
    with pytest.raises(NatsUnavailable, match="refused this worker's credentials"):
        await connect(settings, error_cb=errors.callback)
    assert any("authorization violation" in e.lower() for e in errors.errors)
