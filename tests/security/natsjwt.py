"""Minimal NATS JWTs (operator, account, user) and ``.creds`` files, signed with ``nkeys``.

Why here: decentralised auth (``NATS_CREDS``) normally needs the ``nsc`` tool, which is not available.
The JWT format is small and documented (header ``{"typ":"JWT","alg":"ed25519-nkey"}``, base64url
claims, Ed25519 signature by the issuer's nkey), so the tests build an operator, one account and
per-user JWTs themselves and run nats-server in operator mode with a MEMORY resolver.
Test-only: no expiry, revocation or signing-key support.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Identity:
    """An nkey pair of one kind (operator, account or user)."""

    seed: bytes = field(repr=False)
    public_key: str

    @classmethod
    def new(cls, prefix: int) -> Identity:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(bytes(seed), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(bytearray(self.seed)).sign(data)


def encode_jwt(issuer: Identity, subject: str, name: str, nats: Mapping[str, Any]) -> str:
    """Sign a claims set ``{jti, iat, iss, name, sub, nats}`` with ``issuer``."""
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha512(json.dumps(claims, separators=(",", ":")).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


@dataclass
class Operator:
    """An operator with one account, able to mint user credentials for it."""

    operator: Identity = field(default_factory=lambda: Identity.new(nkeys.PREFIX_BYTE_OPERATOR))
    account: Identity = field(default_factory=lambda: Identity.new(nkeys.PREFIX_BYTE_ACCOUNT))

    def operator_jwt(self) -> str:
        return encode_jwt(self.operator, self.operator.public_key, "rory-test-operator", {"type": "operator"})

    def account_jwt(self) -> str:
        limits = {**UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
        return encode_jwt(
            self.operator, self.account.public_key, "RORY", {"type": "account", "limits": limits}
        )

    def server_conf(self) -> str:
        """The operator-mode part of a nats-server config (MEMORY resolver, account preloaded)."""
        return (
            f'operator: "{self.operator_jwt()}"\n'
            "resolver: MEMORY\n"
            f'resolver_preload: {{ {self.account.public_key}: "{self.account_jwt()}" }}\n'
        )

    def user_creds(
        self,
        path: Path,
        name: str,
        *,
        publish: Sequence[str] | None = None,
        subscribe: Sequence[str] | None = None,
        allow_responses: bool = False,
    ) -> Path:
        """Write a ``.creds`` file (user JWT + seed) for a new user of the account."""
        user = Identity.new(nkeys.PREFIX_BYTE_USER)
        claims: dict[str, Any] = {"type": "user", **UNLIMITED}  # signed by the account key itself
        claims["pub"] = {"allow": list(publish)} if publish is not None else {}
        claims["sub"] = {"allow": list(subscribe)} if subscribe is not None else {}
        if allow_responses:
            claims["resp"] = {"max": 1, "ttl": 0}
        token = encode_jwt(self.account, user.public_key, name, claims)
        text = (
            "-----BEGIN NATS USER JWT-----\n"
            f"{token}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return path
