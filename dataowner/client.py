"""The data owner's client: encrypt and upload data, drive every protocol, decrypt results.

:class:`DataOwnerClient` is the public facade: one method per protocol, delegating to the protocol
drivers (``dataowner/drivers``), which talk to workers through a worker port
(:class:`dataowner.port.WorkerPort`): :class:`dataowner.nats_port.NatsPort` in production (commands
to ``<p>.worker.<node>.cmd.<op>`` or the pool, retried under one command id), or
:class:`dataowner.inprocess_port.InProcessPort` (the worker's handlers in this process). Commands
are the ``Params`` models of ``schemas.operations`` and replies are parsed into its ``Result``
models. Multi-round state lives where the contract says (storage, under ``schemas.keys`` names).
The client holds the secret keys (:class:`dataowner.keys.OwnerKeys`); the worker only ever sees
ciphertexts, UDMs, shifts and labels (see each algorithm module in ``core.algorithms``).

Every protocol returns a :class:`JobReport` (timings, the owner's CPU time apart from the time it
waited on workers, bytes each way, retries). Iterative protocols stop when the decrypted shift has
max |S| <= ``tolerance`` (the owner's verdict) or after ``max_iterations`` rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from core.crypto import fdhope
from dataowner.drivers.base import Driver, DriverConfig, columns
from dataowner.drivers.classification import ClassificationDriver
from dataowner.drivers.kmeans import PlainClusteringDriver
from dataowner.drivers.options import ClassificationOptions, KMeansOptions, TrainingOptions
from dataowner.drivers.pqc_kmeans import PqcKMeansDriver
from dataowner.drivers.regression import RegressionDriver
from dataowner.drivers.secure_kmeans import Scheme, SecureKMeansDriver
from dataowner.errors import BadResult, NoWorkerError, WorkerError
from dataowner.forwarding import forward
from dataowner.job import JobReport
from dataowner.keys import OwnerKeys
from dataowner.nats_port import NatsPort, Transport
from dataowner.port import RetryPolicy, WorkerPort, new_id
from dataowner.progress import ProgressCallback
from schemas import keys
from schemas.operations import PARAMS, Op, Params, Result

__all__ = [
    "BadResult",
    "DataOwnerClient",
    "JobReport",
    "NoWorkerError",
    "WorkerError",
    "new_id",
]


class DataOwnerClient:
    """Async client of the Rory worker for a data owner.

    ``nats``: a server URL, a list of URLs, or an already connected ``nats.aio.client.Client`` (not
    closed by :meth:`close`). ``store``: the :class:`worker.storage.base.ObjectStore` the worker uses
    (same bucket). ``node``: send commands to ``<prefix>.worker.<node>.cmd.<op>``; ``None`` = the pool.
    ``namespace`` isolates this client's job state (UDM, centroids, shifts...) from other jobs on
    the same datasets. ``num_chunks``: chunks for uploads and (passed on) for the worker's results.
    ``timeout``: each command's deadline (seconds).

    Retries (``retries`` more attempts after the first, waiting ``retry_backoff`` seconds doubling
    up to ``max_backoff``, with jitter, re-sending the same command id): error replies marked
    retryable (503, 504), no responders, and request timeouts where a re-send cannot apply a step
    twice (see :mod:`dataowner.nats_port`). ``transport="jobs"`` sends commands through the
    JetStream work queue (workers with ``RORY_JOBS_MODE=jetstream``): every command, secure k-means
    steps included, is then re-sent safely. ``attempt_timeout`` bounds the wait for one attempt.
    ``port``: use this worker port instead of NATS (e.g. :class:`dataowner.inprocess_port.InProcessPort`).
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
        retries: int = 5,
        retry_backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: Transport = "request",
        attempt_timeout: float | None = None,
        progress: ProgressCallback | None = None,
        connect_options: dict[str, Any] | None = None,
        port: WorkerPort | None = None,
    ) -> None:
        self.retry = RetryPolicy(retries, retry_backoff, max_backoff)
        self.port: WorkerPort = (
            port
            if port is not None
            else NatsPort(
                nats,
                prefix=prefix,
                node=node,
                timeout=timeout,
                retry=self.retry,
                transport=transport,
                attempt_timeout=attempt_timeout,
                connect_options=connect_options,
            )
        )
        self.store = store
        self.keys = keys
        self.prefix = prefix
        self.node = node
        self.namespace = namespace
        self.timeout = timeout
        self.num_chunks = num_chunks
        self.retries = retries
        self.progress = progress
        config = DriverConfig(namespace, num_chunks, node, timeout, progress)
        parts = (port if port is not None else self.port, store, keys, config)
        self._base = Driver(*parts)
        self._plain = PlainClusteringDriver(*parts)
        self._secure = SecureKMeansDriver(*parts)
        self._pqc_kmeans = PqcKMeansDriver(*parts)
        self._classification = ClassificationDriver(*parts)
        self._regression = RegressionDriver(*parts)

    # ------------------------------------------------------------------ connection
    @property
    def _nc(self) -> Any:
        """The NATS connection of a NATS port (None before :meth:`connect`, or for other ports)."""
        return getattr(self.port, "nc", None)

    async def connect(self) -> DataOwnerClient:
        if isinstance(self.port, NatsPort):
            await self.port.connect()
        return self

    async def close(self) -> None:
        await self.port.close()

    async def __aenter__(self) -> DataOwnerClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subject(self, op: str, node: str | None = None) -> str:
        if not isinstance(self.port, NatsPort):
            raise TypeError("only a NATS port has subjects")
        return self.port.subject(op, node)

    async def request(
        self,
        op: str | Op,
        params: Params | Mapping[str, Any],
        *,
        job_id: str | None = None,
        timeout: float | None = None,
        node: str | None = None,
    ) -> Result:
        """Send one Command and return its result; raise :class:`WorkerError` for an error Reply.

        A plain map is validated with the operation's params model first (a ``ValidationError``
        names a bad field before anything is sent). The client's namespace and ``num_chunks`` apply.
        """
        op_name = op.value if isinstance(op, Op) else op
        if not isinstance(params, Params):
            try:
                model = PARAMS[Op(op_name)]
            except ValueError:
                raise ValueError(f"unknown operation {op_name!r}") from None
            params = model.model_validate({**self._base.common(), **params})
        return await self.port.call(
            op_name, params, Result, node=node, deadline_s=timeout or self.timeout, job_id=job_id
        )

    # ------------------------------------------------------------------ storage helpers
    async def put_matrix(self, key: str, array: np.ndarray) -> None:
        await self._base.put_matrix(None, key, array)

    async def delete(self, *names: str) -> None:
        """Best-effort removal of objects (job state the owner no longer needs)."""
        await self._base.delete(*names)

    # Each protocol method below is the public signature (defaults, documentation); dataowner/forwarding.py
    # passes the call on to the protocol driver in dataowner/drivers that does the work, the options
    # several drivers share grouped (``lead``: dataowner/drivers/options.py) so no driver repeats them.

    # ------------------------------------------------------------------ plaintext clustering
    @forward("_plain", lead=[KMeansOptions])
    async def kmeans(
        self, data: np.ndarray, k: int, *, dataset_id: str | None = None, max_iterations: int = 300,
        tolerance: float = 1e-4, upload: bool = True, progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext k-means on the worker (Euclidean, first-k initialisation): one command."""

    @forward("_plain")
    async def nnc(
        self, data: np.ndarray, *, threshold_value: float = -1, dataset_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext NNC: the owner uploads the Manhattan distance matrix ``<P>dm``; one command."""

    @forward("_plain")
    async def dbsnnc(
        self, data: np.ndarray, *, threshold_value: float = -1, dataset_id: str | None = None,
        sensitivity: float = fdhope.DEFAULT_SENSITIVITY, progress: ProgressCallback | None = None,
    ) -> JobReport:
        """DBSNNC: FDH-OPE key from the DM, threshold on the PLAINTEXT DM, OPE(DM) and OPE(threshold)."""

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
        base = self._base
        if scheme == "plain":
            target = ds
            await base.put_matrix(None, ds, x)
        elif scheme == "liu":
            target = keys.encrypted(ds)
            await base.upload_liu(None, ds, x)
        elif scheme == "ckks-rows":
            target = keys.encrypted(ds)
            await base.upload_ckks_rows(None, target, x, profile)
        elif scheme == "ckks-columns":
            target = keys.encrypted(ds)
            await base.put_ciphertexts(None, target, *columns(self.keys.ckks(profile), x))
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
        return await self._base.upload_liu(None, dataset_id, data)

    async def upload_ckks_rows(self, key: str, data: np.ndarray, profile: str = "default-128") -> int:
        """CKKS-encrypt each row (one ciphertext per record) and store the list under ``key``."""
        return await self._base.upload_ckks_rows(None, key, data, profile)

    # ------------------------------------------------------------------ secure k-means
    @forward("_secure", "run", lead=[lambda compact_udm: Scheme(Op.SKMEANS, compact_udm), KMeansOptions])
    async def skmeans(
        self, data: np.ndarray, k: int, *, dataset_id: str | None = None, max_iterations: int = 10,
        tolerance: float = 1e-6, compact_udm: bool = True, upload: bool = True, namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Secure k-means over Liu ciphertexts with a plaintext UDM (reference 5.2 semantics).

        ``compact_udm`` uploads the n x k x a UDM (all the algorithm reads) instead of n x n x a.
        ``upload=False`` reuses ``encrypted<dataset_id>`` already in storage (the UDM is always
        rebuilt: step 2 overwrites it). The worker learns the UDM, every shift and the labels.
        """

    @forward(
        "_secure", "run",
        lead=[
            lambda compact_udm, sensitivity, refresh_udm: Scheme(
                Op.DBSKMEANS, compact_udm, sensitivity=sensitivity, refresh_udm=refresh_udm
            ),
            KMeansOptions,
        ],
    )
    async def dbskmeans(
        self, data: np.ndarray, k: int, *, dataset_id: str | None = None, max_iterations: int = 10,
        tolerance: float = 1e-6, compact_udm: bool = True, upload: bool = True, namespace: str | None = None,
        sensitivity: float = fdhope.DEFAULT_SENSITIVITY, progress: ProgressCallback | None = None,
        refresh_udm: bool = False,
    ) -> JobReport:
        """Double-blind SKMeans: the UDM and every shift travel FDH-OPE-encrypted.

        FDH-OPE is not additive, so the worker's step-2 update OPE(U) + OPE(S) drifts from OPE(U + S)
        round after round. With ``refresh_udm`` the owner, who knows the data and every centroid,
        uploads a fresh OPE(D - c) instead and skips step 2: same kind of values, no drift.
        """

    @forward("_secure", "run", lead=[lambda profile: Scheme(Op.PQC_SKMEANS, profile=profile), KMeansOptions])
    async def pqc_skmeans(
        self, data: np.ndarray, k: int, *, dataset_id: str | None = None, max_iterations: int = 10,
        tolerance: float = 1e-4, profile: str = "default-128", upload: bool = True,
        namespace: str | None = None, progress: ProgressCallback | None = None,
    ) -> JobReport:
        """SKMeans over CKKS row ciphertexts (one per record) with a plaintext UDM.

        ``tolerance`` must sit above the CKKS noise floor (~1e-6 at scale 2^40). The worker's
        ``KEYS_PATH`` must hold the public material of ``profile`` (:meth:`OwnerKeys.export_public`).
        """

    @forward(
        "_secure", "run",
        lead=[
            lambda profile, sensitivity, refresh_udm: Scheme(
                Op.PQC_DBSKMEANS, profile=profile, sensitivity=sensitivity, refresh_udm=refresh_udm
            ),
            KMeansOptions,
        ],
    )
    async def pqc_dbskmeans(
        self, data: np.ndarray, k: int, *, dataset_id: str | None = None, max_iterations: int = 10,
        tolerance: float = 1e-4, profile: str = "default-128", upload: bool = True,
        namespace: str | None = None, sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
        progress: ProgressCallback | None = None, refresh_udm: bool = False,
    ) -> JobReport:
        """DBSKMeans over CKKS rows: FDH-OPE UDM, FDH-OPE re-encrypted shift every round.

        ``refresh_udm``: as in :meth:`dbskmeans`, a fresh OPE(D - c) each round instead of step 2.
        """

    # ------------------------------------------------------------------ PQC k-means (labels only)
    @forward("_pqc_kmeans", "run", lead=[KMeansOptions])
    async def pqc_kmeans(
        self, data: np.ndarray, k: int, *, dataset_id: str | None = None, max_iterations: int = 300,
        tolerance: float = 1e-4, profile: str = "default-128", namespace: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Euclidean k-means over column-packed CKKS data where the worker learns only the labels
        (:mod:`dataowner.drivers.pqc_kmeans`)."""

    # ------------------------------------------------------------------ classification
    @forward("_classification", lead=[ClassificationOptions])
    async def knn(
        self, model: np.ndarray, model_labels: np.ndarray, records: np.ndarray, *,
        model_id: str | None = None, records_id: str | None = None, distance: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext 1-NN on the worker: model, labels (1 x n) and records uploaded in the clear."""

    async def upload_sknn_model(
        self, model: np.ndarray, model_labels: np.ndarray, model_id: str | None = None
    ) -> str:
        """SKNN "training": Liu-encrypt the model to ``encrypted<M>`` and store labels at ``<M>labels``."""
        return await self._classification.upload_sknn_model(None, model, model_labels, model_id)

    @forward("_classification", lead=[ClassificationOptions])
    async def sknn(
        self, model: np.ndarray, model_labels: np.ndarray, records: np.ndarray, *,
        model_id: str | None = None, records_id: str | None = None, distance: str = "EUCLIDEAN",
        upload_model: bool = True, namespace: str | None = None, progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Secure 1-NN (Liu): worker distances -> owner decrypts and takes argmin -> worker maps labels.

        ``distance="EUCLIDEAN"`` is exact (Liu products); ``"MANHATTAN"`` is the original's
        approximate component-wise |.|.
        """

    @forward("_classification", lead=[ClassificationOptions])
    async def pqc_sknn(
        self, model: np.ndarray, model_labels: np.ndarray, records: np.ndarray, *,
        model_id: str | None = None, records_id: str | None = None, layout: str = "packed",
        profile: str = "default-128", namespace: str | None = None, progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Secure 1-NN over CKKS (squared Euclidean): worker distances, owner argmin, worker labels.

        ``layout="packed"``: the model column-packed, each record replicated per attribute; one
        distance ciphertext per (record, block). ``"rows"``: one ciphertext per model row and record.
        """

    # ------------------------------------------------------------------ regression
    @forward("_regression", lead=[TrainingOptions])
    async def pplr_train(
        self, x: np.ndarray, y: np.ndarray, *, train_id: str | None = None, epochs: int = 2,
        learning_rate: float = 0.1, profile: str = "ml-128", refresh_threshold: float = 1e-5,
        progress: ProgressCallback | None = None, layout: Literal["rows", "packed"] = "packed",
    ) -> JobReport:
        """Privacy-preserving logistic regression: one encrypted gradient step per call.

        ``layout="packed"`` (default; rotation-free, 4 levels: any ``pplr-*`` or ``ml-*`` profile, no
        Galois keys, the fast one: see ``core/algorithms/pplr.py``) or ``"rows"`` (the worker needs the
        public context of ``profile`` WITH Galois keys, ``export_public(..., galois=True)``; 6 levels, so
        the ``ml-*`` profiles). ``report.extra`` holds the final ``weights`` and ``bias``.
        """

    @forward("_regression")
    async def pplr_predict(
        self, x: np.ndarray, *, train_id: str, weights: np.ndarray, bias: float, test_id: str | None = None,
        profile: str = "ml-128", namespace: str | None = None, progress: ProgressCallback | None = None,
        layout: Literal["rows", "packed"] = "packed",
    ) -> JobReport:
        """Encrypted predictions sigma~(x.w + b); the owner decrypts and thresholds at 0.5.

        The model is re-encrypted fresh (the trained ciphertexts have no levels left for a
        prediction). ``report.extra["probabilities"]`` holds the decrypted sigma~ values.
        """

    @forward("_regression", lead=[TrainingOptions])
    async def lr_train(
        self, x: np.ndarray, y: np.ndarray, *, train_id: str | None = None, epochs: int = 10,
        learning_rate: float = 0.1, progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Plaintext logistic regression on the worker; the model stays at ``<T>weights``/``<T>bias``.

        ``report.extra`` holds ``train_id``, ``weights_id``, ``bias_id`` and the downloaded
        ``weights``/``bias`` for :meth:`lr_predict`.
        """

    @forward("_regression")
    async def lr_predict(
        self, x: np.ndarray, *, train_id: str, test_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> JobReport:
        """Predict 0/1 classes of ``x`` with the model trained under ``train_id``."""

    # ------------------------------------------------------------------ housekeeping
    async def cleanup_job(self, dataset_id: str, namespace: str | None = None) -> None:
        """Delete the per-job state a secure k-means job leaves under ``dataset_id``."""
        ns = self._base.ns(namespace)
        names: list[Callable[..., str]] = [
            keys.udm,
            keys.encrypted_udm,
            keys.udm_shift,
            keys.encrypted_udm_shift,
            keys.encrypted_shift_matrix,
            keys.shift_matrix,
            keys.shift_matrix_ope,
            keys.centroids_previous,
            keys.centroids_current,
            keys.init_shift_matrix,
            keys.label_vector,
        ]
        await self.delete(*(fn(dataset_id, ns) for fn in names))
