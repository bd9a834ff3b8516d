"""Shared pieces of the CKKS handler tests: owner contexts, a worker with the PQC operations, a client.

Everything is real: a nats-server (session fixture), the worker runtime with its compute pool, the
local store on disk, TenSEAL. Contexts are small: ``default-128`` (N=8192, depth 2) for everything but
PPLR, which needs 6 levels and Galois keys: N=8192 with [31] + [26]*6 + [31] (218 bits, the 128-bit
bound) instead of the ``ml-128`` profile's N=16384 and 400 MB of Galois keys. Its precision is only
~1e-3, so PPLR results are compared tightly with the core run on the same ciphertexts and loosely with
plaintext.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import numpy as np
import tenseal as ts
from nats.aio.client import Client

from core.crypto import ckks
from schemas import subjects
from tests.conftest import settings_for
from tests.ops import command, request
from worker.handlers.pqc import OPERATIONS, PRELOAD_MODULES
from worker.runtime.registry import Operation, Registry
from worker.runtime.service import WorkerService
from worker.storage import LocalStore

PRELOAD = PRELOAD_MODULES
TIMEOUT = 120.0


@functools.cache
def owner_context() -> ts.Context:
    """The data owner's private context for the data-mining operations (N=8192, 2 levels)."""
    return ckks.create_context("default-128")


@functools.cache
def pplr_context() -> ts.Context:
    """A small private context deep enough for one PPLR step (6 levels), with Galois keys."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[31, *([26] * 6), 31])
    ctx.global_scale = 2**26
    ctx.generate_galois_keys()
    return ctx


def registry(extra: Iterable[Operation] = ()) -> Registry:
    reg = Registry([*OPERATIONS, *extra])
    reg.preload(*PRELOAD)
    return reg


class WorkerError(AssertionError):
    def __init__(self, op: str, error: dict[str, Any]) -> None:
        super().__init__(f"{op}: {error}")
        self.error = error


@dataclass
class PqcWorker:
    """A running worker plus what a data owner needs to talk to it."""

    service: WorkerService
    store: LocalStore
    nc: Client
    keys_dir: Path

    async def call(
        self, op: str, params: dict[str, Any], *, id: str | None = None, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        body = command(op, params)
        if id is not None:
            body["id"] = id
        subject = subjects.node_cmd(self.service.prefix, self.service.node_id, op)
        reply, _ = await request(self.nc, subject, body, timeout=timeout)
        return reply

    async def ok(self, op: str, params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        reply = await self.call(op, params, **kwargs)
        if not reply["ok"]:
            raise WorkerError(op, reply["error"])
        return reply["result"]

    async def error(self, op: str, params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        reply = await self.call(op, params, **kwargs)
        assert not reply["ok"], f"{op} unexpectedly succeeded: {reply['result']}"
        return reply["error"]

    # -- data owner's storage helpers (the owner writes with its own store handle in real life)
    async def put_ciphertexts(
        self, key: str, vectors: Sequence[ts.CKKSVector], shape: Sequence[int], num_chunks: int = 2
    ) -> None:
        await self.store.put_bytes_list(
            key, ckks.serialize(vectors), num_chunks=num_chunks, shape=list(shape)
        )

    async def get_ciphertexts(self, ctx: ts.Context, key: str) -> list[ts.CKKSVector]:
        return ckks.deserialize(ctx, await self.store.get_bytes_list(key))


async def start_pqc_worker(
    nats_url: str,
    directory: Path,
    *,
    keys_ctx: ts.Context | None = None,
    galois: bool = False,
    extra: Iterable[Operation] = (),
    wrap_store: Callable[[LocalStore], Any] | None = None,
    capacity: int = 1,
    **overrides: Any,
) -> PqcWorker:
    """Start a worker serving the PQC operations; ``keys_ctx`` → public key files in its KEYS_PATH."""
    keys_dir = directory / "keys"
    if keys_ctx is not None:
        ckks.write_public_keys(keys_ctx, keys_dir, galois=galois)
    settings = settings_for(
        nats_url,
        directory,
        keys_path=str(keys_dir),
        worker_capacity=capacity,
        node_id=f"pqc-{uuid.uuid4().hex[:8]}",
        **overrides,
    )
    store = LocalStore(directory / "css")
    service = WorkerService(
        settings,
        registry(extra),
        store=wrap_store(store) if wrap_store else store,
        connect_options={"reconnect_time_wait": 0.2},
    )
    await service.start()
    nc = await nats.connect(nats_url, name="pqc-owner")
    return PqcWorker(service=service, store=store, nc=nc, keys_dir=keys_dir)


async def stop_pqc_worker(worker: PqcWorker) -> None:
    await worker.nc.close()
    await worker.service.stop(grace=2.0)
    await worker.store.aclose()


def blobs(n: int, a: int, k: int, seed: int, spread: float = 6.0) -> np.ndarray:
    """Well-separated Gaussian blobs, records shuffled (first k rows are the initial centroids)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-spread, spread, size=(k, a))
    labels = rng.integers(0, k, size=n)
    return centres[labels] + rng.normal(0, 0.3, size=(n, a))


def close(a: Any, b: Any, tol: float) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=tol, rtol=0))


def nbytes(items: Sequence[bytes]) -> int:
    return sum(len(i) for i in items)


__all__ = [
    "PRELOAD",
    "PqcWorker",
    "WorkerError",
    "blobs",
    "close",
    "nbytes",
    "owner_context",
    "pplr_context",
    "registry",
    "start_pqc_worker",
    "stop_pqc_worker",
]
