"""Fixtures the CKKS core tests share: the data owner's context, its public copy, the worker's view
of it, and an in-process data owner (tests/core/inprocess_owner.py) holding that context.

One ``default-128`` context per test module (module scope: key generation costs about a second).
A module that needs another profile, or a Liu owner, defines its own ``owner``, which takes precedence
over this one (tests/core/test_pplr.py, tests/core/test_skmeans.py, tests/core/test_dbskmeans.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tenseal as ts

from core.crypto import ckks
from tests.core.inprocess_owner import InProcessOwner


@pytest.fixture(scope="module")
def owner() -> ts.Context:
    """The data owner's context (holds the secret key)."""
    return ckks.create_context("default-128")


@pytest.fixture(scope="module")
def public_bytes(owner: ts.Context) -> bytes:
    """What the owner hands the worker: the context without its secret key."""
    return ckks.public_context_bytes(owner)


@pytest.fixture(scope="module")
def worker(public_bytes: bytes) -> ts.Context:
    """The worker's context, loaded from the public bytes."""
    return ckks.load_public_context(public_bytes)


@pytest.fixture(scope="module")
def inproc(
    owner: ts.Context, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> InProcessOwner:
    """A data owner driving jobs through the worker's handlers in this process, with ``owner``'s keys."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    return InProcessOwner(Path(tmp_path_factory.mktemp(f"{name}-owner")), ctx=owner)
