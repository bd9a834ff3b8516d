"""What every driver shares: the port, the owner's store and keys, and storage helpers."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tenseal as ts

from dataowner.errors import BadResult
from dataowner.job import Job
from dataowner.keys import OwnerKeys
from dataowner.port import WorkerPort, new_id
from dataowner.progress import ProgressCallback
from schemas import keys
from schemas.operations import LabelsResult, Op, Params, Result

__all__ = ["Driver", "DriverConfig", "columns", "grid"]

L = TypeVar("L", bound=LabelsResult)
R = TypeVar("R", bound=Result)
T = TypeVar("T")


@dataclass(frozen=True)
class DriverConfig:
    """Client-wide settings a driver applies to every job.

    ``namespace`` isolates job state keys; ``num_chunks`` chunks uploads and (passed on) results;
    ``node`` targets one worker (None: the pool); ``deadline_s`` is each command's deadline.
    """

    namespace: str | None = None
    num_chunks: int | None = None
    node: str | None = None
    deadline_s: float | None = None
    progress: ProgressCallback | None = None


def grid(items: list[Any], cols: int, op: str = "result") -> list[list[Any]]:
    """A flat row-major list -> rows of ``cols`` items (how ciphertext matrices are stored)."""
    if cols < 1 or len(items) % cols:
        raise BadResult(op, f"{len(items)} ciphertexts do not fill rows of {cols}")
    return [list(items[i : i + cols]) for i in range(0, len(items), cols)]


class Driver:
    """Base of the protocol drivers: jobs, storage helpers, the common command fields."""

    def __init__(self, port: WorkerPort, store: Any, owner_keys: OwnerKeys, config: DriverConfig) -> None:
        self.port = port
        self.store = store
        self.keys = owner_keys
        self.config = config

    # ------------------------------------------------------------------ jobs
    def job(
        self, op: str, dataset_id: str, n: int, max_iterations: int, progress: ProgressCallback | None
    ) -> Job:
        return Job(
            self.port,
            self.store,
            op,
            dataset_id,
            n,
            max_iterations,
            progress if progress is not None else self.config.progress,
            node=self.config.node,
            deadline_s=self.config.deadline_s,
        )

    def start(
        self, op: Op, data: np.ndarray, dataset_id: str | None, progress: ProgressCallback | None,
        rounds: int = 1,
    ) -> tuple[np.ndarray, str, Job]:
        """How a job on one dataset starts: the data as float64, its id (given, or a new one) and the
        job (one record a row)."""
        x = np.asarray(data, dtype=np.float64)
        ds = self.dataset_id(dataset_id)
        return x, ds, self.job(op.value, ds, x.shape[0], rounds, progress)

    async def one_round(
        self, job: Job, params: Params, expect: type[R], fetch: Callable[[R], Awaitable[T]]
    ) -> tuple[R, T]:
        """The one round of a single-command job: the call and ``fetch`` (the download of what it
        left), both inside the round (the round's seconds are what the owner waited for the answer)."""
        job.prepared()
        with job.round():
            result = await job.call(params, expect)
            return result, await fetch(result)

    async def labels_round(self, job: Job, params: Params, expect: type[L]) -> tuple[L, np.ndarray]:
        """:meth:`one_round` where what the command left is a label vector."""
        return await self.one_round(job, params, expect, functools.partial(self.labels, job))

    def ns(self, namespace: str | None) -> str | None:
        return namespace if namespace is not None else self.config.namespace

    def common(self, namespace: str | None = None) -> dict[str, Any]:
        """``namespace`` and ``num_chunks`` of every command (omitted when unset)."""
        out: dict[str, Any] = {}
        ns = self.ns(namespace)
        if ns is not None:
            out["namespace"] = ns
        if self.config.num_chunks:
            out["num_chunks"] = self.config.num_chunks
        return out

    @staticmethod
    def dataset_id(dataset_id: str | None) -> str:
        return keys.check_key(dataset_id) if dataset_id else new_id("ds")

    # ------------------------------------------------------------------ storage
    def chunks(self, rows: int) -> int:
        return max(1, min(self.config.num_chunks or 1, rows))

    async def put_matrix(self, job: Job | None, key: str, array: np.ndarray) -> None:
        arr = np.ascontiguousarray(array)
        store = job.store if job is not None else self.store
        await store.put_ndarray(key, arr, num_chunks=self.chunks(arr.shape[0]))

    async def put_ciphertexts(self, job: Job | None, key: str, blobs: list[bytes], shape: list[int]) -> None:
        store = job.store if job is not None else self.store
        await store.put_bytes_list(key, blobs, num_chunks=self.chunks(len(blobs)), shape=shape)

    async def get_vectors(self, job: Job, key: str, profile: str) -> list[ts.CKKSVector]:
        from core.crypto import ckks

        blobs = await job.store.get_bytes_list(key)
        with job.owner():
            return ckks.deserialize(self.keys.ckks(profile), blobs)

    async def labels(self, job: Job, result: LabelsResult) -> np.ndarray:
        """The label vector of a result, downloading it when the worker stored it instead."""
        if result.label_vector is not None:
            return np.asarray(result.label_vector, dtype=np.int64)
        if not result.label_vector_id:
            raise BadResult(job.report.op, "result carries neither label_vector nor its id")
        return np.asarray(await job.store.get_ndarray(result.label_vector_id), dtype=np.int64).reshape(-1)

    async def delete(self, *names: str) -> None:
        """Best-effort removal of objects (job state the owner no longer needs)."""
        for key in names:
            with contextlib.suppress(Exception):
                await self.store.delete(key)

    # ------------------------------------------------------------------ uploads
    async def upload_liu(
        self, job: Job | None, dataset_id: str, data: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[int, ...]:
        """Liu-encrypt ``data`` (n x a) and store it as ``encrypted<dataset_id>`` (n x a x m)."""
        from core.crypto import liu

        with job.owner() if job is not None else contextlib.nullcontext():
            enc = liu.encrypt(self.keys.liu, np.asarray(data, dtype=np.float64), rng)
        await self.put_matrix(job, keys.encrypted(dataset_id), enc)
        return enc.shape

    async def upload_ckks_rows(
        self, job: Job | None, key: str, data: np.ndarray, profile: str = "default-128"
    ) -> int:
        """CKKS-encrypt each row (one ciphertext per record) and store the list under ``key``."""
        from core.crypto import ckks

        x = np.asarray(data, dtype=np.float64)
        with job.owner() if job is not None else contextlib.nullcontext():
            blobs = ckks.serialize(ckks.encrypt_rows(self.keys.ckks(profile), x))
        await self.put_ciphertexts(job, key, blobs, list(x.shape))
        return len(blobs)


def columns(ctx: ts.Context, x: np.ndarray) -> tuple[list[bytes], list[int]]:
    """Column-packed ciphertexts flattened row-major, with the ``[blocks, a]`` shape storage records."""
    from core.crypto import ckks

    blocks = ckks.encrypt_columns(ctx, x)
    return [v.serialize() for block in blocks for v in block], [len(blocks), x.shape[1]]
