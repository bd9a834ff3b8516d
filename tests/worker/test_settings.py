"""Settings read from the environment: the edge where an operator's typo must become a clear error."""

from __future__ import annotations

import pytest

from worker.settings import SettingsError, load_settings


@pytest.mark.parametrize("raw, expected", [("", None), ("  ", None), ("true", True), ("0", False)])
def test_tls_handshake_first_blank_means_automatic(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool | None
) -> None:
    monkeypatch.setenv("NATS_TLS_HANDSHAKE_FIRST", raw)
    assert load_settings().nats_tls_handshake_first is expected


def test_tls_handshake_first_rejects_a_word_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_TLS_HANDSHAKE_FIRST", "sometimes")
    with pytest.raises(SettingsError, match="NATS_TLS_HANDSHAKE_FIRST"):
        load_settings()
