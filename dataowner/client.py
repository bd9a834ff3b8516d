"""The data owner's client: encrypt and upload data, drive every protocol over NATS, decrypt results.

This is also the reference Manager: it builds Commands with ``schemas``, sends them to a node
(``<p>.worker.<node>.cmd.<op>``) or to the pool (``<p>.pool.cmd.<op>``), and keeps all multi-round
state where the contract says it lives (storage, under ``schemas.keys`` names). The client holds the
secret keys (:class:`dataowner.keys.OwnerKeys`); the worker only ever sees ciphertexts, UDMs, shifts
and labels (see each algorithm module in ``core.algorithms`` for what exactly leaks).

Every driver returns a :class:`JobReport`. Iterative protocols stop when the decrypted shift has
max |S| <= ``tolerance`` (the owner's verdict; the converged round's step 2 is skipped) or after
``max_iterations`` rounds. Because every round's state is in storage, any worker may serve any round,
so the pool is as good a target as a fixed node.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import pqc_dataowner
from core.algorithms import dbskmeans as core_dbskmeans
from core.algorithms import pqc_kmeans, pqc_sknn
from core.algorithms import skmeans as core_skmeans
from core.algorithms import sknn as core_sknn
from core.algorithms.convergence import max_abs_shift
from core.algorithms.udm import build_udm
from core.crypto import ckks, fdhope, liu
from core.dataowner import distance_matrix, threshold
from dataowner.keys import OwnerKeys
from dataowner.progress import ProgressCallback, ProgressEvent
from schemas import codec, keys, subjects
from schemas.envelopes import PROTOCOL_VERSION, Reply
from schemas.operations import ClusteringStatus, Op

__all__ = [
    "DataOwnerClient",
    "JobReport",
    "NoWorkerError",
    "WorkerError",
    "new_id",
]


def new_id(prefix: str = "") -> str:
    """A short random id that is a valid storage key, job id and subject token."""
    return f"{prefix}{secrets.token_hex(6)}"


class WorkerError(RuntimeError):
    """The worker answered with an error Reply (``code``/``type``/``retryable`` as on the wire)."""

    def __init__(self, op: str, code: int, type_: str, message: str, retryable: bool, node: str = ""):
        super().__init__(f"{op}: {code} {type_}: {message}" + (f" (node {node})" if node else ""))
        self.op = op
        self.code = code
        self.type = type_
        self.message = message
        self.retryable = retryable
        self.node = node


class NoWorkerError(RuntimeError):
    """Nobody is subscribed to the command subject (no worker running, wrong prefix or node id)."""


@dataclass
class JobReport:
    """What one job did and how long it took.

    ``total_seconds`` covers everything from the first byte encrypted to the last label decoded;
    ``prepare_seconds`` the local part before the first command (encryption, UDM, uploads);
    ``per_round_seconds`` one entry per protocol round as seen by the owner (commands, downloads,
    decryption, uploads); ``worker_seconds`` the sum of the workers' own ``timings.total``.
    ``rounds`` details each round: ``seconds`` (owner's view), ``request`` (time inside the
    request/reply calls), and the workers' ``worker``/``compute``/``storage``/``queued`` seconds, so
    ``request - worker`` is the messaging overhead and ``seconds - request`` the owner's own work.
    """

    op: str
    job_id: str
    dataset_id: str
    n: int
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    iterations: int = 1
    converged: bool | None = None
    per_round_seconds: list[float] = field(default_factory=list)
    shifts: list[float] = field(default_factory=list)
    total_seconds: float = 0.0
    prepare_seconds: float = 0.0
    worker_seconds: float = 0.0
    storage_seconds: float = 0.0
    commands: int = 0
    nodes: list[str] = field(default_factory=list)
    rounds: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> np.ndarray | None:
        """Labels for clustering, predictions for classification/regression."""
        return self.labels if self.labels is not None else self.predictions

    def summary(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "job_id": self.job_id,
            "dataset_id": self.dataset_id,
            "n": self.n,
            "iterations": self.iterations,
            "converged": self.converged,
            "total_seconds": round(self.total_seconds, 4),
            "prepare_seconds": round(self.prepare_seconds, 4),
            "worker_seconds": round(self.worker_seconds, 4),
            "per_round_seconds": [round(s, 4) for s in self.per_round_seconds],
            "nodes": self.nodes,
        }


def _grid(items: Sequence[Any], cols: int) -> list[list[Any]]:
    """A flat row-major list -> rows of ``cols`` items (how ciphertext matrices are stored)."""
    if cols < 1 or len(items) % cols:
        raise WorkerError(
            "result", 500, "BAD_RESULT", f"{len(items)} ciphertexts do not fill rows of {cols}", False
        )
    return [list(items[i : i + cols]) for i in range(0, len(items), cols)]


def _columns(ctx: Any, x: np.ndarray) -> tuple[list[bytes], list[int]]:
    """Column-packed ciphertexts flattened row-major, with the ``[blocks, a]`` shape storage records."""
    blocks = ckks.encrypt_columns(ctx, x)
    return [v.serialize() for block in blocks for v in block], [len(blocks), x.shape[1]]


def _clustering_input(data: np.ndarray, k: int, max_iterations: int | None = None) -> np.ndarray:
    """Reject bad input before anything is encrypted or uploaded: the worker would only fail later."""
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"data must be n x a, got shape {x.shape}")
    if max_iterations is not None and max_iterations < 1:
        raise ValueError("max_iterations must be >= 1")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, n={x.shape[0]}], got {k}")
    return x


def _lr_keys(train_id: str) -> tuple[str, str, str, str]:
    """Where LR training leaves X, y and the model: prediction reads the same names."""
    return f"{train_id}x", f"{train_id}y", f"{train_id}weights", f"{train_id}bias"


def _pplr_model_keys(train_id: str) -> tuple[str, str]:
    """Where PPLR's encrypted weights and bias live: training and prediction must agree."""
    return f"{train_id}encryptedweights", f"{train_id}encryptedbias"


class _Job:
    """Bookkeeping of one running job: timing, progress events, reply accounting."""

    def __init__(
        self,
        client: DataOwnerClient,
        op: str,
        dataset_id: str,
        n: int,
        max_iterations: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.client = client
        self.job_id = new_id("job")
        self.started = time.perf_counter()
        self.report = JobReport(op=op, job_id=self.job_id, dataset_id=dataset_id, n=n)
        self.max_iterations = max_iterations
        self.progress = progress if progress is not None else client.progress
        self._round: dict[str, float] = {}

    def emit(self, phase: str, iteration: int = 0, shift: float | None = None, message: str = "") -> None:
        if self.progress is None:
            return
        self.progress(
            ProgressEvent(
                op=self.report.op,
                job_id=self.job_id,
                phase=phase,
                iteration=iteration,
                max_iterations=self.max_iterations,
                shift=shift,
                elapsed=time.perf_counter() - self.started,
                message=message,
            )
        )

    def prepared(self) -> None:
        self.report.prepare_seconds = time.perf_counter() - self.started
        self.emit("prepared")

    @contextlib.contextmanager
    def round(self) -> Iterator[None]:
        """One protocol round as the owner sees it, so ``rounds`` can split owner, bus and worker time.

        A failing round records nothing: the exception ends the job and its report.
        """
        started = time.perf_counter()
        self._round = {
            "commands": 0,
            "request": 0.0,
            "worker": 0.0,
            "compute": 0.0,
            "storage": 0.0,
            "queued": 0.0,
        }
        yield
        elapsed = time.perf_counter() - started
        self.report.per_round_seconds.append(elapsed)
        self.report.rounds.append({"seconds": elapsed, **self._round})

    async def call(self, params: dict[str, Any]) -> dict[str, Any]:
        """Send one command of this job's operation and account for the worker's timings."""
        sent = time.perf_counter()
        reply = await self.client.request(self.report.op, params, job_id=self.job_id)
        timings = reply.timings
        self.report.commands += 1
        self.report.worker_seconds += timings.total
        self.report.storage_seconds += timings.storage_get + timings.storage_put
        if self._round:
            self._round["commands"] += 1
            self._round["request"] += time.perf_counter() - sent
            self._round["worker"] += timings.total
            self._round["compute"] += timings.compute
            self._round["storage"] += timings.storage_get + timings.storage_put
            self._round["queued"] += timings.queued
        if reply.node_id not in self.report.nodes:
            self.report.nodes.append(reply.node_id)
        assert reply.result is not None
        return reply.result

    def finish(self, phase: str = "done") -> JobReport:
        self.report.total_seconds = time.perf_counter() - self.started
        self.emit(phase, self.report.iterations, self.report.shifts[-1] if self.report.shifts else None)
        return self.report


@dataclass(frozen=True)
class _SecureKMeans:
    """What sets the four secure k-means protocols apart; they share the rounds.

    ``profile``: the records are CKKS rows under this profile (else Liu ciphertexts). ``sensitivity``:
    the UDM and every shift travel FDH-OPE-encrypted (double blind; else the worker sees them).
    ``refresh_udm`` (double blind only): the owner uploads a fresh OPE(D - c) each round instead of
    OPE(S) for step 2, so the UDM cannot drift (OPE is not additive).
    """

    op: Op
    compact_udm: bool = True
    profile: str | None = None
    sensitivity: float | None = None
    refresh_udm: bool = False


class DataOwnerClient:
    """Async client of the Rory worker for a data owner.

    ``nats``: a server URL, a list of URLs, or an already connected ``nats.aio.client.Client`` (not
    closed by :meth:`close`). ``store``: the :class:`worker.storage.base.ObjectStore` the worker uses
    (same bucket). ``node``: send commands to ``<prefix>.worker.<node>.cmd.<op>``; ``None`` = the pool.
    ``namespace`` isolates this client's job state (UDM, centroids, shifts...) from other jobs on
    the same datasets. ``num_chunks``: chunks for uploads and (passed on) for the worker's results.
    """

    def __init__(
        self,
        nats: str | Sequence[str] | Any,
        store: Any,
        keys: OwnerKeys,
        *,
        prefix: str = "rory",
        node: str | None = None,
        namespace: str | None = None,
        timeout: float = 300.0,
        num_chunks: int | None = None,
        retries: int = 3,
        progress: ProgressCallback | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        subjects.pool_cmd(prefix, "probe")  # validates the prefix early
        if node is not None:
            subjects.node_cmd(prefix, node, "probe")
        self._nats_arg = nats
        self._nc: Any = None if isinstance(nats, str | list | tuple) else nats
        self._owns_nc = self._nc is None
        self.store = store
        self.keys = keys
        self.prefix = prefix
        self.node = node
        self.namespace = namespace
        self.timeout = timeout
        self.num_chunks = num_chunks
        self.retries = retries
        self.progress = progress
        self._connect_options = connect_options or {}

    # ------------------------------------------------------------------ connection
    async def connect(self) -> DataOwnerClient:
        if self._nc is None:
            import nats

            servers = [self._nats_arg] if isinstance(self._nats_arg, str) else list(self._nats_arg)
            options = {"connect_timeout": 5, "max_reconnect_attempts": 5, **self._connect_options}
            self._nc = await nats.connect(servers=servers, **options)
        return self

    async def close(self) -> None:
        if self._nc is not None and self._owns_nc:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    async def __aenter__(self) -> DataOwnerClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subject(self, op: str, node: str | None = None) -> str:
        target = node if node is not None else self.node
        return subjects.node_cmd(self.prefix, target, op) if target else subjects.pool_cmd(self.prefix, op)

    async def request(
        self,
        op: str | Op,
        params: dict[str, Any],
        *,
        job_id: str | None = None,
        timeout: float | None = None,
        node: str | None = None,
    ) -> Reply:
        """Send one Command and return the successful Reply; raise :class:`WorkerError` otherwise.

        Retryable errors (503 busy / storage unavailable) are retried with back-off, re-sending the
        same command id (the contract's retry rule), up to ``retries`` times.
        """
        if self._nc is None:
            await self.connect()
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        op_name = op.value if isinstance(op, Op) else op
        command_id = new_id("cmd")
        subject = self.subject(op_name, node)
        clean = {k: v for k, v in params.items() if v is not None}
        if self.namespace and "namespace" not in clean:
            clean["namespace"] = self.namespace
        if self.num_chunks and "num_chunks" not in clean:
            clean["num_chunks"] = self.num_chunks
        limit = timeout or self.timeout
        for attempt in range(self.retries + 1):
            command = {
                "v": PROTOCOL_VERSION,
                "id": command_id,
                "job_id": job_id or command_id,
                "op": op_name,
                "ts": time.time(),
                "params": clean,
                "deadline_s": limit,
            }
            try:
                msg = await self._nc.request(
                    subject,
                    codec.encode_msgpack(command),
                    # a little longer than the deadline, so the worker's 504 arrives before we give up
                    timeout=limit + 5.0,
                    headers={codec.CONTENT_TYPE: codec.MSGPACK},
                )
            except NoRespondersError:
                if attempt < self.retries:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                raise NoWorkerError(f"no worker is listening on {subject!r}") from None
            except NatsTimeout:
                raise WorkerError(op_name, 504, "TIMEOUT", f"no reply within {limit:.0f} s", True) from None
            data = codec.decode(msg.data, json_mode=codec.is_json(msg.headers), max_bytes=64 * 1024 * 1024)
            reply = Reply.model_validate(data)
            if reply.ok:
                return reply
            err = reply.error
            assert err is not None
            if err.retryable and attempt < self.retries:
                await asyncio.sleep(0.25 * 2**attempt)
                continue
            raise WorkerError(op_name, err.code, err.type, err.message, err.retryable, reply.node_id)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ storage helpers
    def _chunks(self, rows: int) -> int:
        return max(1, min(self.num_chunks or 1, rows))

    async def put_matrix(self, key: str, array: np.ndarray) -> None:
        arr = np.ascontiguousarray(array)
        await self.store.put_ndarray(key, arr, num_chunks=self._chunks(arr.shape[0]))

    async def _put_ciphertexts(self, key: str, blobs: list[bytes], shape: list[int]) -> None:
        await self.store.put_bytes_list(key, blobs, num_chunks=self._chunks(len(blobs)), shape=shape)

    async def _get_vectors(self, key: str, profile: str) -> list[Any]:
        return ckks.deserialize(self.keys.ckks(profile), await self.store.get_bytes_list(key))

    async def _labels(self, result: dict[str, Any]) -> np.ndarray:
        """The label vector of a result, downloading it when the worker stored it instead."""
        if result.get("label_vector") is not None:
            return np.asarray(result["label_vector"], dtype=np.int64)
        key = result.get("label_vector_id")
        if not key:
            raise WorkerError(
                "labels", 500, "BAD_RESULT", "result carries neither label_vector nor its id", False
            )
        return np.asarray(await self.store.get_ndarray(key), dtype=np.int64).reshape(-1)

    async def delete(self, *keys_: str) -> None:
        """Best-effort removal of objects (job state the owner no longer needs)."""
        for key in keys_:
            with contextlib.suppress(Exception):
                await self.store.delete(key)

    def _ns(self, namespace: str | None) -> str | None:
        return namespace if namespace is not None else self.namespace

    @staticmethod
    def _dataset_id(dataset_id: str | None) -> str:
        return keys.check_key(dataset_id) if dataset_id else new_id("ds")

    # ------------------------------------------------------------------ plaintext clustering
    async def kmeans(
        self,
        data: np.ndarray,
        k: int,
        *,
        dataset_id: str | None = None,
        max_iterations: int = 300,
        tolerance: float = 1e-4,
        upload: bool = True,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext k-means on the worker (Euclidean, first-k initialisation): one command."""
        x = np.asarray(data, dtype=np.float64)
        ds = self._dataset_id(dataset_id)
        job = _Job(self, Op.KMEANS.value, ds, x.shape[0], 1, progress)
        if upload:
            await self.store.put_blob(ds, x)
        job.prepared()
        with job.round():
            result = await job.call(
                {"plaintext_matrix_id": ds, "k": k, "max_iterations": max_iterations, "tolerance": tolerance}
            )
            job.report.labels = await self._labels(result)
        job.report.iterations = int(result.get("iterations", 1))
        return job.finish()

    async def nnc(
        self,
        data: np.ndarray,
        *,
        threshold_value: float = -1,
        dataset_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext NNC: the owner uploads the Manhattan distance matrix ``<P>dm``; one command."""
        x = np.asarray(data, dtype=np.float64)
        ds = self._dataset_id(dataset_id)
        job = _Job(self, Op.NNC.value, ds, x.shape[0], 1, progress)
        await self.put_matrix(keys.distance_matrix(ds), distance_matrix(x))
        job.prepared()
        with job.round():
            result = await job.call({"plaintext_matrix_id": ds, "threshold": threshold_value})
            job.report.labels = await self._labels(result)
        job.report.extra["threshold"] = result.get("threshold")
        return job.finish()

    async def dbsnnc(
        self,
        data: np.ndarray,
        *,
        threshold_value: float = -1,
        dataset_id: str | None = None,
        sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """DBSNNC: FDH-OPE key from the DM, threshold on the PLAINTEXT DM, OPE(DM) and OPE(threshold)."""
        x = np.asarray(data, dtype=np.float64)
        ds = self._dataset_id(dataset_id)
        job = _Job(self, Op.DBSNNC.value, ds, x.shape[0], 1, progress)
        dm = distance_matrix(x)
        fkey = fdhope.generate_key(dm, sensitivity)
        self.keys.save_fdhope(f"{ds}-dm", fkey)
        theta = threshold(dm, threshold_value)
        await self.put_matrix(keys.encrypted_distance_matrix(ds), fdhope.encrypt(fkey, dm))
        job.prepared()
        with job.round():
            result = await job.call(
                {"plaintext_matrix_id": ds, "encrypted_threshold": fdhope.encrypt_threshold(fkey, theta)}
            )
            job.report.labels = await self._labels(result)
        job.report.extra["threshold"] = theta
        return job.finish()

    # ------------------------------------------------------------------ datasets
    async def upload(
        self,
        dataset_id: str,
        data: np.ndarray,
        *,
        scheme: str = "liu",
        labels: np.ndarray | None = None,
        profile: str = "default-128",
    ) -> str:
        """Store a dataset under Rory's names and return the key of the (encrypted) matrix.

        ``scheme``: ``plain`` -> ``<P>`` (chunked ndarray); ``liu`` -> ``encrypted<P>`` (n x a x m);
        ``ckks-rows`` -> ``encrypted<P>`` (one ciphertext per record, shape [n, a]);
        ``ckks-columns`` -> ``encrypted<P>`` (column-packed, shape [blocks, a]). ``labels`` go to
        ``<P>labels`` as 1 x n (the KNN/SKNN model layout).
        """
        ds = keys.check_key(dataset_id)
        x = np.asarray(data, dtype=np.float64)
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"data must be a non-empty n x a matrix, got shape {x.shape}")
        if scheme == "plain":
            target = ds
            await self.put_matrix(ds, x)
        elif scheme == "liu":
            target = keys.encrypted(ds)
            await self.upload_liu(ds, x)
        elif scheme == "ckks-rows":
            target = keys.encrypted(ds)
            await self.upload_ckks_rows(target, x, profile)
        elif scheme == "ckks-columns":
            target = keys.encrypted(ds)
            await self._put_ciphertexts(target, *_columns(self.keys.ckks(profile), x))
        else:
            raise ValueError(f"unknown scheme {scheme!r}; use plain, liu, ckks-rows or ckks-columns")
        if labels is not None:
            lab = np.asarray(labels).reshape(1, -1).astype(np.int64)
            if lab.size != x.shape[0]:
                raise ValueError(f"{lab.size} labels for {x.shape[0]} rows")
            await self.store.put_ndarray(keys.labels(ds), lab, num_chunks=1)
        return target

    async def upload_liu(self, dataset_id: str, data: np.ndarray) -> tuple[int, ...]:
        """Liu-encrypt ``data`` (n x a) and store it as ``encrypted<dataset_id>`` (n x a x m)."""
        enc = liu.encrypt(self.keys.liu, np.asarray(data, dtype=np.float64))
        await self.put_matrix(keys.encrypted(dataset_id), enc)
        return enc.shape

    async def upload_ckks_rows(self, key: str, data: np.ndarray, profile: str = "default-128") -> int:
        """CKKS-encrypt each row (one ciphertext per record) and store the list under ``key``."""
        x = np.asarray(data, dtype=np.float64)
        blobs = ckks.serialize(ckks.encrypt_rows(self.keys.ckks(profile), x))
        await self._put_ciphertexts(key, blobs, list(x.shape))
        return len(blobs)

    # ------------------------------------------------------------------ secure k-means
    async def skmeans(
        self,
        data: np.ndarray,
        k: int,
        *,
        dataset_id: str | None = None,
        max_iterations: int = 10,
        tolerance: float = 1e-6,
        compact_udm: bool = True,
        upload: bool = True,
        namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Secure k-means over Liu ciphertexts with a plaintext UDM (reference 5.2 semantics).

        ``compact_udm`` uploads the n x k x a UDM (all the algorithm reads) instead of n x n x a.
        ``upload=False`` reuses ``encrypted<dataset_id>`` already in storage (the UDM is always
        rebuilt: step 2 overwrites it). The worker learns the UDM, every shift and the labels.
        """
        scheme = _SecureKMeans(Op.SKMEANS, compact_udm)
        return await self._secure_kmeans(
            scheme, data, k, dataset_id, max_iterations, tolerance, upload, namespace, progress
        )

    async def dbskmeans(
        self,
        data: np.ndarray,
        k: int,
        *,
        dataset_id: str | None = None,
        max_iterations: int = 10,
        tolerance: float = 1e-6,
        compact_udm: bool = True,
        upload: bool = True,
        namespace: str | None = None,
        sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
        progress: ProgressCallback | None = None,
        refresh_udm: bool = False,
    ) -> JobReport:
        """Double-blind SKMeans: the UDM and every shift travel FDH-OPE-encrypted.

        FDH-OPE is not additive, so the worker's step-2 update OPE(U) + OPE(S) drifts from OPE(U + S)
        round after round (on data with many attributes the clusters can collapse). With
        ``refresh_udm`` the owner, who knows the data and every centroid, uploads a fresh
        OPE(D - c) instead and skips step 2: same kind of values for the worker, no drift.
        """
        scheme = _SecureKMeans(Op.DBSKMEANS, compact_udm, sensitivity=sensitivity, refresh_udm=refresh_udm)
        return await self._secure_kmeans(
            scheme, data, k, dataset_id, max_iterations, tolerance, upload, namespace, progress
        )

    async def pqc_skmeans(
        self,
        data: np.ndarray,
        k: int,
        *,
        dataset_id: str | None = None,
        max_iterations: int = 10,
        tolerance: float = 1e-4,
        profile: str = "default-128",
        upload: bool = True,
        namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """SKMeans over CKKS row ciphertexts (one per record) with a plaintext UDM.

        ``tolerance`` must sit above the CKKS noise floor (~1e-6 at scale 2^40). The worker's
        ``KEYS_PATH`` must hold the public material of ``profile`` (:meth:`OwnerKeys.export_public`).
        """
        scheme = _SecureKMeans(Op.PQC_SKMEANS, profile=profile)
        return await self._secure_kmeans(
            scheme, data, k, dataset_id, max_iterations, tolerance, upload, namespace, progress
        )

    async def pqc_dbskmeans(
        self,
        data: np.ndarray,
        k: int,
        *,
        dataset_id: str | None = None,
        max_iterations: int = 10,
        tolerance: float = 1e-4,
        profile: str = "default-128",
        upload: bool = True,
        namespace: str | None = None,
        sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
        progress: ProgressCallback | None = None,
        refresh_udm: bool = False,
    ) -> JobReport:
        """DBSKMeans over CKKS rows: FDH-OPE UDM, FDH-OPE re-encrypted shift every round.

        ``refresh_udm``: as in :meth:`dbskmeans`, a fresh OPE(D - c) each round instead of step 2.
        """
        scheme = _SecureKMeans(
            Op.PQC_DBSKMEANS, profile=profile, sensitivity=sensitivity, refresh_udm=refresh_udm
        )
        return await self._secure_kmeans(
            scheme, data, k, dataset_id, max_iterations, tolerance, upload, namespace, progress
        )

    async def _secure_kmeans(
        self,
        scheme: _SecureKMeans,
        data: np.ndarray,
        k: int,
        dataset_id: str | None,
        max_iterations: int,
        tolerance: float,
        upload: bool,
        namespace: str | None,
        progress: ProgressCallback | None,
    ) -> JobReport:
        """The rounds the four secure k-means protocols share.

        Only the owner can read the shift step 1 produces, so it decides convergence (and skips the
        converged round's step 2) and hands the shift back, FDH-OPE-sealed when double blind, for step 2.
        """
        x = _clustering_input(data, k, max_iterations)
        n, a = x.shape
        ns = self._ns(namespace)
        ds = self._dataset_id(dataset_id)
        job = _Job(self, scheme.op.value, ds, n, max_iterations, progress)
        fkey = await self._secure_kmeans_uploads(scheme, ds, ns, x, k, upload)
        job.emit("upload", message=f"{n}x{a} encrypted, UDM uploaded")
        job.prepared()

        base: dict[str, Any] = {"plaintext_matrix_id": ds, "k": k, "namespace": ns}
        if scheme.profile is None:
            base["m"] = self.keys.liu.m
        shift_key = keys.shift_matrix(ds, ns)
        status = ClusteringStatus.START
        labels: np.ndarray | None = None
        converged = False
        refresh = scheme.refresh_udm and fkey is not None
        centroids = x[:k].copy()  # round 1 starts from the first k records; c' = c - S each round
        it = 0
        for it in range(1, max_iterations + 1):
            with job.round():
                job.emit("step1", it)
                r1 = await job.call(
                    {**base, "step_index": 1, "clustering_status": int(status), "iterations": it - 1}
                )
                labels_task = asyncio.ensure_future(self._labels(r1))
                shift = await self._decrypt_shift(scheme, r1["encrypted_shift_matrix_id"], a)
                size = max_abs_shift(shift)
                job.report.shifts.append(size)
                converged = size <= tolerance
                labels = await labels_task
                if converged or it == max_iterations:
                    job.emit("converged" if converged else "max-iterations", it, size)
                    break
                if refresh:
                    assert fkey is not None
                    centroids = centroids - shift
                    fresh = core_dbskmeans.encrypt_udm(fkey, x[:, None, :] - centroids[None, :, :])
                    await self.put_matrix(keys.encrypted_udm(ds, ns), fresh)
                    job.emit("upload", it, size, message="fresh OPE(D - c) instead of step 2")
                    status = ClusteringStatus.WORK_IN_PROGRESS
                    continue
                sealed = shift if fkey is None else core_dbskmeans.encrypt_shift(fkey, shift)
                await self.store.put_ndarray(shift_key, sealed, num_chunks=1)
                job.emit("step2", it, size)
                step2 = {"step_index": 2, "is_zero": False, "iterations": it, "shift_matrix_id": shift_key}
                r2 = await job.call({**base, **step2})
            if int(r2.get("clustering_status", 2)) == ClusteringStatus.COMPLETED:
                break
            status = ClusteringStatus.WORK_IN_PROGRESS
        job.report.labels = labels
        job.report.iterations = it
        job.report.converged = converged
        return job.finish()

    async def _secure_kmeans_uploads(
        self, scheme: _SecureKMeans, ds: str, ns: str | None, x: np.ndarray, k: int, upload: bool
    ) -> fdhope.FdhopeKey | None:
        """Store what the first round reads; return the FDH-OPE key of a double-blind job.

        The UDM is always rebuilt (step 2 overwrites it). The CKKS variants also need the protocol's
        ``initsm`` (k encrypted zero rows, where round 1's centroids start). A double-blind key is
        fitted to this UDM's range, so it is made per job and kept with the owner's keys.
        """
        udm = build_udm(x, k if scheme.compact_udm else None)
        uploads: list[Awaitable[Any]] = []
        if scheme.profile is None:
            if upload:
                uploads.append(self.upload_liu(ds, x))
        else:
            ctx = self.keys.ckks(scheme.profile)
            if upload:
                uploads.append(self.upload_ckks_rows(keys.encrypted(ds), x, scheme.profile))
            zeros = ckks.serialize(pqc_dataowner.init_shift_matrix(ctx, k, x.shape[1]))
            uploads.append(
                self.store.put_bytes_list(keys.init_shift_matrix(ds, ns), zeros, num_chunks=1, shape=[k])
            )
        fkey = None
        if scheme.sensitivity is None:
            uploads.append(self.put_matrix(keys.udm(ds, ns), udm))
        else:
            fkey = fdhope.generate_key(udm, scheme.sensitivity)
            self.keys.save_fdhope(f"{ds}-udm", fkey)
            uploads.append(self.put_matrix(keys.encrypted_udm(ds, ns), core_dbskmeans.encrypt_udm(fkey, udm)))
        del udm
        await asyncio.gather(*uploads)
        return fkey

    async def _decrypt_shift(self, scheme: _SecureKMeans, key: str, width: int) -> np.ndarray:
        if scheme.profile is None:
            return core_skmeans.decrypt_shift(self.keys.liu, await self.store.get_ndarray(key))
        vectors = await self._get_vectors(key, scheme.profile)
        return ckks.decrypt_vectors(self.keys.ckks(scheme.profile), vectors, width=width)

    # ------------------------------------------------------------------ PQC k-means (labels only)
    async def pqc_kmeans(
        self,
        data: np.ndarray,
        k: int,
        *,
        dataset_id: str | None = None,
        max_iterations: int = 300,
        tolerance: float = 1e-4,
        profile: str = "default-128",
        namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Euclidean k-means over column-packed CKKS data where the worker learns only the labels.

        First-k initialisation and scikit-learn's Lloyd stopping rule (labels unchanged, or centre
        shift sum ||dC||^2 <= tolerance * mean(var(X)) followed by one more assignment), as
        :func:`core.pqc_dataowner.run_pqc_kmeans`. Each round is two commands; the owner decrypts
        the distances (argmin -> labels) and the masked sums (-> centroids).
        """
        x = _clustering_input(data, k)
        n, a = x.shape
        ns = self._ns(namespace)
        ds = self._dataset_id(dataset_id)
        job = _Job(self, Op.PQC_KMEANS.value, ds, n, max_iterations, progress)
        ctx = self.keys.ckks(profile)
        await self._put_ciphertexts(keys.encrypted(ds), *_columns(ctx, x))
        size = ckks.column_block_size(n, ckks.slot_count(ctx))
        job.prepared()

        tol_abs = float(np.mean(np.var(x, axis=0)) * tolerance)
        centroids = x[:k].copy()
        previous: np.ndarray | None = None
        labels = np.zeros(n, dtype=np.int64)
        converged = final_pass = False
        base = {"plaintext_matrix_id": ds, "k": k, "namespace": ns}
        cent_key, labels_key = keys.pqc_kmeans_centroids(ds, ns), keys.pqc_kmeans_labels(ds, ns)
        it = 0
        for it in range(1, max_iterations + 2):
            with job.round():
                cent = [
                    v.serialize() for row in pqc_kmeans.encrypt_centroids(ctx, centroids, size) for v in row
                ]
                await self.store.put_bytes_list(cent_key, cent, num_chunks=1, shape=[k, a])
                job.emit("step1", it)
                r1 = await job.call({**base, "step_index": 1, "iterations": it - 1})
                rows = _grid(await self._get_vectors(r1["encrypted_distances_id"], profile), k)
                labels = pqc_kmeans.labels_from_distances(ctx, rows, n)
                if previous is not None and np.array_equal(labels, previous):
                    converged = True
                if converged or final_pass or it == max_iterations + 1:
                    converged = converged or final_pass
                    break
                await self.store.put_ndarray(labels_key, labels, num_chunks=1)
                job.emit("step2", it)
                r2 = await job.call({**base, "step_index": 2, "iterations": it - 1})
                sums = _grid(await self._get_vectors(r2["encrypted_sums_id"], profile), a)
                new, _ = pqc_kmeans.centroids_from_sums(ctx, sums, labels, centroids)
                moved = float(((new - centroids) ** 2).sum())
                job.report.shifts.append(moved)
                final_pass = moved <= tol_abs
                centroids, previous = new, labels
        job.report.labels = labels
        job.report.iterations = it
        job.report.converged = converged
        job.report.extra["centroids"] = centroids
        return job.finish()

    # ------------------------------------------------------------------ classification
    async def knn(
        self,
        model: np.ndarray,
        model_labels: np.ndarray,
        records: np.ndarray,
        *,
        model_id: str | None = None,
        records_id: str | None = None,
        distance: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext 1-NN on the worker: model, labels (1 x n) and records uploaded in the clear."""
        mdl = np.asarray(model, dtype=np.float64)
        rec = np.asarray(records, dtype=np.float64)
        lab = np.asarray(model_labels).reshape(1, -1)
        mid, rid = self._dataset_id(model_id), self._dataset_id(records_id)
        job = _Job(self, Op.KNN_PREDICT.value, rid, rec.shape[0], 1, progress)
        await asyncio.gather(
            self.put_matrix(mid, mdl),
            self.store.put_ndarray(keys.labels(mid), lab, num_chunks=1),
            self.put_matrix(rid, rec),
        )
        job.prepared()
        with job.round():
            result = await job.call(
                {
                    "model_id": mid,
                    "records_test_id": rid,
                    "model_labels_shape": list(lab.shape),
                    "distance": distance,
                }
            )
            job.report.predictions = await self._labels(result)
        return job.finish()

    async def upload_sknn_model(
        self, model: np.ndarray, model_labels: np.ndarray, model_id: str | None = None
    ) -> str:
        """SKNN "training": Liu-encrypt the model to ``encrypted<M>`` and store labels at ``<M>labels``."""
        mid = self._dataset_id(model_id)
        lab = np.asarray(model_labels).reshape(1, -1).astype(np.int64)
        await asyncio.gather(
            self.upload_liu(mid, np.asarray(model, dtype=np.float64)),
            self.store.put_ndarray(keys.labels(mid), lab, num_chunks=1),
        )
        return mid

    async def sknn(
        self,
        model: np.ndarray,
        model_labels: np.ndarray,
        records: np.ndarray,
        *,
        model_id: str | None = None,
        records_id: str | None = None,
        distance: str = "EUCLIDEAN",
        upload_model: bool = True,
        namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Secure 1-NN (Liu): worker distances -> owner decrypts and takes argmin -> worker maps labels.

        ``distance="EUCLIDEAN"`` is exact (Liu products); ``"MANHATTAN"`` is the original's
        approximate component-wise |.|.
        """
        rec = np.asarray(records, dtype=np.float64)
        ns = self._ns(namespace)
        rid = self._dataset_id(records_id)
        job = _Job(self, Op.SKNN_PREDICT.value, rid, rec.shape[0], 2, progress)
        lab_shape = [1, int(np.asarray(model_labels).size)]
        if upload_model:
            mid, _ = await asyncio.gather(
                self.upload_sknn_model(model, model_labels, model_id), self.upload_liu(rid, rec)
            )
        else:
            if not model_id:
                raise ValueError("upload_model=False needs the model_id of an uploaded model")
            mid = model_id
            await self.upload_liu(rid, rec)

        async def nearest(r1: dict[str, Any]) -> np.ndarray:
            dist = await self.store.get_ndarray(r1["distances_id"])
            return core_sknn.nearest_from_distances(self.keys.liu, dist).reshape(-1, 1)

        base = {
            "model_id": mid,
            "records_test_id": rid,
            "m": self.keys.liu.m,
            "namespace": ns,
            "model_labels_shape": lab_shape,
            "distance": distance,
        }
        r1 = await self._secure_1nn(job, base, keys.distances_index(rid, ns), nearest)
        job.report.extra["exact"] = bool(r1.get("exact", True))
        return job.finish()

    async def pqc_sknn(
        self,
        model: np.ndarray,
        model_labels: np.ndarray,
        records: np.ndarray,
        *,
        model_id: str | None = None,
        records_id: str | None = None,
        layout: str = "packed",
        profile: str = "default-128",
        namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Secure 1-NN over CKKS (squared Euclidean): worker distances, owner argmin, worker labels.

        ``layout="packed"``: the model column-packed (a ciphertexts per block of model rows), each
        record replicated per attribute (a ciphertexts per record); one distance ciphertext per
        (record, block). ``"rows"``: one ciphertext per model row and record, one per pair.
        """
        if layout not in ("packed", "rows"):
            raise ValueError(f"layout must be 'packed' or 'rows', got {layout!r}")
        mdl = np.asarray(model, dtype=np.float64)
        rec = np.asarray(records, dtype=np.float64)
        lab = np.asarray(model_labels).reshape(1, -1).astype(np.int64)
        if mdl.ndim != 2 or rec.ndim != 2 or mdl.shape[1] != rec.shape[1] or lab.size != mdl.shape[0]:
            raise ValueError(f"model {mdl.shape}, labels {lab.shape} and records {rec.shape} disagree")
        ns = self._ns(namespace)
        mid, rid = self._dataset_id(model_id), self._dataset_id(records_id)
        n_model, a = mdl.shape
        job = _Job(self, Op.PQC_SKNN_PREDICT.value, rid, rec.shape[0], 2, progress)
        ctx = self.keys.ckks(profile)
        if layout == "packed":
            model_blobs, model_shape = _columns(ctx, mdl)
            size = ckks.column_block_size(n_model, ckks.slot_count(ctx))
            record_blobs = [v.serialize() for row in rec for v in ckks.encrypt_replicated(ctx, row, size)]
        else:
            model_blobs, model_shape = ckks.serialize(ckks.encrypt_rows(ctx, mdl)), [n_model, a]
            record_blobs = ckks.serialize(ckks.encrypt_rows(ctx, rec))
        await asyncio.gather(
            self._put_ciphertexts(keys.encrypted(mid), model_blobs, model_shape),
            self._put_ciphertexts(keys.encrypted(rid), record_blobs, [rec.shape[0], a]),
            self.store.put_ndarray(keys.labels(mid), lab, num_chunks=1),
        )
        del model_blobs, record_blobs

        async def nearest(r1: dict[str, Any]) -> np.ndarray:
            grid = _grid(await self._get_vectors(r1["distances_id"], profile), int(r1["distances_shape"][1]))
            if layout == "packed":
                return pqc_sknn.nearest_from_packed(ctx, grid, n_model).reshape(1, -1)
            return pqc_sknn.nearest_from_pairs(ctx, grid, a).reshape(1, -1)

        base = {
            "model_id": mid,
            "records_test_id": rid,
            "namespace": ns,
            "layout": layout,
            "model_labels_shape": list(lab.shape),
            "distance": "EUCLIDEAN",
        }
        await self._secure_1nn(job, base, keys.distances_index(rid, ns), nearest)
        job.report.extra["layout"] = layout
        return job.finish()

    async def _secure_1nn(
        self,
        job: _Job,
        base: dict[str, Any],
        index_key: str,
        nearest: Callable[[dict[str, Any]], Awaitable[np.ndarray]],
    ) -> dict[str, Any]:
        """The one round both secure 1-NN protocols share; returns step 1's result.

        Only the owner can decrypt step 1's distances, so ``nearest`` turns them into the nearest
        model rows, which step 2 maps to labels; the worker never sees a distance in the clear.
        """
        job.prepared()
        with job.round():
            job.emit("step1", 1)
            r1 = await job.call({**base, "step_index": 1})
            await self.store.put_ndarray(index_key, await nearest(r1), num_chunks=1)
            job.emit("step2", 2)
            r2 = await job.call({**base, "step_index": 2})
            job.report.predictions = await self._labels(r2)
        return r1

    # ------------------------------------------------------------------ PPLR (CKKS)
    async def pplr_train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        train_id: str | None = None,
        epochs: int = 2,
        learning_rate: float = 0.1,
        profile: str = "ml-128",
        refresh_threshold: float = 1e-5,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Privacy-preserving logistic regression, row layout: one encrypted gradient step per call.

        Between epochs the owner decrypts, cleans (|v| < ``refresh_threshold`` -> 0) and re-encrypts
        the weights (the original's refresh instead of bootstrapping). The worker needs the public
        context of ``profile`` WITH Galois keys (``export_public(..., galois=True)``); one step uses 6
        levels, so the ``ml-*`` profiles. ``report.extra`` holds the final ``weights`` and ``bias``.
        """
        features = np.asarray(x, dtype=np.float64)
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        if features.ndim != 2 or target.size != features.shape[0]:
            raise ValueError(f"X {features.shape} and y {target.shape} disagree")
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        n, d = features.shape
        tid = self._dataset_id(train_id)
        job = _Job(self, Op.PPLR_TRAIN.value, tid, n, epochs, progress)
        ctx = self.keys.ckks(profile)
        x_key, y_key = keys.encrypted(tid), keys.encrypted(f"{tid}y")
        w_key, b_key = _pplr_model_keys(tid)
        await asyncio.gather(
            self.upload_ckks_rows(x_key, features, profile),
            self._put_ciphertexts(y_key, ckks.serialize(pqc_dataowner.encrypt_labels(ctx, target)), [n]),
        )
        job.prepared()
        weights, bias = np.zeros(d), 0.0
        for epoch in range(1, epochs + 1):
            with job.round():
                await self._put_model(ctx, w_key, b_key, weights, bias)
                job.emit("train", epoch)
                await job.call(
                    {
                        "encrypted_matrix_train_id": x_key,
                        "encrypted_label_vector_train_id": y_key,
                        "encrypted_weights_id": w_key,
                        "encrypted_bias_id": b_key,
                        "learning_rate": learning_rate,
                        "n_features": d,
                        "n_samples": n,
                        "epochs": 1,
                    }
                )
                w_vec, b_vec = await asyncio.gather(
                    self._get_vectors(w_key, profile), self._get_vectors(b_key, profile)
                )
                weights, bias = pqc_dataowner.decrypt_model(
                    ctx, w_vec[0], b_vec[0], threshold=refresh_threshold
                )
        job.report.iterations = epochs
        job.report.extra.update(train_id=tid, weights=weights, bias=bias, profile=profile)
        return job.finish()

    async def _put_model(self, ctx: Any, w_key: str, b_key: str, weights: np.ndarray, bias: float) -> None:
        w_vec, b_vec = pqc_dataowner.encrypt_model(ctx, weights, bias)
        await asyncio.gather(
            self.store.put_bytes_list(w_key, [w_vec.serialize()], num_chunks=1, shape=[1]),
            self.store.put_bytes_list(b_key, [b_vec.serialize()], num_chunks=1, shape=[1]),
        )

    async def pplr_predict(
        self,
        x: np.ndarray,
        *,
        train_id: str,
        weights: np.ndarray,
        bias: float,
        test_id: str | None = None,
        profile: str = "ml-128",
        namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Encrypted predictions sigma~(x.w + b); the owner decrypts and thresholds at 0.5.

        The model is re-encrypted fresh (the trained ciphertexts have no levels left for a
        prediction). ``report.extra["probabilities"]`` holds the decrypted sigma~ values.
        """
        features = np.asarray(x, dtype=np.float64)
        ns = self._ns(namespace)
        xid = self._dataset_id(test_id)
        job = _Job(self, Op.PPLR_PREDICT.value, xid, features.shape[0], 1, progress)
        ctx = self.keys.ckks(profile)
        w_key, b_key = _pplr_model_keys(train_id)
        x_key = keys.encrypted(xid)
        await asyncio.gather(
            self.upload_ckks_rows(x_key, features, profile),
            self._put_model(ctx, w_key, b_key, np.asarray(weights, dtype=np.float64), float(bias)),
        )
        job.prepared()
        with job.round():
            result = await job.call(
                {
                    "encrypted_matrix_test_id": x_key,
                    "encrypted_weights_id": w_key,
                    "encrypted_bias_id": b_key,
                    "n_features": features.shape[1],
                    "namespace": ns,
                }
            )
            vectors = await self._get_vectors(result["encrypted_predictions_id"], profile)
            probabilities = pqc_dataowner.decrypt_predictions(ctx, vectors, features.shape[0])
        job.report.predictions = (probabilities >= 0.5).astype(np.int64)
        job.report.extra["probabilities"] = probabilities
        return job.finish()

    # ------------------------------------------------------------------ machine learning (plaintext)
    async def lr_train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        train_id: str | None = None,
        epochs: int = 10,
        learning_rate: float = 0.1,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext logistic regression on the worker; the model stays at ``<T>weights``/``<T>bias``.

        ``report.extra`` holds ``train_id``, ``weights_id``, ``bias_id`` and the downloaded
        ``weights``/``bias`` for :meth:`lr_predict`.
        """
        features = np.asarray(x, dtype=np.float64)
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        tid = self._dataset_id(train_id)
        job = _Job(self, Op.LR_TRAIN.value, tid, features.shape[0], 1, progress)
        x_key, y_key, weights_id, bias_id = _lr_keys(tid)
        await asyncio.gather(self.put_matrix(x_key, features), self.put_matrix(y_key, target))
        job.prepared()
        with job.round():
            await job.call(
                {
                    "plaintext_matrix_train_id": x_key,
                    "plaintext_label_vector_train_id": y_key,
                    "weights_id": weights_id,
                    "bias_id": bias_id,
                    "epochs": epochs,
                    "learning_rate": learning_rate,
                }
            )
            weights, bias = await asyncio.gather(
                self.store.get_ndarray(weights_id), self.store.get_ndarray(bias_id)
            )
        job.report.iterations = epochs
        job.report.extra.update(
            train_id=tid,
            weights_id=weights_id,
            bias_id=bias_id,
            weights=np.asarray(weights).reshape(-1),
            bias=float(np.asarray(bias).reshape(-1)[0]),
        )
        return job.finish()

    async def lr_predict(
        self,
        x: np.ndarray,
        *,
        train_id: str,
        test_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Predict 0/1 classes of ``x`` with the model trained under ``train_id``."""
        features = np.asarray(x, dtype=np.float64)
        xid = self._dataset_id(test_id)
        job = _Job(self, Op.LR_PREDICT.value, xid, features.shape[0], 1, progress)
        await self.put_matrix(xid, features)
        train_x, _, weights_id, bias_id = _lr_keys(train_id)
        job.prepared()
        with job.round():
            result = await job.call(
                {
                    "plaintext_matrix_test_id": xid,
                    "plaintext_matrix_train_id": train_x,
                    "weights_id": weights_id,
                    "bias_id": bias_id,
                }
            )
            predictions = await self.store.get_ndarray(result["predictions_id"])
        job.report.predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
        return job.finish()

    # ------------------------------------------------------------------ housekeeping
    async def cleanup_job(self, dataset_id: str, namespace: str | None = None) -> None:
        """Delete the per-job state a secure k-means job leaves under ``dataset_id``."""
        ns = self._ns(namespace)
        names: list[Callable[..., str]] = [
            keys.udm,
            keys.encrypted_udm,
            keys.encrypted_shift_matrix,
            keys.shift_matrix,
            keys.centroids_previous,
            keys.centroids_current,
            keys.init_shift_matrix,
            keys.label_vector,
        ]
        await self.delete(*(fn(dataset_id, ns) for fn in names))
