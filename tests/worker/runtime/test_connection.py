"""Connection options from settings, and a bounded first connect."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from worker.runtime.connection import NatsUnavailable, connect, connect_options
from worker.settings import SettingsError


def test_options_from_settings(make_settings, tmp_path) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SUAFAKE")
    creds = tmp_path / "user.creds"
    creds.write_text("creds")
    settings = make_settings(
        nats_urls=["nats://a:4222", "nats://b:4222"],
        nats_user="u",
        nats_password="p",
        nats_token="t",
        nats_nkey_seed=str(seed),
        nats_creds=str(creds),
        nats_inbox_prefix="_INBOX_n1",
    )
    options = connect_options(settings)
    assert options["servers"] == ["nats://a:4222", "nats://b:4222"]
    assert options["name"] == f"rory-worker-{settings.node_id}"
    assert options["max_reconnect_attempts"] == -1 and options["allow_reconnect"] is True
    assert (options["user"], options["password"], options["token"]) == ("u", "p", "t")
    assert options["nkeys_seed"] == str(seed) and options["user_credentials"] == str(creds)
    assert options["inbox_prefix"] == "_INBOX_n1"
    assert "tls" not in options


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("nats_nkey_seed", "NATS_NKEY_SEED"),
        ("nats_creds", "NATS_CREDS"),
        ("nats_tls_ca", "NATS_TLS_CA"),
        ("nats_tls_cert", "NATS_TLS_CERT"),
    ],
)
def test_missing_credential_files_name_the_variable(make_settings, field, variable) -> None:
    with pytest.raises(SettingsError) as caught:
        connect_options(make_settings(**{field: "/nonexistent/file"}))
    assert str(caught.value).startswith(variable)


def test_tls_context_with_ca(make_settings) -> None:
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        pytest.skip("no CA bundle on this machine")
    options = connect_options(make_settings(nats_tls_ca=str(bundle)))
    assert isinstance(options["tls"], ssl.SSLContext)
    with pytest.raises(SettingsError, match="NATS_TLS_KEY"):
        connect_options(make_settings(nats_tls_key=str(bundle)))


async def test_first_connect_is_bounded(make_settings) -> None:
    settings = make_settings(nats_urls=["nats://127.0.0.1:1"], nats_connect_timeout=0.5)
    started = time.perf_counter()
    with pytest.raises(NatsUnavailable) as caught:
        await connect(settings)
    assert time.perf_counter() - started < 5
    assert "nats://127.0.0.1:1" in str(caught.value) and "NATS_URLS" in str(caught.value)


async def test_connects_to_the_session_server(make_settings) -> None:
    client = await connect(make_settings())
    assert client.is_connected
    await client.close()
